import {
  createConversation,
  deleteMessage,
  InboxTopLevel,
  inboxDocumentName,
  inboxEntryFor,
  type MessageId,
  newConversationId,
  removeParticipants,
  sendMessage,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import type { RunningCore } from "../src/extension.js"
import type { HookEvent } from "../src/hooks/events.js"
import { inboxPurgeTarget } from "../src/purge/inbox-purge-target.js"

const alice = "alice" as UserId
const carol = "carol" as UserId

/**
 * A relay core of one conversation (alice and carol, a deleted message) and
 * both inboxes, whose first write to carol's inbox waits until the test lets
 * it go: the moment between the purge deriving the entries and writing them,
 * where a removal (and the inbox target's removal of the entry) can land.
 */
function heldCore() {
  const id = newConversationId()
  const conversation = new Y.Doc()
  createConversation(conversation, alice, { kind: "group", id, participants: [carol] })
  const deleted = sendMessage(conversation, alice, { body: "a secret" }).id as MessageId
  sendMessage(conversation, alice, { body: "hello" })
  deleteMessage(conversation, alice, deleted)
  const inboxes = new Map<string, Y.Doc>()
  for (const user of [alice, carol]) {
    const inbox = new Y.Doc()
    writeInboxEntry(inbox, id, inboxEntryFor(conversation, user))
    inboxes.set(inboxDocumentName(user), inbox)
  }
  let release: (() => void) | undefined
  let held: (() => void) | undefined
  const firstWrite = new Promise<void>((resolve) => {
    held = resolve
  })
  const core = {
    read: async <T>(name: string, read: (doc: Y.Doc) => T) => read(inboxes.get(name) ?? conversation),
    write: async (name: string, _actor: unknown, change: (doc: Y.Doc) => void) => {
      const inbox = inboxes.get(name)
      if (!inbox) throw new Error(`unexpected write to ${name}`)
      if (name === inboxDocumentName(carol) && !release) {
        await new Promise<void>((resolve) => {
          release = resolve
          held!()
        })
      }
      change(inbox)
    },
    isConnected: () => true,
  } as unknown as RunningCore
  const event = {
    event: {
      id: "e1",
      type: "message.deleted",
      time: Date.now(),
      conversationId: id,
      actor: { kind: "user" },
    },
    subject: { messageId: deleted },
  } as unknown as HookEvent
  return {
    id,
    conversation,
    carolsInbox: inboxes.get(inboxDocumentName(carol))!,
    core,
    event,
    firstWrite,
    release: () => release!(),
  }
}

describe("a removal landing while the inbox purge waits to write", () => {
  it("is not undone: the removed member's entry stays gone", async () => {
    const { id, conversation, carolsInbox, core, event, firstWrite, release } = heldCore()
    const delivered = inboxPurgeTarget(core).deliver(event, {
      attempt: 1,
      signal: new AbortController().signal,
    })
    // The purge derived carol's entry (she is a member) and waits to write it.
    await firstWrite
    // Meanwhile alice removes her; the change is stored, and the inbox target removes the entry.
    removeParticipants(conversation, alice, [carol])
    writeInboxEntry(carolsInbox, id, undefined)
    // The purge's write, derived before the removal, is applied only now.
    release()
    await delivered
    expect(carolsInbox.getMap(InboxTopLevel.entries).has(id)).toBe(false)
  })
})
