import {
  createConversation,
  InboxTopLevel,
  inboxDocumentName,
  inboxEntryFor,
  newConversationId,
  removeParticipants,
  sendMessage,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import type { RunningCore } from "../src/extension.js"
import { LiveInbox } from "../src/inbox/live-inbox.js"

const alice = "alice" as UserId
const carol = "carol" as UserId

/**
 * A relay core of one conversation and carol's inbox, whose first inbox write
 * waits until the test lets it go: the moment between a refresh reading the
 * conversation and its write being applied, where a removal can land.
 */
function heldCore() {
  const id = newConversationId()
  const conversation = new Y.Doc()
  createConversation(conversation, alice, { kind: "group", id, participants: [carol] })
  sendMessage(conversation, alice, { body: "hello" })
  const inbox = new Y.Doc()
  writeInboxEntry(inbox, id, inboxEntryFor(conversation, carol))
  let release: (() => void) | undefined
  let held: (() => void) | undefined
  const firstWrite = new Promise<void>((resolve) => {
    held = resolve
  })
  const core = {
    read: async <T>(name: string, read: (doc: Y.Doc) => T) =>
      read(name === inboxDocumentName(carol) ? inbox : conversation),
    derive: (name: string, change: (doc: Y.Doc, origin: unknown) => unknown) => {
      if (name !== inboxDocumentName(carol)) throw new Error(`unexpected write to ${name}`)
      const apply = () => {
        inbox.transact(() => change(inbox, "derived"))
        return true
      }
      if (release) return Promise.resolve(apply())
      return new Promise<boolean>((resolve) => {
        release = () => resolve(apply())
        held!()
      })
    },
    deriveDeferredEach: () => {},
  } as unknown as RunningCore
  return { id, conversation, inbox, core, firstWrite, release: () => release!() }
}

/** `user`'s first inbox connection: their whole inbox is derived. */
function openInbox(live: LiveInbox, user: UserId): void {
  live.connectionChanged({
    name: inboxDocumentName(user),
    principal: { kind: "user", user },
    open: true,
  } as Parameters<LiveInbox["connectionChanged"]>[0])
}

describe("a removal landing while a refresh of the inbox waits to write", () => {
  it("is not undone: the removed member's entry stays gone", async () => {
    const { id, conversation, inbox, core, firstWrite, release } = heldCore()
    const live = new LiveInbox()
    live.start(core)
    // Carol's first inbox connection: her whole inbox is derived, the conversation read (she is in it).
    openInbox(live, carol)
    await firstWrite
    // Meanwhile alice removes her; the change is stored, and the inbox target removes the entry.
    removeParticipants(conversation, alice, [carol])
    live.afterSaved({
      name: id,
      doc: conversation,
      actor: { kind: "user", user: alice },
      positions: [2],
      events: [{ type: "participants.removed", users: [carol] }],
    } as Parameters<LiveInbox["afterSaved"]>[0])
    writeInboxEntry(inbox, id, undefined)
    // The refresh's write, computed before the removal, is applied only now.
    release()
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(inbox.getMap(InboxTopLevel.entries).has(id)).toBe(false)
    live.stop()
  })
})

describe("the whole-inbox derivation of a user in thousands of conversations", () => {
  it("lets the event loop serve others while it runs, instead of holding it until every conversation is read", async () => {
    // Each conversation read settles at once (a load from SQLite waits for no I/O), as the relay's do.
    const conversations = Array.from({ length: 3000 }, () => {
      const id = newConversationId()
      const doc = new Y.Doc()
      createConversation(doc, alice, { kind: "group", id, participants: [carol] })
      sendMessage(doc, alice, { body: "hello" })
      return { id, doc }
    })
    const byId = new Map(conversations.map((c) => [c.id as string, c.doc]))
    const inbox = new Y.Doc()
    for (const { id, doc } of conversations) writeInboxEntry(inbox, id, inboxEntryFor(doc, carol))
    let read = 0
    const core = {
      read: async <T>(name: string, readDoc: (doc: Y.Doc) => T) => {
        if (name === inboxDocumentName(carol)) return readDoc(inbox)
        read++
        // The work of a load, without which a whole pass would fit in one slice.
        const until = performance.now() + 0.05
        while (performance.now() < until) {}
        return readDoc(byId.get(name)!)
      },
      derive: async (_name: string, change: (doc: Y.Doc, origin: unknown) => unknown) => {
        inbox.transact(() => change(inbox, "derived"))
        return true
      },
      deriveDeferredEach: () => {},
    } as unknown as RunningCore
    const live = new LiveInbox()
    live.start(core)
    openInbox(live, carol)
    // Another user's frame, arriving as the derivation starts, is served before it ends.
    const readWhenServed = await new Promise<number>((resolve) => setImmediate(() => resolve(read)))
    expect(readWhenServed).toBeLessThan(conversations.length)
    while (read < conversations.length) await new Promise((resolve) => setTimeout(resolve, 10))
    live.stop()
  })
})
