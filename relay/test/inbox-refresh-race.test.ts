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

describe("a removal landing while a refresh of the inbox waits to write", () => {
  it("is not undone: the removed member's entry stays gone", async () => {
    const { id, conversation, inbox, core, firstWrite, release } = heldCore()
    const live = new LiveInbox()
    live.start(core)
    // Carol's first inbox connection: her whole inbox is derived, the conversation read (she is in it).
    live.connectionChanged({
      name: inboxDocumentName(carol),
      principal: { kind: "user", user: carol },
      open: true,
    } as Parameters<LiveInbox["connectionChanged"]>[0])
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
