import "fake-indexeddb/auto"
import { type RelayExtension, type RunningRelay, startRelay } from "@parley/relay"
import {
  ErrorCode,
  encodeStoredRecord,
  newMessageId,
  type PendingChange,
  Rule,
  typesOf,
  type UserId,
} from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest"
// The relay process does not run the full per-update checker by default yet; this test plugs it in.
import { AuthorizationPolicy } from "../../relay/src/policy/authorization-policy.js"
import { MemoryClientBindingStore } from "../../relay/src/policy/client-bindings.js"
import type { Conversation } from "../src/index.js"
import { connectClient, destroyClients, eventually, type RelayProcess, SAVED } from "./support.js"

/** A word an operator's extension refuses in any update, without naming the message (so a resync re-applies it). */
const BANNED = "BANNED-WORD"
const banned = new TextEncoder().encode(BANNED)
const holdsBanned = (bytes: Uint8Array): boolean => {
  outer: for (let i = 0; i + banned.length <= bytes.length; i++) {
    for (let j = 0; j < banned.length; j++) if (bytes[i + j] !== banned[j]) continue outer
    return true
  }
  return false
}
const moderation: RelayExtension = {
  name: "moderation",
  checkUpdate: ({ update }) =>
    holdsBanned(update)
      ? { allowed: false, rule: Rule.schema, reason: "moderation: this update holds a banned word" }
      : { allowed: true },
}

let running: RunningRelay
let relay: RelayProcess
beforeAll(async () => {
  running = await startRelay({
    port: 0,
    warmUp: false,
    dev: true,
    storage: "memory",
    policy: new AuthorizationPolicy(new MemoryClientBindingStore()),
    extensions: [moderation],
    log: "warn",
  })
  relay = {
    port: running.port,
    url: running.url,
    httpUrl: running.httpUrl,
    dataDir: "",
    stop: () => running.close(),
  }
})
afterAll(async () => {
  await running?.close()
})
afterEach(destroyClients)

describe("resync after the relay refuses an update", () => {
  it("re-applies the valid pending work and fails the refused change with its rule, surviving a reload", async () => {
    const alice = await connectClient(relay, "alice")
    const chat = await alice.createConversation({ participants: ["bob"], title: "original" })
    chat.changeRole("bob", "admin")
    await eventually(() => expect(chat.connection.status).toBe("online"))
    const bob = await connectClient(relay, "bob", { storage: "indexeddb" })
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() => expect(bobChat.role).toBe("admin"))

    // Bob, offline and still an admin here, renames and writes; meanwhile Alice demotes him.
    bob.disconnect()
    bobChat.rename("bob's title")
    const valid = bobChat.send("still valid")
    chat.changeRole("bob", "member")
    await eventually(() => expect(chat.participants.find((p) => p.user === "bob")?.role).toBe("member"))
    const errors: { code: string; rule?: string; change?: PendingChange }[] = []
    bobChat.on("error", ({ error, change }) =>
      errors.push({
        code: error.code,
        ...(error.rule ? { rule: error.rule } : {}),
        ...(change ? { change } : {}),
      }),
    )
    const resynced = new Promise((resolve) => bobChat.once("resynced", resolve))
    const staleDoc = bobChat.doc
    bob.connect()

    await resynced
    expect(bobChat.doc).not.toBe(staleDoc)
    expect(bobChat.doc.clientID).not.toBe(staleDoc.clientID)
    expect(errors).toContainEqual({
      code: ErrorCode.FORBIDDEN,
      rule: Rule.adminOnly,
      change: { kind: "conversation.field", field: "title" },
    })
    expect(bobChat.info?.title).toBe("original")
    // Saved by the relay; Alice's device may already have marked it delivered.
    await eventually(() => expect(SAVED).toContain(bobChat.status(valid.id)))
    await eventually(() =>
      expect(chat.messages().map((m) => [m.id, m.body])).toEqual([[valid.id, "still valid"]]),
    )
    expect(chat.info?.title).toBe("original")

    // The replica stored on this device is the rebuilt one.
    await bob.destroy()
    const reloaded = await connectClient(relay, "bob", { storage: "indexeddb", connect: false })
    const again = await reloaded.conversation(chat.id).ready()
    expect(again.info?.title).toBe("original")
    expect(again.role).toBe("member")
    expect(again.messages().map((m) => [m.body, m.seq])).toEqual([["still valid", 1]])
  })
})

