import {
  createConversation,
  deleteConversation,
  deleteMessage,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import type { HookEvent } from "../src/hooks/events.js"
import { createLogger } from "../src/log.js"
import { OwedContent } from "../src/purge/owed-content.js"
import { RELAY_DOC_OPTIONS } from "../src/replica-view.js"
import type { StoredDocument } from "../src/storage/types.js"

const alice = "alice" as UserId

/** Conversation `id` as stored (a snapshot), after `change`. */
function stored(id: string, change: (doc: Y.Doc) => void): StoredDocument {
  const doc = new Y.Doc(RELAY_DOC_OPTIONS)
  createConversation(doc, alice, { kind: "group", id: id as never, title: "Plans", participants: [] })
  sendMessage(doc, alice, { id: "msg-first" as MessageId, body: "secret" })
  sendMessage(doc, alice, { id: "msg-second" as MessageId, body: "kept" })
  change(doc)
  return { snapshot: Y.encodeStateAsUpdate(doc), through: 1, updates: [], record: null }
}

/** The logged `message.sent` of message `id` of conversation `conversation`. */
const sent = (conversation: string, id: string, body: string): { id: string; event: HookEvent } => ({
  id: `${conversation}/${id}`,
  event: {
    event: {
      id: `e-${id}`,
      type: "message.sent",
      time: 1,
      conversationId: conversation,
      actor: { kind: "user", user: "alice" },
    },
    subject: { message: { id, author: "alice", body, attachments: [], metadata: {} } },
    conversation: { id: conversation, kind: "group", title: "Plans", metadata: {}, participants: [] },
  } as unknown as HookEvent,
})

const subjects = (items: readonly { event: HookEvent }[]) => items.map((item) => item.event.subject)

function owedContent(owing: () => Set<string>, documents: Record<string, StoredDocument>) {
  const loads: string[] = []
  const content = new OwedContent({
    owing: async () => owing(),
    load: async (name) => {
      loads.push(name)
      return documents[name]!
    },
    log: createLogger("silent"),
  })
  return { content, loads }
}

describe("stored events read while a purge is owed", () => {
  const log = [
    sent("g~a", "msg-first", "secret"),
    sent("g~a", "msg-second", "kept"),
    sent("g~b", "msg-first", "other"),
  ]

  it("come without a deleted message's content; the others, and other conversations', as they were", async () => {
    const { content } = owedContent(() => new Set(["g~a"]), {
      "g~a": stored("g~a", (doc) => deleteMessage(doc, alice, "msg-first" as MessageId)),
    })
    expect(subjects(await content.read(async () => log))).toEqual([
      {
        message: { id: "msg-first", author: "alice", body: "", purged: true, attachments: [], metadata: {} },
      },
      log[1]!.event.subject,
      log[2]!.event.subject,
    ])
  })

  it("come without anything a deleted conversation said", async () => {
    const { content } = owedContent(() => new Set(["g~a"]), {
      "g~a": stored("g~a", (doc) => deleteConversation(doc, alice)),
    })
    const read = await content.read(async () => log)
    expect(subjects(read)).toEqual([{ purged: true }, { purged: true }, log[2]!.event.subject])
    expect(read[0]!.event.conversation.title).toBe("")
  })

  it("are redacted when the purge owed before the read finished while it ran", async () => {
    const owing = new Set(["g~a"])
    const { content } = owedContent(() => new Set(owing), {
      "g~a": stored("g~a", (doc) => deleteMessage(doc, alice, "msg-first" as MessageId)),
    })
    // The read took the rows before the purge rewrote them; the purge is done by the time it returns.
    const read = await content.read(async () => {
      owing.clear()
      return log
    })
    expect(JSON.stringify(read)).not.toContain("secret")
  })

  it("of a damaged conversation owing a purge come without any content", async () => {
    const { content } = owedContent(() => new Set(["g~a"]), {
      "g~a": { snapshot: new Uint8Array([9, 9, 9]), through: 1, updates: [], record: null },
    })
    const read = await content.read(async () => log)
    expect(subjects(read)).toEqual([{ purged: true }, { purged: true }, log[2]!.event.subject])
  })

  it("load nothing while no purge is owed, and come back as they were", async () => {
    const { content, loads } = owedContent(() => new Set(["g~c"]), {})
    expect(await content.read(async () => log)).toEqual(log)
    expect(loads).toEqual([])
  })
})
