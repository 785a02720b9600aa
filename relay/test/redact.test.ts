import { describe, expect, it } from "vitest"
import { namesAnyMessage, redactPayload } from "../src/purge/redact.js"

const event = (subject: unknown) =>
  JSON.stringify({
    event: {
      id: "e1",
      type: "message.sent",
      time: 1,
      conversationId: "g~c",
      actor: { kind: "user", user: "a" },
    },
    subject,
    conversation: { id: "g~c", title: "t", participants: ["a", "b"] },
  })

describe("namesAnyMessage", () => {
  const gone = new Set(["Gone-Message-1", "Gone-Message-2"])
  const payloads = [
    event({ message: { id: "Gone-Message-1", body: "secret", author: "a" } }),
    event({ messageId: "Gone-Message-2", body: "edited secret" }),
    event({
      changes: [
        { type: "message.sent", message: { id: "Kept-Message-1", body: "x" } },
        { type: "message.deleted", messageId: "Gone-Message-2" },
      ],
    }),
    event({ message: { id: "Kept-Message-1", body: 'quoting "id":"Gone-Message-1" in a body' } }),
    event({ message: { id: "Kept-Message-1", body: "Gone-Message-1 named in a body only" } }),
    event({ user: "a", upTo: 3 }),
  ]

  it("is true for every payload redaction would change, and no parse is needed for the others", () => {
    for (const payload of payloads) {
      const changes = redactPayload(payload, { kind: "messages", ids: gone }) !== undefined
      if (changes) expect(namesAnyMessage(payload, gone)).toBe(true)
    }
    expect(payloads.map((p) => namesAnyMessage(p, gone))).toEqual([true, true, true, false, false, false])
  })
})