describe("a reaction to a message deleted while the device was offline", () => {
  it("is told once, with the change, not also as the relay's refusal", async () => {
    const alice = await connectClient(relay, "delalice")
    const chat = await alice.createConversation({ participants: ["delbob"], title: "deletions" })
    const doomed = chat.send("deleted soon")
    await chat.flush()
    const bob = await connectClient(relay, "delbob")
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() => expect(bobChat.message(doomed.id)?.body).toBe("deleted soon"))
    bob.disconnect()
    bobChat.react(doomed.id, "👍")
    const kept = bobChat.send("still valid")
    chat.deleteMessage(doomed.id)
    await chat.flush()
    const errors: { code: string; change?: PendingChange }[] = []
    bobChat.on("error", ({ error, change }) =>
      errors.push({ code: error.code, ...(change ? { change } : {}) }),
    )
    const resynced = new Promise((resolve) => bobChat.once("resynced", resolve))
    bob.connect()

    await resynced
    await eventually(() => expect(SAVED).toContain(bobChat.status(kept.id)))
    expect(bobChat.message(doomed.id)?.reactions).toEqual({})
    // Before: also the relay's refusal (FORBIDDEN, no change) as an event of its own, for the same reaction.
    expect(errors).toHaveLength(1)
    expect(errors[0]?.change).toEqual({ kind: "reaction.add", id: doomed.id, user: "delbob", emoji: "👍" })
  })
})

describe("work the relay refuses for good, in the first of several parts", () => {
  it("fails with one clear error and is not sent again and again", async () => {
    const alice = await connectClient(relay, "modalice")
    const chat = await alice.createConversation({ participants: ["modbob"], title: "moderated" })
    await eventually(() => expect(chat.connection.status).toBe("online"))
    alice.disconnect()
    // First in the backlog, then more than one part's worth after it: the later parts follow a refused one.
    const bad = chat.send(`a ${BANNED} here`)
    const after = Array.from({ length: 600 }, (_, i) => chat.send(`after ${i}`).id)
    const errors: string[] = []
    chat.on("error", ({ error }) => errors.push(`${error.code}/${error.rule}: ${error.message}`))
    alice.connect()

    await eventually(() => expect(errors.some((e) => e.includes("for good"))).toBe(true), 30_000)
    expect(errors.filter((e) => e.includes("for good"))).toHaveLength(1)
    expect(errors.find((e) => e.includes("for good"))).toMatch(/^FORBIDDEN\/schema: .*banned word/)
    expect(chat.status(bad.id)).toBe("failed")
    await eventually(() => expect(after.every((id) => chat.status(id) === "failed")).toBe(true))
    expect(chat.state.state).toBe("ready")
    // Not re-sent on the relay's "missing-changes" to the later parts: nothing more is refused meanwhile
    // (before, every resend a few hundred ms apart here was refused again, and told again, for good).
    const told = errors.length
    await new Promise((resolve) => setTimeout(resolve, 3_000))
    expect(errors.slice(told)).toEqual([])
    expect(chat.connection.status).toBe("online")
    // What the device writes next follows the refused work: it fails with it, rather than waiting for good.
    const later = chat.send("written later")
    await eventually(() => expect(chat.status(later.id)).toBe("failed"))
  }, 60_000)
})

const DAY = 86_400_000

/** Runs `write` with the device's clock moved by `skew` (the relay, in this process, keeps the real time after). */
function withClock<T>(skew: number, write: () => T): T {
  const real = Date.now.bind(Date)
  const spy = vi.spyOn(Date, "now").mockImplementation(() => real() + skew)
  try {
    return write()
  } finally {
    spy.mockRestore()
  }
}

