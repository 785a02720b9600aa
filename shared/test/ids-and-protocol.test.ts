import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import { describe, expect, it } from "vitest"
import * as authProtocol from "y-protocols/auth"
import { Awareness, applyAwarenessUpdate, encodeAwarenessUpdate } from "y-protocols/awareness"
import * as syncProtocol from "y-protocols/sync"
import * as Y from "yjs"
import {
  type ConversationId,
  decodeDirectoryPage,
  decodeSequenceRecord,
  directConversationId,
  EMPTY_STATE_VECTOR,
  EMPTY_UPDATE,
  ErrorCode,
  encodeAwareness,
  encodeAwarenessEntries,
  encodeDirectoryPage,
  encodeDirectoryPageFrame,
  encodeDirectoryRequest,
  encodeEpochRecordFrame,
  encodeEpochRequest,
  encodeError,
  encodeHistoryPage,
  encodeHistoryRequest,
  encodeKeepalive,
  encodePermissionDenied,
  encodeQueryAwareness,
  encodeSaved,
  encodeSequenceRecord,
  encodeSyncStep1,
  encodeSyncStep2,
  encodeSyncUpdate,
  encodeTokenAccepted,
  encodeTokenRefresh,
  isReactionEmoji,
  isTokenRefresh,
  MessageType,
  newConversationId,
  newMessageId,
  ParleyError,
  parseConversationId,
  parseDocumentName,
  parseMessageId,
  parseUserId,
  readAwarenessEntries,
  readFrame,
  readParleyFrame,
  toParleyError,
  type UserId,
} from "../src/index.js"

