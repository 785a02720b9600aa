import "fake-indexeddb/auto"
import { ErrorCode, type ParleyError, Rule } from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import type { ChatClient, Conversation } from "../src/index.js"
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
/** A fresh user name (and group id) per test, so that tests sharing the relay never meet. */
const name = (base: string) => `${base}taken${++unique}`

/** The bodies of conversation `id` as `user` reads them from the relay, once it holds `marker`. */
async function bodiesOnRelay(user: string, id: string, marker: string): Promise<string[]> {
  const reader = await connectClient(relay, user)
  const chat = await reader.conversation(id).ready()
  await eventually(() => expect(chat.messages().map((m) => m.body)).toContain(marker))
  return chat.messages().map((m) => m.body)
}

/** Every error a conversation reports. */
function errorsOf(chat: Conversation): ParleyError[] {
  const errors: ParleyError[] = []
  chat.on("error", ({ error }) => errors.push(error))
  return errors
}

/**
 * Alice, offline, creates group `id` with bob (an app-chosen id) and writes into it; meanwhile another user
 * creates the same id on the relay, with alice in it or not. Alice's client is still offline.
 */
async function createdOfflineWhileTaken(
  creatorIncluded: boolean,
  storage: "memory" | "indexeddb" = "memory",
) {
  const [a, b, m] = [name("alice"), name("bob"), name("mallory")]
  const id = `g~team-${name("")}`
  const alice = await connectClient(relay, a, { connect: false, storage })
  const chat = await alice.createConversation({ id, participants: [b], title: "alice and bob" })
  const errors = errorsOf(chat)
  const secret = chat.send("for bob only").id
  const mallory = await connectClient(relay, m)
  const squat = await mallory.createConversation({
    id,
    participants: creatorIncluded ? [a] : [],
    title: "mallory's",
  })
  squat.send("mallory was here")
  await squat.flush()
  return { a, m, id, alice, chat, errors, secret, squat }
}

/** Alice's group is told as not hers: unavailable CONFLICT, its message failed and kept, nothing unsaved. */
async function toldTaken(alice: ChatClient, chat: Conversation, secret: string) {
  await eventually(() =>
    expect(chat.state).toMatchObject({ state: "unavailable", reason: ErrorCode.CONFLICT }),
  )
  if (chat.state.state !== "unavailable") throw new Error("unreachable")
  expect(chat.state.error.rule).toBe(Rule.conversationIdTaken)
  await expect(chat.ready()).rejects.toMatchObject({ code: ErrorCode.CONFLICT })
  expect(chat.status(secret)).toBe("failed")
  expect(chat.message(secret)).toMatchObject({
    body: "for bob only",
    status: "failed",
    error: { code: ErrorCode.CONFLICT, rule: Rule.conversationIdTaken },
  })
  // Nothing waits to be sent: the app is not told it is pending, it is told it failed.
  await alice.flush({ timeoutMs: 5_000 })
  expect(alice.unsaved()).toEqual([])
}

describe("a group created offline under an id another user created first", () => {
  it("is unavailable with CONFLICT once online, its messages failed and never sent to the other group, which holds the creator", async () => {
    const { m, id, alice, chat, errors, secret, squat } = await createdOfflineWhileTaken(true)
    alice.connect()
    await toldTaken(alice, chat, secret)
    expect(errors.map((e) => e.rule)).toContain(Rule.conversationIdTaken)
    // Before: re-applied onto the other group, "delivered" there; the squatter read it.
    squat.send("after alice's try")
    await squat.flush()
    expect(await bodiesOnRelay(m, id, "after alice's try")).toEqual(["mallory was here", "after alice's try"])
    // Kept failed for the app to discard (or retry where it decides).
    chat.discard(secret)
    expect(chat.message(secret)).toBeUndefined()
    expect(chat.status(secret)).toBeUndefined()
  })

  it("shows nothing of the other group, and refuses a retry with CONFLICT, also after a reload", async () => {
    const { a, m, id, alice, chat, secret, squat } = await createdOfflineWhileTaken(true, "indexeddb")
    alice.connect()
    await toldTaken(alice, chat, secret)
    // Before: the other group's title, creator, participants and messages, on the handle of alice's group.
    expect(chat.info).toBeUndefined()
    expect(chat.participants).toEqual([])
    expect(chat.role).toBeUndefined()
    expect(chat.messages().map((msg) => [msg.body, msg.status])).toEqual([["for bob only", "failed"]])
    const taken = { code: ErrorCode.CONFLICT, rule: Rule.conversationIdTaken }
    expect(() => chat.retry(secret)).toThrow(expect.objectContaining(taken))
    expect(chat.message(secret)).toMatchObject({ status: "failed", error: taken })
    await alice.destroy()

    // Opened again, the id is the other group's, which holds alice: her message is still failed, not for it.
    const after = await connectClient(relay, a, { storage: "indexeddb" })
    const reloaded = after.conversation(id)
    await eventually(() => expect(reloaded.message(secret)).toMatchObject({ status: "failed", error: taken }))
    // Before: sent into the other group on the user's retry.
    expect(() => reloaded.retry(secret)).toThrow(expect.objectContaining(taken))
    reloaded.discard(secret)
    expect(reloaded.message(secret)).toBeUndefined()
    squat.send("still mallory's")
    await squat.flush()
    expect(await bodiesOnRelay(m, id, "still mallory's")).toEqual(["mallory was here", "still mallory's"])
  })

  it("is unavailable with CONFLICT once the other user adds the creator, its failed messages never sent on their own", async () => {
    const { a, m, id, alice, chat, secret, squat } = await createdOfflineWhileTaken(false)
    alice.connect()
    // Not a participant of what the relay holds: refused, as a removal is.
    await eventually(() =>
      expect(chat.state).toMatchObject({ state: "unavailable", reason: ErrorCode.FORBIDDEN }),
    )
    await eventually(() => expect(chat.status(secret)).toBe("failed"))
    squat.addParticipants([a])
    await squat.flush()
    await toldTaken(alice, chat, secret)
    // Before: the handle was readmitted and sent the failed message into the other group.
    squat.send("alice is in")
    await squat.flush()
    expect(await bodiesOnRelay(m, id, "alice is in")).toEqual(["mallory was here", "alice is in"])
  })
})