describe("messages the relay refuses for their date", () => {
  it("fails a message dated by a wrong clock and saves what is sent after it, also after a reload, with retry and discard", async () => {
    const alice = await connectClient(relay, "skewalice", { storage: "indexeddb" })
    const chat = await alice.createConversation({ participants: ["skewbob"] })
    const first = chat.send("before the skew")
    await eventually(() => expect(SAVED).toContain(chat.status(first.id)))
    const errors: { message: string; rule?: string }[] = []
    chat.on("error", ({ error }) =>
      errors.push({ message: error.message, ...(error.rule ? { rule: error.rule } : {}) }),
    )

    // A clock two days ahead, then one 25 hours behind (before the conversation was created).
    const ahead = withClock(2 * DAY, () => chat.send("dated ahead"))
    const behind = withClock((-25 * DAY) / 24, () => chat.send("dated behind"))
    await eventually(() => expect(chat.status(ahead.id)).toBe("failed"))
    await eventually(() => expect(chat.status(behind.id)).toBe("failed"))
    expect(chat.message(ahead.id)?.error?.rule).toBe(Rule.schema)
    // Each refusal told once.
    expect(errors.filter((e) => e.message.includes(ahead.id))).toHaveLength(1)
    expect(errors.filter((e) => e.message.includes(behind.id))).toHaveLength(1)

    // The clock is right again: what is sent now is saved (before: FORBIDDEN naming the refused message).
    const after = chat.send("after the fix")
    await eventually(() => expect(SAVED).toContain(chat.status(after.id)))
    expect(chat.messages().map((m) => [m.body, SAVED.includes(m.status ?? "") ? "saved" : m.status])).toEqual(
      [
        ["before the skew", "saved"],
        ["after the fix", "saved"],
        ["dated behind", "failed"],
        ["dated ahead", "failed"],
      ],
    )

    // Retried, the refused message goes out dated now; discarded, it is gone.
    const again = chat.retry(ahead.id)
    expect(again?.body).toBe("dated ahead")
    await eventually(() => expect(SAVED).toContain(chat.status(again!.id)))
    expect(chat.status(ahead.id)).toBeUndefined()
    chat.discard(behind.id)
    expect(chat.status(behind.id)).toBeUndefined()
    expect(chat.message(behind.id)).toBeUndefined()
    expect(chat.messages().map((m) => m.body)).toEqual(["before the skew", "after the fix", "dated ahead"])

    // The stored replica no longer holds the refused messages: after a reload, sends are saved.
    await alice.destroy()
    const reloaded = await connectClient(relay, "skewalice", { storage: "indexeddb" })
    const chat2 = await reloaded.conversation(chat.id).ready()
    const later = chat2.send("after a reload")
    await eventually(() => expect(SAVED).toContain(chat2.status(later.id)))

    const bob = await connectClient(relay, "skewbob")
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() =>
      expect(bobChat.messages().map((m) => m.body)).toEqual([
        "before the skew",
        "after the fix",
        "dated ahead",
        "after a reload",
      ]),
    )
  })
})

describe("a message that is not plain JSON", () => {
  it("is refused alone: the SDK refuses one before writing, and one an older SDK wrote fails without the messages after it", async () => {
    const alice = await connectClient(relay, "jsonalice", { storage: "indexeddb" })
    const chat = await alice.createConversation({ participants: ["jsonbob"] })
    // Ordinary JavaScript: an optional field passed on as undefined is left out, as JSON would.
    const linked = chat.send({
      body: "see",
      attachments: [{ kind: "link", url: "https://example.com/a", title: undefined }],
      metadata: { replyTo: undefined } as never,
    })
    await eventually(() => expect(SAVED).toContain(chat.status(linked.id)))
    // What JSON cannot say is refused before anything is written.
    expect(() => chat.send("x", { metadata: { z: new Uint8Array([1]) } as never })).toThrow(
      expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }),
    )
    expect(() => chat.rename(123 as never)).toThrow(
      expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }),
    )

    // An older SDK wrote `undefined` into a message's attachment: the relay refuses it naming it, and
    // the rebuild leaves it out (before: every later message of the device failed, reloads included).
    const bad = newMessageId()
    chat.doc.transact(() =>
      typesOf(chat.doc).messages.push([
        encodeStoredRecord({
          id: bad,
          author: "jsonalice" as UserId,
          body: "written by an older SDK",
          createdAt: Date.now(),
          attachments: [{ kind: "link", url: "https://example.com/b", title: undefined as never }],
        }),
      ]),
    )
    const after = chat.send("after it")
    await eventually(() => expect(SAVED).toContain(chat.status(after.id)))
    expect(chat.status(bad)).toBe("failed")
    expect(chat.message(bad)?.error).toMatchObject({
      rule: Rule.schema,
      message: expect.stringContaining(bad),
    })

    await alice.destroy()
    const reloaded = await connectClient(relay, "jsonalice", { storage: "indexeddb" })
    const chat2 = await reloaded.conversation(chat.id).ready()
    const later = chat2.send("after a reload")
    await eventually(() => expect(SAVED).toContain(chat2.status(later.id)))
    const bob = await connectClient(relay, "jsonbob")
    const bobChat = await bob.conversation(chat.id).ready()
    await eventually(() =>
      expect(bobChat.messages().map((m) => m.body)).toEqual(["see", "after it", "after a reload"]),
    )
  })
})

