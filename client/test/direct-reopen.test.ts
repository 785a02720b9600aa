import "fake-indexeddb/auto"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import type { Conversation } from "../src/index.js"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(destroyClients)

let unique = 0
/** A fresh user name per test, so that tests sharing the relay never meet. */
const name = (base: string) => `${base}reopen${++unique}`

const bodies = (chat: Conversation) => chat.messages({ last: 100 }).map((m) => m.body)

/** Alice and bob's direct conversation, with alice's `old` message, deleted by alice; both handles. */
async function deletedChat(old: string) {
  const [a, b] = [name("alice"), name("bob")]
  const alice = await connectClient(relay, a)
  const bob = await connectClient(relay, b)
  const aliceChat = await alice.directConversation(b)
  aliceChat.send(old)
  const bobChat = await bob.directConversation(a)
  await eventually(() => expect(bodies(bobChat)).toEqual([old]))
  await aliceChat.flush()
  aliceChat.delete()
  // The deletion and its purge reach bob: deleted, empty.
  await eventually(() => {
    expect(bobChat.info?.deletedAt).toBeTypeOf("number")
    expect(bodies(bobChat)).toEqual([])
  })
  return { a, b, alice, bob, aliceChat, bobChat }
}

describe("directConversation after the conversation was deleted", () => {
  it("reopens it, empty, and both users can send again", async () => {
    const { a, alice, bob, aliceChat, bobChat } = await deletedChat("Old-Reopen-Text")
    expect(() => bobChat.send("refused")).toThrow(/deleted/)
    const again = await bob.directConversation(a)
    expect(again.info?.deletedAt).toBeUndefined()
    expect(again.info?.reopenedBy).toBe(bob.user)
    const sent = again.send("New-Reopen-Text")
    await again.flush()
    await eventually(() => expect(bodies(aliceChat)).toEqual(["New-Reopen-Text"]))
    expect(aliceChat.info?.deletedAt).toBeUndefined()
    // Her inbox shows it again as a live conversation, with the new message.
    await eventually(() => {
      const item = alice.inbox.items.find((i) => i.conversationId === again.id)
      expect(item?.lastMessage?.text).toBe("New-Reopen-Text")
      expect(item?.deleted).toBeFalsy()
    })
    aliceChat.send("Alice-Reply-Text")
    await aliceChat.flush()
    await eventually(() => expect(bodies(again)).toEqual(["New-Reopen-Text", "Alice-Reply-Text"]))
    expect(["sent", "delivered", "read"]).toContain(again.status(sent.id))
  })

  it("reopens it offline, and the reopen and what was written after it go out on reconnecting", async () => {
    const { a, bob, aliceChat } = await deletedChat("Old-Offline-Text")
    bob.disconnect()
    const again = await bob.directConversation(a)
    expect(again.info?.deletedAt).toBeUndefined()
    const sent = again.send("Offline-Reopen-Text")
    expect(bodies(again)).toEqual(["Offline-Reopen-Text"])
    bob.connect()
    await again.flush()
    await eventually(() => expect(bodies(aliceChat)).toEqual(["Offline-Reopen-Text"]))
    expect(again.status(sent.id)).not.toBe("failed")
  })

  it("reopens it for a user who left it, and both are in it again", async () => {
    const { a, b, alice, bob, aliceChat, bobChat } = await deletedChat("Old-Left-Text")
    bobChat.leave()
    await bobChat.flush().catch(() => undefined)
    aliceChat.leave()
    await aliceChat.flush().catch(() => undefined)
    const again = await bob.directConversation(a)
    expect(again.info?.deletedAt).toBeUndefined()
    again.send("After-Leaving-Text")
    await again.flush()
    const aliceAgain = await alice.directConversation(b)
    await eventually(() => expect(bodies(aliceAgain)).toEqual(["After-Leaving-Text"]))
    expect(aliceAgain.participants.map((p) => p.user).sort()).toEqual([a, b].sort())
    // Leaving had taken it out of both inboxes: it is listed again, not as deleted, with the new message.
    for (const client of [alice, bob])
      await eventually(() => {
        const item = client.inbox.items.find((i) => i.conversationId === again.id)
        expect(item?.lastMessage?.text).toBe("After-Leaving-Text")
        expect(item?.deleted).toBeFalsy()
      })
  })

  it("reopens it on a device of a user who left it elsewhere, whose marker the deletion refused", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    // Bob's laptop marks messages delivered only when told to: its read marker is the only one.
    const laptop = await connectClient(relay, b, { deliveredDelay: 60_000 })
    const aliceChat = await alice.directConversation(b)
    aliceChat.send("Old-Marked-Text")
    const laptopChat = await laptop.directConversation(a)
    await eventually(() => expect(bodies(laptopChat)).toEqual(["Old-Marked-Text"]))
    await aliceChat.flush()
    // The laptop reads it before the deletion reaches it (offline here; on a loaded machine, a
    // delivered marker on its way does the same): the relay refuses the marker.
    laptop.disconnect()
    laptopChat.markRead()
    aliceChat.delete()
    await aliceChat.flush()
    // Meanwhile bob left it on his phone.
    const phone = await connectClient(relay, b)
    const phoneChat = phone.conversation(aliceChat.id)
    await eventually(() => expect(phoneChat.info?.deletedAt).toBeTypeOf("number"))
    phoneChat.leave()
    await phoneChat.flush()
    // The refusal rebuilds the laptop's replica on the relay's state, that of a user who left.
    const resynced = new Promise<void>((resolve) => laptopChat.on("resynced", () => resolve()))
    laptop.connect()
    await resynced
    // Still the deleted conversation alice created (before, the relay sent a user who left nothing, and
    // the rebuild re-created it as bob's, not deleted).
    expect(laptopChat.info?.deletedAt).toBeTypeOf("number")
    expect(laptopChat.info?.createdBy).toBe(a)
    const again = await laptop.directConversation(a)
    expect(again.info?.reopenedBy).toBe(b)
    again.send("After-Marker-Text")
    // Saved (before: the relay refused the re-created conversation three times, and the SDK then held
    // the reopen and the message until its socket was replaced).
    await again.flush()
    await eventually(() => expect(bodies(aliceChat)).toEqual(["After-Marker-Text"]))
    expect(aliceChat.info?.deletedAt).toBeUndefined()
  })

  it("reopens it from a device of a user who left it that never held it", async () => {
    const { a, b, bob, aliceChat, bobChat } = await deletedChat("Old-New-Device-Text")
    bobChat.leave()
    await bobChat.flush()
    await bob.destroy()
    // A new device of bob's: the relay's state is all it has (before, the relay sent it nothing, and
    // the device created the conversation anew, which the relay refused).
    const newDevice = await connectClient(relay, b)
    const again = await newDevice.directConversation(a)
    expect(again.info?.reopenedBy).toBe(b)
    again.send("From-New-Device-Text")
    await again.flush()
    await eventually(() => expect(bodies(aliceChat)).toEqual(["From-New-Device-Text"]))
  })

  it("keeps a deletion made offline that the same device reopened before it reached the relay", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const chat = await alice.directConversation(b)
    chat.send("Offline-Deleted-Text")
    await chat.flush()
    const errors: unknown[] = []
    alice.disconnect()
    chat.delete()
    const again = await alice.directConversation(b)
    again.on("error", ({ error }) => errors.push(error))
    const late = again.send("Written-After-Reopen")
    alice.connect()
    await eventually(() => expect(again.status(late.id)).toBe("failed"))
    expect(again.info?.deletedAt).toBeTypeOf("number")
    // The deletion went out and was purged: the old text leaves the replica too.
    await eventually(() => expect(bodies(again)).not.toContain("Offline-Deleted-Text"))
    expect(errors).toContainEqual(expect.objectContaining({ code: "FORBIDDEN" }))
    // Once the deletion is stored, the pair's conversation is theirs again.
    const reopened = await alice.directConversation(b)
    expect(reopened.info?.deletedAt).toBeUndefined()
    reopened.send("Reopened-Online")
    await reopened.flush()
  })
})
