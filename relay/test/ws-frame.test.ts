import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { encodeChannelFrame } from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as wsModule from "ws"
import { WebSocket, WebSocketServer } from "ws"
import { allocateFramed, framedBytes, framedWithPrefix, sendFramed } from "../src/ws-frame.js"

/** `ws`'s own framing (exported, not in its type definitions). */
const { Sender } = wsModule as unknown as {
  Sender: { frame(data: Buffer, options: Record<string, unknown>): Buffer[] }
}

/** The bytes `ws` itself puts on the wire for a server's binary message. */
const wsFrame = (data: Uint8Array) =>
  Buffer.concat(Sender.frame(Buffer.from(data), { fin: true, opcode: 2, mask: false, readOnly: true }))

const filled = (length: number) => {
  const frame = allocateFramed(length)
  for (let i = 0; i < length; i++) frame[i] = (i * 7) & 0xff
  return frame
}

describe("frames written with their WebSocket header", () => {
  it("are the bytes ws writes for them, at every header size", () => {
    for (const length of [0, 1, 125, 126, 127, 300, 65_535]) {
      const frame = filled(length)
      expect(frame.length).toBe(length)
      expect(framedBytes(frame)).toEqual(wsFrame(frame))
    }
  })

  it("hold a multiplexed channel's frame as encodeChannelFrame writes it", () => {
    for (const [channel, length] of [
      [1, 0],
      [300, 122],
      [70_000, 5_000],
      [2, 70_000],
    ] as const) {
      const frame = filled(length)
      const prefix = encodeChannelFrame(channel, new Uint8Array(0))
      const framed = framedWithPrefix(prefix, frame)
      expect(new Uint8Array(framed)).toEqual(encodeChannelFrame(channel, frame))
      if (framed.length < 65_536) expect(framedBytes(framed)).toEqual(wsFrame(framed))
      else expect(framedBytes(framed)).toBeUndefined()
    }
  })

  it("leaves every other frame to ws", () => {
    // A frame starting its buffer, a large one, and views whose bytes in front are not their header.
    expect(framedBytes(new Uint8Array(300))).toBeUndefined()
    expect(framedBytes(allocateFramed(70_000))).toBeUndefined()
    expect(framedBytes(new Uint8Array(310).subarray(4))).toBeUndefined()
    expect(framedBytes(Buffer.alloc(310).subarray(4))).toBeUndefined()
    expect(framedBytes(filled(300).subarray(1))).toBeUndefined()
    expect(framedBytes(filled(300).subarray(0, 299))).toBeUndefined()
    const shorter = allocateFramed(20)
    expect(framedBytes(shorter.subarray(0, 19))).toBeUndefined()
  })

  it("arrive as the same messages as ws.send's, in order", async () => {
    const server = createServer()
    const wss = new WebSocketServer({ server, perMessageDeflate: false })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const sent = [
      filled(3),
      new Uint8Array([1, 2, 3]),
      filled(126),
      filled(40_000),
      filled(0),
      filled(70_000),
    ]
    const opened = new Promise<WebSocket>((resolve) => wss.once("connection", resolve))
    const client = new WebSocket(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`)
    const received: Uint8Array[] = []
    const all = new Promise<void>((resolve) =>
      client.on("message", (data: Buffer) => {
        received.push(new Uint8Array(data))
        if (received.length === sent.length) resolve()
      }),
    )
    const ws = await opened
    for (const frame of sent) sendFramed(ws, frame)
    await all
    expect(received).toEqual(sent.map((f) => new Uint8Array(f)))
    client.close()
    wss.close()
    server.close()
  })
})