describe("a direct conversation created offline days before the other user's", () => {
  it("lands the creator's messages written offline, and both users' later ones, also after a reload", async () => {
    const alice = await connectClient(relay, "flightalice", { storage: "indexeddb" })
    alice.disconnect()
    // On a flight, two days before Bob creates the same conversation online.
    const chat = await withClockAsync(-2 * DAY, () => alice.directConversation("flightbob"))
    const plane = withClock(-2 * DAY, () => [chat.send("on the plane 1"), chat.send("on the plane 2")])
    const errors: string[] = []
    chat.on("error", ({ error }) => errors.push(error.message))

    const bob = await connectClient(relay, "flightbob")
    const bobChat = await bob.directConversation("flightalice")
    const bobs = bobChat.send("two days later")
    await eventually(() => expect(SAVED).toContain(bobChat.status(bobs.id)))

    alice.connect()
    for (const m of plane) await eventually(() => expect(SAVED).toContain(chat.status(m.id)))
    const landed = chat.send("landed")
    await eventually(() => expect(SAVED).toContain(chat.status(landed.id)))
    expect(errors).toEqual([])
    await eventually(() =>
      expect(bobChat.messages().map((m) => m.body)).toEqual([
        "two days later",
        "on the plane 1",
        "on the plane 2",
        "landed",
      ]),
    )

    await alice.destroy()
    const reloaded = await connectClient(relay, "flightalice", { storage: "indexeddb" })
    const chat2 = await reloaded.conversation(chat.id).ready()
    const later = chat2.send("after a reload")
    await eventually(() => expect(SAVED).toContain(chat2.status(later.id)))
    await eventually(() => expect(bobChat.messages().map((m) => m.body)).toContain("after a reload"))
  })
})