describe("work the relay refused on a removal, once the user is added back", () => {
  it("is not sent on its own: the handle is served again with it failed, until the user retries", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const group = await alice.createConversation({ participants: [b], title: "team" })
    group.send("welcome")
    await group.flush()
    const bob = await connectClient(relay, b)
    const chat = await bob.conversation(group.id).ready()
    await eventually(() => expect(chat.messages().map((m) => m.body)).toEqual(["welcome"]))
    bob.disconnect()
    const offline = chat.send("written while removed")
    group.removeParticipants([b])
    await group.flush()
    bob.connect()
    await eventually(() =>
      expect(chat.state).toMatchObject({ state: "unavailable", reason: ErrorCode.FORBIDDEN }),
    )
    await eventually(() => expect(chat.status(offline.id)).toBe("failed"))

    group.addParticipants([b])
    await group.flush()
    await eventually(() => expect(chat.state.state).toBe("ready"))
    // Caught up: what alice writes now reaches bob.
    group.send("welcome back")
    await eventually(() => expect(chat.messages().map((m) => m.body)).toContain("welcome back"))
    // Before: readmitted with its replica, which sent the message the UI showed failed.
    expect(chat.message(offline.id)).toMatchObject({ status: "failed", error: { code: ErrorCode.FORBIDDEN } })
    await bob.flush({ timeoutMs: 5_000 })
    expect(await bodiesOnRelay(a, group.id, "welcome back")).toEqual(["welcome", "welcome back"])

    // The user's retry sends it, as a new message.
    const again = chat.retry(offline.id)
    expect(again?.body).toBe("written while removed")
    await eventually(() => expect(chat.status(again!.id)).toBe("sent"))
    expect(chat.message(offline.id)).toBeUndefined()
  })
})

describe("work the relay refused on a removal, the device reloaded before the user is added back", () => {
  it("is not sent on its own after the reload either: failed at once, sent on the user's retry", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const group = await alice.createConversation({ participants: [b], title: "team" })
    group.send("welcome")
    await group.flush()
    const before = await connectClient(relay, b, { storage: "indexeddb" })
    const chat = await before.conversation(group.id).ready()
    await eventually(() => expect(chat.messages().map((m) => m.body)).toEqual(["welcome"]))
    before.disconnect()
    const offline = chat.send("written while removed").id
    group.removeParticipants([b])
    await group.flush()
    before.connect()
    await eventually(() =>
      expect(chat.state).toMatchObject({ state: "unavailable", reason: ErrorCode.FORBIDDEN }),
    )
    await eventually(() => expect(chat.status(offline)).toBe("failed"))
    await before.destroy()

    group.addParticipants([b])
    group.send("welcome back")
    await group.flush()
    const after = await connectClient(relay, b, { storage: "indexeddb", connect: false })
    const reloaded = await after.conversation(group.id).ready()
    // Failed at once, offline, as the UI showed it before the reload (before: pending, then sent).
    await eventually(() =>
      expect(reloaded.message(offline)).toMatchObject({
        status: "failed",
        error: { code: ErrorCode.FORBIDDEN },
      }),
    )
    after.connect()
    await eventually(() => expect(reloaded.messages().map((m) => m.body)).toContain("welcome back"))
    expect(reloaded.state.state).toBe("ready")
    expect(reloaded.message(offline)).toMatchObject({ status: "failed" })
    await after.flush({ timeoutMs: 5_000 })
    expect(await bodiesOnRelay(a, group.id, "welcome back")).toEqual(["welcome", "welcome back"])

    const again = reloaded.retry(offline)
    await eventually(() => expect(reloaded.status(again!.id)).toBe("sent"))
    expect(await bodiesOnRelay(a, group.id, "written while removed")).toEqual([
      "welcome",
      "welcome back",
      "written while removed",
    ])
  })
})

