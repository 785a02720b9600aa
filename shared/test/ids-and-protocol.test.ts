import * as decoding from "lib0/decoding"
import { describe, expect, it } from "vitest"
import { Awareness, applyAwarenessUpdate } from "y-protocols/awareness"
import * as Y from "yjs"
import {
  decodeSequenceRecord,
  directConversationId,
  ErrorCode,
  encodeError,
  encodeKeepalive,
  encodeSaved,
  encodeSequenceRecord,
  encodeTokenAccepted,
  encodeTokenRefresh,
  MessageType,
  newConversationId,
  newMessageId,
  ParleyError,
  parseDocumentName,
  parseMessageId,
  parseUserId,
  readParleyFrame,
  toParleyError,
  type UserId,
} from "../src/index.js"

describe("ids", () => {
  it("parses valid ids and refuses others with INVALID_ARGUMENT", () => {
    expect(parseUserId("alice.b-1@x")).toBe("alice.b-1@x")
    for (const bad of ["", "a b", "x".repeat(65), 42, null, "inbox/../x"]) {
      expect(() => parseUserId(bad)).toThrow(expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }))
    }
    expect(() => parseMessageId("short")).toThrow(ParleyError)
    expect(parseMessageId(newMessageId())).toHaveLength(16)
    expect(newConversationId()).toMatch(/^g~[A-Za-z0-9_-]{16}$/)
  })

  it("names direct conversations by their sorted users", () => {
    expect(directConversationId(["zed" as UserId, "amy" as UserId])).toBe("dm~amy~zed")
    expect(() => directConversationId(["amy" as UserId, "amy" as UserId])).toThrow(ParleyError)
  })

  it("tells inboxes from conversations", () => {
    expect(parseDocumentName("inbox~bob")).toEqual({ kind: "inbox", user: "bob" })
    expect(parseDocumentName("g~abc")).toEqual({ kind: "conversation", id: "g~abc" })
    expect(() => parseDocumentName("bad name")).toThrow(ParleyError)
    expect(() => parseDocumentName("inbox~")).toThrow(ParleyError)
  })

  it("round-trips sequence records and refuses malformed ones", () => {
    const record = { from: 12, ids: ["abcdefgh12", "ijklmnop34"] as never[] }
    expect(decodeSequenceRecord(encodeSequenceRecord(record))).toEqual(record)
    for (const bad of ["0:abcdefgh", "12:", "x:abcdefgh12", "12:short", 12, "12:abcdefgh12,"]) {
      expect(decodeSequenceRecord(bad)).toBeUndefined()
    }
  })

  it("wraps any thrown value in a ParleyError", () => {
    const wrapped = toParleyError(new TypeError("boom"))
    expect(wrapped).toMatchObject({ code: "INTERNAL", message: "boom" })
    expect(toParleyError(wrapped)).toBe(wrapped)
  })
})

describe("protocol", () => {
  // Golden bytes: the wire format is a contract with other-language clients (see PROTOCOL.md).
  it("encodes a saved acknowledgement as [100, 0, len, state vector]", () => {
    expect([...encodeSaved(Uint8Array.from([1, 200, 1, 5]))]).toEqual([100, 0, 4, 1, 200, 1, 5])
  })

  it("encodes the keepalive as an awareness message of zero clients, which changes no awareness", () => {
    const bytes = encodeKeepalive()
    expect([...bytes]).toEqual([1, 1, 0])
    const decoder = decoding.createDecoder(bytes)
    expect(decoding.readVarUint(decoder)).toBe(MessageType.awareness)
    const awareness = new Awareness(new Y.Doc())
    const changes: unknown[] = []
    awareness.on("update", (change: unknown) => changes.push(change))
    applyAwarenessUpdate(awareness, decoding.readVarUint8Array(decoder), "relay")
    expect(changes).toEqual([])
    expect([...awareness.getStates().keys()]).toEqual([awareness.clientID])
    awareness.destroy()
  })

  it("encodes a typed error as [100, 1, code, message, rule] strings", () => {
    const bytes = encodeError({ code: ErrorCode.FORBIDDEN, message: "no", rule: "author-only" })
    expect([...bytes]).toEqual([
      100,
      1,
      9,
      ...Buffer.from("FORBIDDEN"),
      2,
      ...Buffer.from("no"),
      11,
      ...Buffer.from("author-only"),
    ])
    const decoder = decoding.createDecoder(bytes)
    expect(decoding.readVarUint(decoder)).toBe(MessageType.parley)
    expect(readParleyFrame(decoder)).toEqual({
      type: "error",
      error: { code: "FORBIDDEN", message: "no", rule: "author-only" },
    })
  })

  it("encodes a token refresh as [100, 2, token string] and its acceptance as [100, 3, exp]", () => {
    const refresh = encodeTokenRefresh("a.b.c")
    expect([...refresh]).toEqual([100, 2, 5, ...Buffer.from("a.b.c")])
    const accepted = encodeTokenAccepted(1_700_000_000)
    expect([...accepted]).toEqual([100, 3, 0x80, 0xe2, 0xcf, 0xaa, 0x06])
    for (const [bytes, frame] of [
      [refresh, { type: "token", token: "a.b.c" }],
      [accepted, { type: "tokenAccepted", expiresAt: 1_700_000_000 }],
    ] as const) {
      const decoder = decoding.createDecoder(bytes)
      expect(decoding.readVarUint(decoder)).toBe(MessageType.parley)
      expect(readParleyFrame(decoder)).toEqual(frame)
    }
  })

  it("ignores subtypes it does not know, so relays can add some", () => {
    expect(readParleyFrame(decoding.createDecoder(Uint8Array.from([77])))).toBeUndefined()
  })
})
