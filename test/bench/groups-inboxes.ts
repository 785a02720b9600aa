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
import { WebSocket } from "ws"

type Command = { type: "open"; urls: string[] } | { type: "arm" } | { type: "close" }

const sockets: { ws: WebSocket; frames: number; lastAt: number }[] = []
const now = () => performance.timeOrigin + performance.now()
const send = (message: unknown) => process.send?.(message)

process.on("message", async (command: Command) => {
  if (command.type === "open") {
    await Promise.all(
      command.urls.map(
        (url) =>
          new Promise<void>((resolve, reject) => {
            const ws = new WebSocket(url)
            const socket = { ws, frames: 0, lastAt: 0 }
            ws.on("message", () => {
              socket.frames++
              socket.lastAt = now()
            })
            sockets.push(socket)
            ws.once("open", () => resolve())
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
