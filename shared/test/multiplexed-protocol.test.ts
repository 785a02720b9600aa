import { describe, expect, it } from "vitest"
import {
  ErrorCode,
  encodeChannelClose,
  encodeChannelFrame,
  encodeChannelOpen,
  encodeSaved,
  encodeSyncStep1,
  MessageType,
  MuxMessage,
  readMuxFrame,
} from "../src/index.js"

describe("the multiplexed socket's frames (golden bytes, as PROTOCOL.md writes them)", () => {
  it("wraps a document frame as [101, channel, ...frame], leaving the frame's bytes as they are", () => {
    const step1 = encodeSyncStep1(Uint8Array.of(0))
    expect([...step1]).toEqual([0, 0, 1, 0])
    const wrapped = encodeChannelFrame(3, step1)
    expect([...wrapped]).toEqual([101, 3, 0, 0, 1, 0])
    // A channel number past 127 takes a second var-uint byte.
    expect([...encodeChannelFrame(300, encodeSaved(Uint8Array.of(0)))]).toEqual([101, 172, 2, 100, 0, 1, 0])
    const read = readMuxFrame(wrapped)
    expect(read).toEqual({ type: "channel", channel: 3, frame: step1 })
  })

  it("opens a channel as [102, 0, channel, name, token] and closes it as [102, 1, channel, code, reason]", () => {
    const opening = encodeChannelOpen(1, "inbox~amy", "")
    expect([...opening]).toEqual([102, 0, 1, 9, ...Buffer.from("inbox~amy"), 0])
    expect(readMuxFrame(opening)).toEqual({ type: "open", channel: 1, name: "inbox~amy", token: "" })
    expect(readMuxFrame(encodeChannelOpen(2, "c", "a.b.c"))).toEqual({
      type: "open",
      channel: 2,
      name: "c",
      token: "a.b.c",
    })
    const closing = encodeChannelClose(1, 4403, "Forbidden")
    // 4403 as a var-uint: 0xb3 0x22 (51 + 128, then 34: 51 + 34 × 128).
    expect([...closing]).toEqual([102, 1, 1, 0xb3, 0x22, 9, ...Buffer.from("Forbidden")])
    expect(readMuxFrame(closing)).toEqual({ type: "close", channel: 1, code: 4403, reason: "Forbidden" })
  })

  it("keeps its message types apart from the document protocol's", () => {
    expect(Object.values(MessageType)).not.toContain(MuxMessage.channel)
    expect(Object.values(MessageType)).not.toContain(MuxMessage.control)
  })

  it("refuses bare document frames, unknown control subtypes and truncated frames", () => {
    expect(() => readMuxFrame(encodeSyncStep1(Uint8Array.of(0)))).toThrow(
      expect.objectContaining({ code: ErrorCode.MALFORMED_FRAME }),
    )
    expect(() => readMuxFrame(Uint8Array.of(102, 9, 1))).toThrow(
      expect.objectContaining({ code: ErrorCode.MALFORMED_FRAME }),
    )
    expect(() => readMuxFrame(Uint8Array.of(102, 0, 1, 9, 65))).toThrow()
    expect(() => readMuxFrame(Uint8Array.of())).toThrow()
  })
})