describe("ids", () => {
  it("parses valid ids and refuses others with INVALID_ARGUMENT", () => {
    expect(parseUserId("alice.b-1@x")).toBe("alice.b-1@x")
    for (const bad of ["", "a b", "x".repeat(65), 42, null, "inbox/../x", ".", "..", "..."]) {
      expect(() => parseUserId(bad)).toThrow(expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }))
    }
    // Dots alone cannot be a URL path segment: such a conversation could never be reached over HTTP.
    for (const bad of [".", ".."]) expect(() => parseConversationId(bad)).toThrow(ParleyError)
    // A key that vanishes from the JSON objects ids key (unread counts, markers, reactions).
    expect(() => parseUserId("__proto__")).toThrow(ParleyError)
    expect(() => parseConversationId("__proto__")).toThrow(ParleyError)
    expect(() => parseMessageId("__proto__")).toThrow(ParleyError)
    expect(isReactionEmoji("__proto__")).toBe(false)
    expect(parseUserId("__proto__x")).toBe("__proto__x")
    expect(parseUserId("a.")).toBe("a.")
    expect(parseConversationId(".a.")).toBe(".a.")
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

  it("shares the decoding of a long sequence record, frozen, and still refuses a malformed one", () => {
    const ids = Array.from({ length: 300 }, (_, i) => `message-${String(i).padStart(6, "0")}`) as never[]
    const text = encodeSequenceRecord({ from: 7, ids })
    const first = decodeSequenceRecord(text)
    expect(first).toEqual({ from: 7, ids })
    // An equal string made apart (as another replica's update would decode it) finds the same record.
    expect(decodeSequenceRecord(`7:${ids.join(",")}`)).toBe(first)
    expect(Object.isFrozen(first) && Object.isFrozen(first?.ids)).toBe(true)
    expect(decodeSequenceRecord(`${text},x`)).toBeUndefined()
    expect(decodeSequenceRecord(`${text},x`)).toBeUndefined()
  })

  it("accepts exactly the sequence records the record grammar does", () => {
    const grammar = /^([1-9][0-9]{0,15}):([A-Za-z0-9_-]{8,64}(?:,[A-Za-z0-9_-]{8,64})*)$/
    const pieces = [
      "0",
      "1",
      "9",
      "12",
      ":",
      ",",
      "a",
      "Z",
      "_",
      "-",
      "é",
      " ",
      "abcdefgh",
      "x".repeat(57),
      "%",
    ]
    let seed = 7
    const next = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed
    }
    const chars = "aZ09_-x:, é%"
    const id = () =>
      Array.from({ length: 6 + (next() % 61) }, () =>
        next() % 40 === 0 ? chars[next() % chars.length] : "a",
      ).join("")
    const numbers = ["0", "1", "12", "012", "1234567890123456", "12345678901234567", ""]
    for (let n = 0; n < 20_000; n++) {
      let text = ""
      if (n % 2 === 0) for (let k = next() % 12; k >= 0; k--) text += pieces[next() % pieces.length]
      else
        text = `${numbers[next() % numbers.length]}:${Array.from({ length: 1 + (next() % 4) }, id).join(",")}${next() % 10 === 0 ? "," : ""}`
      const record = decodeSequenceRecord(text)
      const match = grammar.exec(text)
      expect(record === undefined ? null : record).toEqual(
        match ? { from: Number(match[1]), ids: match[2]!.split(",") } : null,
      )
    }
    expect(decodeSequenceRecord(`1234567890123456:${"a".repeat(64)}`)).toBeDefined()
    expect(decodeSequenceRecord(`12345678901234567:${"a".repeat(8)}`)).toBeUndefined()
    expect(decodeSequenceRecord(`1:${"a".repeat(65)}`)).toBeUndefined()
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

  it("encodes a history request as [100, 4, request, segment] and its answer as [100, 5, request, segment, code, hash, bytes]", () => {
    const request = encodeHistoryRequest(7, 300)
    expect([...request]).toEqual([100, 4, 7, 0xac, 0x02])
    const page = encodeHistoryPage({ request: 7, segment: 2, hash: "ab", bytes: Uint8Array.of(1, 2, 3) })
    expect([...page]).toEqual([100, 5, 7, 2, 0, 2, 0x61, 0x62, 3, 1, 2, 3])
    const refused = encodeHistoryPage({ request: 8, segment: 2, error: ErrorCode.NOT_FOUND })
    expect([...refused]).toEqual([100, 5, 8, 2, 9, ...Buffer.from("NOT_FOUND"), 0, 0])
    for (const [bytes, frame] of [
      [request, { type: "historyRequest", request: 7, segment: 300 }],
      [page, { type: "historyPage", request: 7, segment: 2, hash: "ab", bytes: Uint8Array.of(1, 2, 3) }],
      [refused, { type: "historyPage", request: 8, segment: 2, error: "NOT_FOUND" }],
    ] as const) {
      const decoder = decoding.createDecoder(bytes)
      expect(decoding.readVarUint(decoder)).toBe(MessageType.parley)
      expect(readParleyFrame(decoder)).toEqual(frame)
    }
  })

  it("encodes a directory request as [100, 6, request, page] and its answer as a history page under subtype 7", () => {
    const request = encodeDirectoryRequest(7, 300)
    expect([...request]).toEqual([100, 6, 7, 0xac, 0x02])
    const page = encodeDirectoryPageFrame({
      request: 7,
      segment: 2,
      hash: "ab",
      bytes: Uint8Array.of(1, 2, 3),
    })
    expect([...page]).toEqual([100, 7, 7, 2, 0, 2, 0x61, 0x62, 3, 1, 2, 3])
    const refused = encodeDirectoryPageFrame({ request: 8, segment: 5, error: ErrorCode.NOT_FOUND })
    expect([...refused]).toEqual([100, 7, 8, 5, 9, ...Buffer.from("NOT_FOUND"), 0, 0])
    for (const [bytes, frame] of [
      [request, { type: "directoryRequest", request: 7, page: 300 }],
      [page, { type: "directoryPage", request: 7, segment: 2, hash: "ab", bytes: Uint8Array.of(1, 2, 3) }],
      [refused, { type: "directoryPage", request: 8, segment: 5, error: "NOT_FOUND" }],
    ] as const) {
      const decoder = decoding.createDecoder(bytes)
      expect(decoding.readVarUint(decoder)).toBe(MessageType.parley)
      expect(readParleyFrame(decoder)).toEqual(frame)
    }
  })

  it("encodes an epoch request as [100, 8, request, record] and its answer as a history page under subtype 9", () => {
    const request = encodeEpochRequest(7, 300)
    expect([...request]).toEqual([100, 8, 7, 0xac, 0x02])
    const record = encodeEpochRecordFrame({
      request: 7,
      segment: 2,
      hash: "ab",
      bytes: Uint8Array.of(1, 2, 3),
    })
    expect([...record]).toEqual([100, 9, 7, 2, 0, 2, 0x61, 0x62, 3, 1, 2, 3])
    const refused = encodeEpochRecordFrame({ request: 8, segment: 5, error: ErrorCode.NOT_FOUND })
    expect([...refused]).toEqual([100, 9, 8, 5, 9, ...Buffer.from("NOT_FOUND"), 0, 0])
    for (const [bytes, frame] of [
      [request, { type: "epochRequest", request: 7, record: 300 }],
      [record, { type: "epochRecord", request: 7, segment: 2, hash: "ab", bytes: Uint8Array.of(1, 2, 3) }],
      [refused, { type: "epochRecord", request: 8, segment: 5, error: "NOT_FOUND" }],
    ] as const) {
      const decoder = decoding.createDecoder(bytes)
      expect(decoding.readVarUint(decoder)).toBe(MessageType.parley)
      expect(readParleyFrame(decoder)).toEqual(frame)
    }
  })

  it("encodes a directory page as format, conversation, number, counts before it, previous page, summaries", () => {
    const summary = { index: 3, from: 31, to: 40, count: 10, liveBy: { ann: 10 }, hash: "cd", bytes: 9 }
    const page = {
      conversation: "g~x" as ConversationId,
      page: 1,
      before: { ann: 4 },
      previous: { hash: "ab", bytes: 5 },
      summaries: [summary],
    }
    const bytes = encodeDirectoryPage(page)
    // 01, "g~x", 01, writeAny({ ann: 4 }), "ab", 05, 01, writeAny(stored summary)
    expect([...bytes.slice(0, 6)]).toEqual([1, 3, 0x67, 0x7e, 0x78, 1])
    expect([...bytes.slice(6, 14)]).toEqual([118, 1, 3, 0x61, 0x6e, 0x6e, 125, 4])
    expect([...bytes.slice(14, 19)]).toEqual([2, 0x61, 0x62, 5, 1])
    expect(decodeDirectoryPage(bytes)).toEqual(page)
    const first = { ...page, page: 0, before: {}, summaries: [summary] }
    delete (first as { previous?: unknown }).previous
    expect(decodeDirectoryPage(encodeDirectoryPage(first))).toEqual(first)
    expect(() => decodeDirectoryPage(Uint8Array.of(9, 0))).toThrow(ParleyError)
  })

  it("ignores subtypes it does not know, so relays can add some", () => {
    expect(readParleyFrame(decoding.createDecoder(Uint8Array.from([77])))).toBeUndefined()
  })

  it("encodes sync step 1, step 2 and update as [0, subtype, len, bytes], as y-protocols writes them", () => {
    expect([...encodeSyncStep1(Uint8Array.from([1, 200, 1, 5]))]).toEqual([0, 0, 4, 1, 200, 1, 5])
    expect([...encodeSyncStep2(Uint8Array.from([0, 0]))]).toEqual([0, 1, 2, 0, 0])
    expect([...encodeSyncUpdate(Uint8Array.from([0, 0]))]).toEqual([0, 2, 2, 0, 0])
    const doc = new Y.Doc()
    doc.getArray("messages").push([{ body: "hi" }])
    const peer = Y.encodeStateVector(new Y.Doc())
    const stock = (write: (encoder: encoding.Encoder) => void) => {
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, MessageType.sync)
      write(encoder)
      return encoding.toUint8Array(encoder)
    }
    expect(encodeSyncStep1(Y.encodeStateVector(doc))).toEqual(
      stock((e) => syncProtocol.writeSyncStep1(e, doc)),
    )
    expect(encodeSyncStep2(Y.encodeStateAsUpdate(doc, peer))).toEqual(
      stock((e) => syncProtocol.writeSyncStep2(e, doc, peer)),
    )
    const update = Y.encodeStateAsUpdate(doc)
    expect(encodeSyncUpdate(update)).toEqual(stock((e) => syncProtocol.writeUpdate(e, update)))
    expect(readFrame(encodeSyncStep1(Y.encodeStateVector(doc)))).toEqual({
      type: "sync",
      message: { type: "syncStep1", stateVector: Y.encodeStateVector(doc) },
    })
    expect(readFrame(encodeSyncStep2(update))).toEqual({
      type: "sync",
      message: { type: "syncStep2", update },
    })
    expect(readFrame(encodeSyncUpdate(update))).toEqual({
      type: "sync",
      message: { type: "syncUpdate", update },
    })
    // One message per frame, as y-protocols sends: bytes after it are refused, not carried.
    const trailing = (frame: Uint8Array) => Uint8Array.from([...frame, 0, 0, 0])
    expect(() => readFrame(trailing(encodeSyncStep1(Y.encodeStateVector(doc))))).toThrow(
      expect.objectContaining({ code: ErrorCode.MALFORMED_FRAME, message: "3 bytes after the message" }),
    )
    expect(() => readFrame(trailing(encodeSyncUpdate(update)))).toThrow(/3 bytes after the message/)
    expect(() => readFrame(Uint8Array.of(MessageType.queryAwareness, 1))).toThrow(/1 byte after the message/)
    expect(() => readFrame(trailing(encodeTokenRefresh("a.b.c")))).toThrow(/3 bytes after the message/)
    expect(() => readFrame(trailing(encodeHistoryRequest(1, 0)))).toThrow(/3 bytes after the message/)
    // Lengths of one to three varUint bytes, at their edges.
    for (const size of [0, 127, 128, 300, 16_383, 16_384, 70_000]) {
      const body = Uint8Array.from({ length: size }, (_, i) => i % 251)
      expect(encodeSyncUpdate(body)).toEqual(stock((e) => syncProtocol.writeUpdate(e, body)))
    }
    doc.destroy()
  })

  it("names the empty state vector and the empty update as Yjs encodes them", () => {
    expect(EMPTY_STATE_VECTOR).toEqual(Y.encodeStateVector(new Y.Doc()))
    expect(EMPTY_UPDATE).toEqual(Y.encodeStateAsUpdate(new Y.Doc()))
  })

  it("encodes awareness as [1, len, update] and reads y-protocols awareness updates entry by entry", () => {
    const awareness = new Awareness(new Y.Doc())
    awareness.setLocalState({ user: "amy" })
    const update = encodeAwarenessUpdate(awareness, [awareness.clientID])
    const entries = readAwarenessEntries(update)
    expect(entries).toEqual([
      { clientId: awareness.clientID, clock: 1, state: new TextEncoder().encode('{"user":"amy"}') },
    ])
    expect(encodeAwarenessEntries(entries)).toEqual(update)
    expect([
      ...encodeAwarenessEntries([{ clientId: 7, clock: 2, state: new TextEncoder().encode("null") }]),
    ]).toEqual([1, 7, 2, 4, ...Buffer.from("null")])
    const removal = encodeAwarenessEntries([
      { clientId: 7, clock: 2, state: new TextEncoder().encode("null") },
    ])
    expect([...encodeAwareness(removal)]).toEqual([1, 8, 1, 7, 2, 4, ...Buffer.from("null")])
    expect([...encodeAwareness(Uint8Array.of(0))]).toEqual([1, 1, 0])
    expect(readFrame(encodeAwareness(update))).toEqual({ type: "awareness", update })
    expect(() => readFrame(Uint8Array.from([...encodeAwareness(update), 1]))).toThrow(
      /1 byte after the message/,
    )
    // A truncated update is refused whole.
    expect(() => readAwarenessEntries(update.subarray(0, update.length - 1))).toThrow()
    awareness.destroy()
  })

  it("encodes query awareness as [3] and permission denied as [2, 0, reason], as y-protocols does", () => {
    expect([...encodeQueryAwareness()]).toEqual([3])
    expect(readFrame(encodeQueryAwareness())).toEqual({ type: "queryAwareness" })
    const denied = encodePermissionDenied("no")
    expect([...denied]).toEqual([2, 0, 2, ...Buffer.from("no")])
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MessageType.auth)
    authProtocol.writePermissionDenied(encoder, "no")
    expect(denied).toEqual(encoding.toUint8Array(encoder))
    expect(readFrame(denied)).toEqual({ type: "auth", message: { type: "permissionDenied", reason: "no" } })
  })

  it("reads Parley frames through the same entry point and spots token refreshes by their first bytes", () => {
    const refresh = encodeTokenRefresh("a.b.c")
    expect(readFrame(refresh)).toEqual({ type: "parley", message: { type: "token", token: "a.b.c" } })
    expect(isTokenRefresh(refresh)).toBe(true)
    expect(isTokenRefresh(encodeTokenAccepted(0))).toBe(false)
    expect(isTokenRefresh(encodeSyncUpdate(Uint8Array.from([0, 0])))).toBe(false)
  })

  it("refuses unknown message types and sync subtypes as MALFORMED_FRAME, and truncated bodies", () => {
    expect(() => readFrame(Uint8Array.from([42, 1, 2, 3]))).toThrow(
      expect.objectContaining({ code: ErrorCode.MALFORMED_FRAME }),
    )
    expect(() => readFrame(Uint8Array.from([0, 7, 0]))).toThrow(
      expect.objectContaining({ code: ErrorCode.MALFORMED_FRAME }),
    )
    expect(() => readFrame(Uint8Array.from([0, 2, 5, 0]))).toThrow()
    expect(() => readFrame(Uint8Array.of())).toThrow()
  })
})
