import {
  createConversation,
  ErrorCode,
  markDelivered,
  markRead,
  ParleyError,
  PRESENCE_STAMP,
  sendMessage,
  TYPING_THROTTLE_MS,
  type UserId,
  writeSequenceNumbers,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import { Awareness, applyAwarenessUpdate, encodeAwarenessUpdate } from "y-protocols/awareness"
import * as Y from "yjs"
import { MessageStatuses } from "../src/message-status.js"
import { TypingIndicator } from "../src/typing.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

function conversation() {
  const doc = new Y.Doc()
  createConversation(doc, alice, { kind: "direct", participants: [bob] })
  return doc
}

describe("MessageStatuses", () => {
  it("counts a message as sent once the relay's saved state vector covers it, before any sequence number", () => {
    const doc = conversation()
    const statuses = new MessageStatuses(doc, alice)
    const before = Y.decodeStateVector(Y.encodeStateVector(doc))
    const message = sendMessage(doc, alice, { body: "hi" })
    statuses.acknowledge(before)
    expect(statuses.status(message.id)).toBe("pending")
    statuses.acknowledge(Y.decodeStateVector(Y.encodeStateVector(doc)))
    expect(statuses.status(message.id)).toBe("sent")
  })

  it("follows other users' markers to delivered and read, and ignores the user's own markers", () => {
    const doc = conversation()
    const statuses = new MessageStatuses(doc, alice)
    const message = sendMessage(doc, alice, { body: "hi" })
    writeSequenceNumbers(doc, 1, [message.id])
    markRead(doc, alice, "latest")
    expect(statuses.status(message.id)).toBe("sent")
    markDelivered(doc, bob, 1)
    expect(statuses.status(message.id)).toBe("delivered")
    markRead(doc, bob, 1)
    expect(statuses.status(message.id)).toBe("read")
  })

  it("fails unsaved messages with the relay's reason, and has no status for others' messages", () => {
    const doc = conversation()
    const statuses = new MessageStatuses(doc, alice)
    const mine = sendMessage(doc, alice, { body: "mine" })
    const theirs = sendMessage(doc, bob, { body: "theirs" })
    const refusal = new ParleyError(ErrorCode.FORBIDDEN, "no", { rule: "admin-only" })
    expect(statuses.refuseUnsaved(refusal)).toEqual([mine.id])
    expect(statuses.status(mine.id)).toBe("failed")
    expect(statuses.failure(mine.id)).toBe(refusal)
    expect(statuses.status(theirs.id)).toBeUndefined()
    writeSequenceNumbers(doc, 1, [mine.id])
    expect(statuses.status(mine.id)).toBe("sent")
    expect(statuses.failure(mine.id)).toBeUndefined()
  })
})

describe("TypingIndicator", () => {
  it("sends at most one typing signal per throttle interval", () => {
    const doc = new Y.Doc()
    const awareness = new Awareness(doc)
    let now = 1_000_000
    const typing = new TypingIndicator(
      awareness,
      alice,
      () => {},
      () => now,
    )
    const signals: number[] = []
    awareness.on("change", () => signals.push(awareness.getLocalState()?.typing as number))
    typing.typing()
    now += TYPING_THROTTLE_MS - 1
    typing.typing()
    now += 1
    typing.typing()
    expect(signals).toEqual([1_000_000, 1_000_000 + TYPING_THROTTLE_MS])
    typing.stop()
    expect(awareness.getLocalState()).toEqual({ user: alice, typing: 0 })
    typing.destroy()
    awareness.destroy()
  })

  it("lists other users typing, not this user's other devices", () => {
    const doc = new Y.Doc()
    const awareness = new Awareness(doc)
    const changes: (readonly UserId[])[] = []
    const typing = new TypingIndicator(awareness, alice, (users) => changes.push(users))
    const remote = (clientID: number, user: UserId) => {
      const otherDoc = new Y.Doc()
      otherDoc.clientID = clientID
      const other = new Awareness(otherDoc)
      // As the relay relays it: stamped with the user of the connection that set it.
      other.setLocalState({ user, typing: Date.now(), [PRESENCE_STAMP]: user })
      applyAwarenessUpdate(awareness, encodeAwarenessUpdate(other, [clientID]), "remote")
      other.destroy()
    }
    remote(101, bob)
    remote(102, alice)
    expect(typing.typingUsers).toEqual([bob])
    expect(changes).toEqual([[bob]])
    typing.destroy()
    awareness.destroy()
  })

  it("ignores typing states without the relay's stamp, whatever user they claim", () => {
    const doc = new Y.Doc()
    const awareness = new Awareness(doc)
    const typing = new TypingIndicator(awareness, alice, () => {})
    const remote = (clientID: number, state: object) => {
      const otherDoc = new Y.Doc()
      otherDoc.clientID = clientID
      const other = new Awareness(otherDoc)
      other.setLocalState(state)
      applyAwarenessUpdate(awareness, encodeAwarenessUpdate(other, [clientID]), "remote")
      other.destroy()
    }
    remote(201, { user: bob, typing: Date.now() })
    remote(202, { user: bob, typing: Date.now(), [PRESENCE_STAMP]: "not a user id!" })
    expect(typing.typingUsers).toEqual([])
    remote(203, { user: bob, typing: Date.now(), [PRESENCE_STAMP]: "mallory" })
    expect(typing.typingUsers).toEqual(["mallory"])
    typing.destroy()
    awareness.destroy()
  })
})
