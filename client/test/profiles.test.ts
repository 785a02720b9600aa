import "fake-indexeddb/auto"
import { ErrorCode, profileOf, typesOf, type UserId } from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { typingText } from "../src/index.js"
import { claimsOfToken } from "../src/profiles.js"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(() => destroyClients())

/** A dev token carrying profile claims, as an identity provider would issue. */
async function tokenWith(user: string, claims: { name?: string; picture?: string }): Promise<string> {
  const params = new URLSearchParams({ user, ...claims })
  const response = await fetch(`${relay.httpUrl}/dev/token?${params}`)
  if (!response.ok) throw new Error(`dev token: HTTP ${response.status}`)
  return ((await response.json()) as { token: string }).token
}

const suffix = () => Math.random().toString(36).slice(2, 8)

describe("profiles in the SDK", () => {
  it("shows each user by the name in their token's claims, in messages, the inbox and profileOf", async () => {
    const [a, b] = [`alice-${suffix()}`, `bob-${suffix()}`]
    const alice = await connectClient(relay, a, {
      token: () => tokenWith(a, { name: "Alice Liddell", picture: "https://example.com/alice.png" }),
    })
    const bob = await connectClient(relay, b, { token: () => tokenWith(b, { name: "Bob" }) })
    const chat = await alice.directConversation(b)
    chat.send("hello bob")
    await eventually(() => expect(alice.profile.name).toBe("Alice Liddell"))
    // Before bob opens it, his inbox entry already names alice.
    await eventually(() => expect(bob.profileOf(a)).toMatchObject({ name: "Alice Liddell", named: true }))
    const bobsChat = await bob.conversation(chat.id).ready()
    await eventually(() =>
      expect(bobsChat.messages({ last: 1 })[0]).toMatchObject({
        body: "hello bob",
        authorName: "Alice Liddell",
        authorPicture: "https://example.com/alice.png",
      }),
    )
    expect(bob.profileOf(a)).toMatchObject({ name: "Alice Liddell", named: true })
    // Bob's own entry reaches alice once bob opened the conversation.
    await eventually(() => expect(alice.profileOf(b).name).toBe("Bob"))
    // The relay's inbox preview carries the author's name, and follows a later rename.
    const preview = () => bob.inbox.items.find((i) => i.conversationId === chat.id)?.lastMessage
    await eventually(() => expect(preview()).toMatchObject({ author: a, authorName: "Alice Liddell" }))
    await alice.setProfile({ name: "Alice L." })
    await eventually(() => expect(preview()).toMatchObject({ author: a, authorName: "Alice L." }))
    await eventually(() => expect(bob.profileOf(a).name).toBe("Alice L."))
  }, 30_000)

  it("spreads an edit to the open conversations at once and to the others when they open", async () => {
    const [a, b, c] = [`alice-${suffix()}`, `bob-${suffix()}`, `carol-${suffix()}`]
    const alice = await connectClient(relay, a, { token: () => tokenWith(a, { name: "Alice" }) })
    const bob = await connectClient(relay, b)
    const withBob = await alice.directConversation(b)
    const group = await alice.createConversation({ participants: [b, c], title: "Team" })
    await eventually(() => expect(profileOf(group.doc, a as UserId).name).toBe("Alice"))
    // Saved by the relay (so that bob finds it) before alice closes it.
    const first = group.send("welcome")
    await eventually(() => expect(group.status(first.id)).toBe("sent"))
    await bob.conversation(group.id).ready()
    await eventually(() => expect(profileOf(bob.conversation(group.id).doc, a as UserId).name).toBe("Alice"))
    await group.close()

    const edited = await alice.setProfile({ name: "Ally", picture: "https://example.com/ally.png" })
    expect(edited).toMatchObject({ name: "Ally", picture: "https://example.com/ally.png" })
    expect(profileOf(withBob.doc, a as UserId).name).toBe("Ally")
    // The group was closed: until alice opens it again its people see her previous profile.
    const bobsDirect = await bob.conversation(withBob.id).ready()
    await eventually(() => expect(profileOf(bobsDirect.doc, a as UserId).name).toBe("Ally"))
    expect(profileOf(bob.conversation(group.id).doc, a as UserId).name).toBe("Alice")
    await alice.conversation(group.id).ready()
    await eventually(() => expect(profileOf(bob.conversation(group.id).doc, a as UserId).name).toBe("Ally"))

    // A fresh token with the old claims does not undo the edit.
    alice.disconnect()
    alice.connect()
    await eventually(() => expect(alice.status).toBe("online"))
    expect(alice.profile.name).toBe("Ally")
    expect(typesOf(withBob.doc).profiles.get(a as UserId)).toMatchObject({ name: "Ally", edited: true })
  }, 30_000)

  it("adopts an edit made on another of the user's devices", async () => {
    const [a, b] = [`alice-${suffix()}`, `bob-${suffix()}`]
    const laptop = await connectClient(relay, a, { token: () => tokenWith(a, { name: "Alice" }) })
    const phone = await connectClient(relay, a, { token: () => tokenWith(a, { name: "Alice" }) })
    const chat = await laptop.directConversation(b)
    await eventually(() => expect(profileOf(chat.doc, a as UserId).name).toBe("Alice"))
    const written = typesOf(chat.doc).profiles.get(a as UserId)
    const phones = await phone.conversation(chat.id).ready()
    await eventually(() => expect(phone.profile.name).toBe("Alice"))
    // The phone's default says the same as the entry there: it rewrites nothing.
    const hello = phones.send("from the phone")
    await eventually(() => expect(phones.status(hello.id)).toBe("sent"))
    await eventually(() => expect(chat.messages({ last: 1 })[0]?.body).toBe("from the phone"))
    expect(typesOf(chat.doc).profiles.get(a as UserId)).toEqual(written)
    await laptop.setProfile({ name: "Alice (laptop)" })
    await eventually(() => expect(phone.profile.name).toBe("Alice (laptop)"))
  }, 30_000)

  it("refuses invalid input with a typed error and writes nothing", async () => {
    const a = `alice-${suffix()}`
    const alice = await connectClient(relay, a)
    await expect(alice.setProfile({ name: "x".repeat(65) })).rejects.toMatchObject({
      code: ErrorCode.INVALID_ARGUMENT,
    })
    await expect(alice.setProfile({ name: "A", picture: "javascript:alert(1)" })).rejects.toMatchObject({
      code: ErrorCode.INVALID_ARGUMENT,
    })
    expect(alice.profile).toEqual({ user: a, name: a, named: false })
  })
})

describe("claimsOfToken and typingText", () => {
  it("reads name and https picture claims, and words typing by names", async () => {
    const token = await tokenWith("dora", { name: "Dora", picture: "https://example.com/d.png" })
    expect(claimsOfToken(token)).toEqual({ name: "Dora", picture: "https://example.com/d.png" })
    expect(claimsOfToken(await tokenWith("erin", {}))).toBeUndefined()
    expect(claimsOfToken("not a jwt")).toBeUndefined()
    expect(typingText([])).toBe("")
    expect(typingText(["Bob"])).toBe("Bob is typing")
    expect(typingText(["Bob", "Carol"])).toBe("Bob and Carol are typing")
    expect(typingText(["Bob", "Carol", "Dan", "Eve"])).toBe("Bob, Carol and 2 others are typing")
  })
})
