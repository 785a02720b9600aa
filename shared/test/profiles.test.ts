import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import {
  type ChangeEvent,
  canSetProfile,
  checkProfileRecord,
  conversationHead,
  deleteConversation,
  displayNameOf,
  ErrorCode,
  eraseAuthor,
  getMessage,
  listMessages,
  listProfiles,
  observeChanges,
  type ParleyError,
  preferredProfile,
  profileOf,
  profileRecord,
  Rule,
  rebasePendingWork,
  sendMessage,
  setProfile,
  typesOf,
  type UserId,
} from "../src/index.js"
import { alice, bob, carol, dave, groupDoc, replicaOf, sync } from "./helpers.js"

const thrown = (f: () => void): ParleyError => {
  try {
    f()
  } catch (error) {
    return error as ParleyError
  }
  throw new Error("did not throw")
}

describe("profile rules", () => {
  it("lets a participant set only their own entry", () => {
    expect(canSetProfile(alice, "member", alice).allowed).toBe(true)
    expect(canSetProfile(alice, "owner", bob)).toMatchObject({ allowed: false, rule: Rule.ownProfile })
    expect(canSetProfile(dave, undefined, dave)).toMatchObject({ allowed: false, rule: Rule.participantOnly })
  })

  it("bounds names and accepts only https pictures", () => {
    const ok = { name: "Bob", picture: "https://example.com/b.png", updatedAt: 1 }
    expect(checkProfileRecord(ok)).toBeUndefined()
    expect(checkProfileRecord({ ...ok, picture: "" })).toBeUndefined()
    expect(checkProfileRecord({ ...ok, name: "x".repeat(65) })).toMatch(/64/)
    expect(checkProfileRecord({ ...ok, name: "Bob\u202eevil" })).toMatch(/control/)
    expect(checkProfileRecord({ ...ok, name: "a\nb" })).toMatch(/control/)
    expect(checkProfileRecord({ ...ok, picture: "javascript:alert(1)" })).toMatch(/https/)
    expect(checkProfileRecord({ ...ok, picture: "http://example.com/b.png" })).toMatch(/https/)
    expect(checkProfileRecord({ ...ok, picture: `https://e.com/${"x".repeat(600)}` })).toMatch(/512/)
    expect(checkProfileRecord({ ...ok, admin: true })).toMatch(/unknown field/)
    expect(checkProfileRecord({ ...ok, edited: false })).toMatch(/edited/)
  })
})

describe("setProfile and reads", () => {
  it("writes the actor's own entry, shown on their messages and in the inbox preview", () => {
    const doc = groupDoc()
    const sent = sendMessage(doc, bob, { body: "hi" })
    expect(getMessage(doc, sent.id)?.authorName).toBeUndefined()
    expect(profileOf(doc, bob)).toEqual({ user: bob, name: bob, named: false })
    setProfile(doc, bob, profileRecord({ name: "  Bob  ", picture: "https://example.com/b.png" }, { now: 5 }))
    expect(getMessage(doc, sent.id)).toMatchObject({
      authorName: "Bob",
      authorPicture: "https://example.com/b.png",
    })
    expect(profileOf(doc, bob)).toEqual({
      user: bob,
      name: "Bob",
      named: true,
      picture: "https://example.com/b.png",
    })
    expect(conversationHead(doc)?.entry.lastMessage).toMatchObject({ author: bob, authorName: "Bob" })
    expect(conversationHead(doc)?.entry.participants).toEqual({
      count: 3,
      first: [alice, bob, carol],
      names: { [bob]: "Bob" },
    })
    expect(listProfiles(doc).map((p) => p.name)).toEqual(["Bob"])
  })

  it("refuses a non-participant, bad input and a deleted conversation", () => {
    const doc = groupDoc()
    const forged = profileRecord({ name: "Alice" })
    // setProfile always writes the actor's own key: a forged entry is only possible by hand, which the relay judges.
    expect(thrown(() => setProfile(doc, dave, forged))).toMatchObject({
      code: ErrorCode.FORBIDDEN,
      rule: Rule.participantOnly,
    })
    expect(thrown(() => profileRecord({ name: "x".repeat(65) }))).toMatchObject({
      code: ErrorCode.INVALID_ARGUMENT,
    })
    expect(thrown(() => profileRecord({ name: "Eve", picture: "data:image/png;base64,AAA" }))).toMatchObject({
      code: ErrorCode.INVALID_ARGUMENT,
    })
    deleteConversation(doc, alice)
    expect(thrown(() => setProfile(doc, carol, profileRecord({ name: "Carol" })))).toMatchObject({
      rule: Rule.conversationDeleted,
    })
  })

  it("reads a malformed entry (written around the rules) as no profile", () => {
    const doc = groupDoc()
    typesOf(doc).profiles.set(bob, { name: 7, picture: "", updatedAt: 1 } as never)
    expect(displayNameOf(doc, bob)).toBeUndefined()
    expect(profileOf(doc, bob).name).toBe(bob)
  })

  it("emits profile.updated with the profile as it reads now", () => {
    const doc = groupDoc()
    const seen: ChangeEvent[] = []
    observeChanges(doc, (events) => seen.push(...events))
    setProfile(doc, carol, profileRecord({ name: "Carol" }, { now: 1 }))
    expect(seen).toEqual([
      { type: "profile.updated", user: carol, profile: { user: carol, name: "Carol", named: true } },
    ])
  })

  it("is erased with the user's messages", () => {
    const doc = groupDoc()
    sendMessage(doc, bob, { body: "hi" })
    setProfile(doc, bob, profileRecord({ name: "Bob" }))
    expect(eraseAuthor(doc, bob)).toBe(1)
    expect(typesOf(doc).profiles.has(bob)).toBe(false)
    expect(listMessages(doc, { last: 5 })[0]?.authorName).toBeUndefined()
    expect(eraseAuthor(doc, bob)).toBe(0)
  })
})

describe("preferredProfile", () => {
  const claims = (name: string, updatedAt: number) =>
    profileRecord({ name }, { now: updatedAt, edited: false })
  const edit = (name: string, updatedAt: number) => profileRecord({ name }, { now: updatedAt })

  it("prefers an edit over the token default, then the later one", () => {
    expect(preferredProfile(claims("Robert", 9), edit("Bob", 1))?.name).toBe("Bob")
    expect(preferredProfile(edit("Bob", 1), edit("Bobby", 2))?.name).toBe("Bobby")
    expect(preferredProfile(edit("Bobby", 2), edit("Bob", 1))?.name).toBe("Bobby")
    expect(preferredProfile(undefined, claims("Robert", 1))?.name).toBe("Robert")
  })

  it("converges two replicas that edited concurrently to the same entry", () => {
    const a = groupDoc()
    const b = replicaOf(a)
    setProfile(a, bob, edit("Bob A", 1))
    setProfile(b, bob, edit("Bob B", 2))
    sync(a, b)
    expect(profileOf(a, bob).name).toBe(profileOf(b, bob).name)
  })
})

describe("rebasePendingWork", () => {
  it("re-applies the user's own pending profile entry onto the relay's state", () => {
    const relay = groupDoc()
    const stale = replicaOf(relay)
    setProfile(stale, bob, profileRecord({ name: "Bob" }, { now: 3 }))
    const fresh = new Y.Doc()
    Y.applyUpdate(fresh, Y.encodeStateAsUpdate(relay))
    const result = rebasePendingWork(stale, fresh, bob as UserId)
    expect(result.failed).toEqual([])
    expect(result.reapplied).toContainEqual({ kind: "profile", user: bob })
    expect(profileOf(fresh, bob).name).toBe("Bob")
  })
})
