import type { UserId } from "@parley/shared"
import { describe, expect, it } from "vitest"
import { decodeClusterMessage, encodeClusterMessage } from "../../src/cluster/wire.js"

describe("cluster wire: a forwarded client update", () => {
  const request = {
    type: "request",
    id: "r1",
    replyTo: "relay-a",
    name: "g~wire",
    kind: "client",
    principal: { kind: "user", user: "alice" as UserId },
    update: new Uint8Array([1, 2, 3]),
  } as const

  it("carries what the sender's replica had seen to the relay that orders the document (the rules tell a removal from a re-sent delete set by it)", () => {
    for (const seen of [{ stateVector: new Uint8Array([1, 7, 3]) }, { stateVector: undefined }] as const) {
      const decoded = decodeClusterMessage(encodeClusterMessage({ ...request, seen }))
      expect(decoded).toMatchObject({ type: "request", kind: "client", update: request.update, seen })
    }
    expect(decodeClusterMessage(encodeClusterMessage(request))).not.toHaveProperty("seen")
  })

  it("keeps a server write's base state vector", () => {
    const base = new Uint8Array([4, 5])
    expect(decodeClusterMessage(encodeClusterMessage({ ...request, kind: "server", base }))).toMatchObject({
      kind: "server",
      base,
    })
  })
})

describe("cluster wire: a purge told to the other relays", () => {
  it("keeps each scope: a conversation (with the position it was purged through, or without), some messages, and one user's erasure", () => {
    for (const scope of [
      { kind: "conversation" },
      { kind: "conversation", through: 0 },
      { kind: "conversation", through: 123_456_789 },
      { kind: "messages", ids: new Set(["m1", "m2"]) },
      { kind: "user", user: "dan" },
    ] as const) {
      const purge = { name: "g~wire", conversationId: "g~wire", scope }
      expect(decodeClusterMessage(encodeClusterMessage({ type: "purged", from: "relay-a", purge }))).toEqual({
        type: "purged",
        from: "relay-a",
        purge,
      })
    }
  })
})