/** {@link withClock} for a write that waits (the device is offline: nothing reaches the relay meanwhile). */
async function withClockAsync<T>(skew: number, write: () => Promise<T>): Promise<T> {
  const real = Date.now.bind(Date)
  const spy = vi.spyOn(Date, "now").mockImplementation(() => real() + skew)
  try {
    return await write()
  } finally {
    spy.mockRestore()
  }
}
describe("resync with the user's other tabs", () => {
  it("keeps a message a second, offline tab sends after the first tab's resync: the first delivers it, and a reload has it once", async () => {
    const bob = await connectClient(relay, "bob")
    const chat = await bob.createConversation({ participants: ["alice"], title: "original" })
    chat.changeRole("alice", "admin")
    // Two tabs of Alice over one IndexedDB.
    const tab1 = await connectClient(relay, "alice", { storage: "indexeddb" })
    const chat1 = await tab1.conversation(chat.id).ready()
    await eventually(() => expect(chat1.role).toBe("admin"))
    const tab2 = await connectClient(relay, "alice", { storage: "indexeddb" })
    const chat2 = await tab2.conversation(chat.id).ready()
    await eventually(() => expect(chat2.connection.status).toBe("online"))

    // Both offline: tab1 renames (refused once Bob demotes her), tab2 writes X (tab1 gets it over the tab channel).
    tab1.disconnect()
    tab2.disconnect()
    chat1.rename("alice's title")
    const x = chat2.send("X, before the resync")
    await eventually(() => expect(chat1.message(x.id)?.body).toBe("X, before the resync"))
    chat.changeRole("alice", "member")
    await eventually(() => expect(chat.participants.find((p) => p.user === "alice")?.role).toBe("member"))
    const tab2Errors: string[] = []
    chat2.on("error", ({ error }) => tab2Errors.push(error.rule ?? error.code))
    const resynced = new Promise((resolve) => chat1.once("resynced", resolve))
    tab1.connect()
    await resynced
    await eventually(() => expect(chat.message(x.id)?.body).toBe("X, before the resync"))

    // Tab2, still offline, sends Y after tab1 replaced the stored replica, and is closed.
    await new Promise((resolve) => setTimeout(resolve, 100))
    const y = chat2.send("Y, after the resync")
    expect(chat2.status(y.id)).toBe("pending")
    expect(chat2.message(x.id)?.body).toBe("X, before the resync")
    // Both tabs now hold the same stored generation: tab1, online, forwards Y, and tab2 sees it sent.
    await eventually(() => expect(chat.message(y.id)?.body).toBe("Y, after the resync"))
    await eventually(() => expect(SAVED).toContain(chat2.status(y.id)))
    expect(tab2.status).toBe("offline")
    await tab2.destroy()
    await tab1.destroy()

    // A fresh tab loads Y from the store; nobody gets anything twice.
    const tab3 = await connectClient(relay, "alice", { storage: "indexeddb" })
    const chat3 = await tab3.conversation(chat.id).ready()
    expect(chat3.message(y.id)?.body).toBe("Y, after the resync")
    await eventually(() => expect(SAVED).toContain(chat3.status(y.id)))
    await eventually(() => expect(chat.message(y.id)?.body).toBe("Y, after the resync"))
    expect(chat.messages().map((m) => m.body)).toEqual(["X, before the resync", "Y, after the resync"])
    expect(chat.info?.title).toBe("original")
    // Rebuilt on what tab1 stored, tab2 said the title it held too was refused.
    expect(tab2Errors).toContain(Rule.adminOnly)
  })
  it("keeps a refused message failed across reloads until the user retries or discards it", async () => {
    const alice = await connectClient(relay, "keptalice", { storage: "indexeddb" })
    const chat = await alice.createConversation({ participants: ["keptbob"] })
    const first = chat.send("before the skew")
    await eventually(() => expect(SAVED).toContain(chat.status(first.id)))
    const ahead = withClock(2 * DAY, () => chat.send("dated ahead"))
    const behind = withClock(3 * DAY, () => chat.send("dated further ahead"))
    await eventually(() => expect(chat.status(ahead.id)).toBe("failed"))
    await eventually(() => expect(chat.status(behind.id)).toBe("failed"))
    await alice.destroy()

    // Reloaded: what the user wrote is still there, failed, with why (before: gone without a word).
    const listed = (c: Conversation) =>
      c.messages().map((m) => [m.body, SAVED.includes(m.status ?? "") ? "saved" : m.status])
    const again = await connectClient(relay, "keptalice", { storage: "indexeddb" })
    const chat2 = await again.conversation(chat.id).ready()
    await eventually(() =>
      expect(listed(chat2)).toEqual([
        ["before the skew", "saved"],
        ["dated ahead", "failed"],
        ["dated further ahead", "failed"],
      ]),
    )
    expect(chat2.message(ahead.id)?.error?.code).toBe(ErrorCode.FORBIDDEN)
    const retried = chat2.retry(ahead.id)
    await eventually(() => expect(SAVED).toContain(chat2.status(retried!.id)))
    chat2.discard(behind.id)
    await again.destroy()

    // Retried and discarded: neither comes back after another reload.
    const third = await connectClient(relay, "keptalice", { storage: "indexeddb" })
    const chat3 = await third.conversation(chat.id).ready()
    await eventually(() =>
      expect(listed(chat3)).toEqual([
        ["before the skew", "saved"],
        ["dated ahead", "saved"],
      ]),
    )
    expect(chat3.status(ahead.id)).toBeUndefined()
    expect(chat3.status(behind.id)).toBeUndefined()
  })
})
