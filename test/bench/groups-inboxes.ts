/**
 * The connected members' inbox sockets of `groups.ts`, in a process of their
 * own so that receiving and parsing their frames is not counted as the
 * relay's CPU. Driven over IPC: `open` (relay URL and each member's inbox
 * path) opens them; `arm` remembers every socket's frame count and answers
 * `armed`; then, once every socket received a frame after that (or 2 s
 * passed), it answers `current` with each socket's time of its last frame
 * (`performance.timeOrigin + performance.now()`, comparable across processes),
 * or null for a socket that received none.
 */
import {
  encodeChannelFrame,
  encodeChannelOpen,
  encodeSyncStep1,
  MessageType,
  readMuxFrame,
} from "@parley/shared"
import { WebSocket } from "ws"

/**
 * `open`: `channels`, when given, makes each socket a multiplexed one (its URL
 * asks for it) opening those documents as channels 0, 1, ...; only frames of
 * channel 0 (the member's inbox) are counted then.
 */
type Command = { type: "open"; urls: string[]; channels?: string[][] } | { type: "arm" } | { type: "close" }

/** An empty replica's sync step 1: each channel asks for everything. */
const EMPTY_SYNC_STEP_1 = encodeSyncStep1(new Uint8Array([0]))

/** Whether a multiplexed socket's frame belongs to channel 0. */
const onFirstChannel = (data: Buffer): boolean => {
  if (data[0] === MessageType.awareness) return false
  const frame = readMuxFrame(new Uint8Array(data.buffer, data.byteOffset, data.length))
  return frame.type === "channel" && frame.channel === 0
}

const sockets: { ws: WebSocket; frames: number; lastAt: number }[] = []
const now = () => performance.timeOrigin + performance.now()
const send = (message: unknown) => process.send?.(message)

process.on("message", async (command: Command) => {
  if (command.type === "open") {
    await Promise.all(
      command.urls.map(
        (url, i) =>
          new Promise<void>((resolve, reject) => {
            const ws = new WebSocket(url)
            const socket = { ws, frames: 0, lastAt: 0 }
            const channels = command.channels?.[i]
            ws.on("message", (data: Buffer) => {
              if (channels && !onFirstChannel(data)) return
              socket.frames++
              socket.lastAt = now()
            })
            sockets.push(socket)
            ws.once("open", () => {
              for (const [channel, name] of (channels ?? []).entries()) {
                ws.send(encodeChannelOpen(channel, name, ""))
                ws.send(encodeChannelFrame(channel, EMPTY_SYNC_STEP_1))
              }
              resolve()
            })
            ws.once("error", reject)
          }),
      ),
    )
    send({ type: "opened" })
  } else if (command.type === "arm") {
    const before = sockets.map((s) => s.frames)
    send({ type: "armed" })
    const deadline = now() + 2000
    const waiting = () => sockets.some((s, i) => s.frames === before[i])
    while (waiting() && now() < deadline) await new Promise((r) => setTimeout(r, 1))
    send({ type: "current", at: sockets.map((s, i) => (s.frames === before[i] ? null : s.lastAt)) })
  } else if (command.type === "close") {
    for (const s of sockets) s.ws.close()
    process.disconnect()
  }
})