describe("edits and reactions the relay refused on a removal, the device reloaded before the user is added back", () => {
  it("are not sent on their own after the reload: left out when the replica is rebuilt, told once", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await connectClient(relay, a)
    const group = await alice.createConversation({ participants: [b], title: "team" })
    const welcome = group.send("welcome").id
    await group.flush()
    const before = await connectClient(relay, b, { storage: "indexeddb" })
    const chat = await before.conversation(group.id).ready()
    const mine = chat.send("hello").id
    const gone = chat.send("deleted while removed").id
    await chat.flush()
    before.disconnect()
    chat.edit(mine, "edited while removed")
    chat.react(welcome, "👍")
    chat.deleteMessage(gone)
    group.removeParticipants([b])
    await group.flush()
    before.connect()
    await eventually(() =>
      expect(chat.state).toMatchObject({ state: "unavailable", reason: ErrorCode.FORBIDDEN }),
    )
    await before.destroy()

    group.addParticipants([b])
    group.send("welcome back")
    await group.flush()
    const after = await connectClient(relay, b, { storage: "indexeddb", connect: false })
    const reloaded = await after.conversation(group.id).ready()
    const told: string[] = []
    reloaded.on("error", ({ error, change }) => told.push(`${error.code} ${change?.kind}`))
    after.connect()
    await eventually(() => expect(reloaded.messages().map((m) => m.body)).toContain("welcome back"))
    expect(reloaded.state.state).toBe("ready")
    // Rebuilt on the relay's state without them: shown as the others see them.
    await eventually(() => expect(reloaded.message(mine)?.body).toBe("hello"))
    expect(reloaded.message(welcome)?.reactions).toEqual({})
    expect(reloaded.message(gone)?.body).toBe("deleted while removed")
    // Told once more as they are dropped (the app's page before the reload was told of them).
    expect(told.sort()).toEqual([
      "FORBIDDEN message.delete",
      "FORBIDDEN message.edit",
      "FORBIDDEN reaction.add",
    ])
    await after.flush({ timeoutMs: 5_000 })

    // Before: sent once the replica connected, to the conversation the user was added back to.
    const reader = await connectClient(relay, a)
    const seen = await reader.conversation(group.id).ready()
    await eventually(() => expect(seen.messages().map((m) => m.body)).toContain("welcome back"))
    expect(seen.message(mine)?.body).toBe("hello")
    expect(seen.message(welcome)?.reactions).toEqual({})
    expect(seen.message(gone)?.body).toBe("deleted while removed")

    // The user may do them again, which sends them.
    reloaded.edit(mine, "edited again")
    await reloaded.flush()
    await eventually(() => expect(seen.message(mine)?.body).toBe("edited again"))
  })
})

describe("creations that are not taken", () => {
  it("converges when two devices of the same user create the same direct conversation offline", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const phone = await connectClient(relay, a, { connect: false })
    const laptop = await connectClient(relay, a, { connect: false })
    const onPhone = await phone.directConversation(b)
    const onLaptop = await laptop.directConversation(b)
    const errors = [...errorsOf(onPhone), ...errorsOf(onLaptop)]
    const sent = [onPhone.send("from the phone"), onLaptop.send("from the laptop")]
    phone.connect()
    laptop.connect()
    for (const chat of [onPhone, onLaptop]) {
      await eventually(() =>
        expect(
          chat
            .messages()
            .map((m) => m.body)
            .sort(),
        ).toEqual(["from the laptop", "from the phone"]),
      )
      expect(chat.state.state).toBe("ready")
    }
    await eventually(() => expect(onPhone.status(sent[0]!.id)).toBe("sent"))
    await eventually(() => expect(onLaptop.status(sent[1]!.id)).toBe("sent"))
    expect(errors).toEqual([])
  })

  it("keeps a group created offline on a device, sent after a reload", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const id = `g~mine-${name("")}`
    const before = await connectClient(relay, a, { connect: false, storage: "indexeddb" })
    const created = await before.createConversation({ id, participants: [b], title: "mine" })
    const first = created.send("first").id
    await before.destroy()
    const after = await connectClient(relay, a, { connect: false, storage: "indexeddb" })
    const chat = await after.conversation(id).ready()
    const errors = errorsOf(chat)
    after.connect()
    await eventually(() => expect(chat.status(first)).toBe("sent"))
    expect(chat.state).toMatchObject({ state: "ready", conversation: { title: "mine", createdBy: a } })
    expect(errors).toEqual([])
  })
})
