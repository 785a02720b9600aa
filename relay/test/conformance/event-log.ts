import {
  type ChangeEvent,
  type ConversationId,
  createConversation,
  ErrorCode,
  editMessage,
  observeChanges,
  type ParleyError,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import type { EventLog, EventLogEntry } from "../../src/hooks/event-log.js"
import { deriveHookEvents, type HookEvent, type HookEventType } from "../../src/hooks/events.js"
import type { Outbox } from "../../src/hooks/outbox.js"

/** An outbox and the event log its enqueue writes (one backend's). */
export interface EventLogParts {
  readonly outbox: Outbox
  readonly events: EventLog
}

/**
 * What a durable backend's tables hold of stored hook events (the outbox's
 * and the event log's payloads) and of the member lists they reference.
 */
export interface StoredFootprint {
  /** Rows of stored events (outbox and log). */
  readonly rows: number
  /** Their payloads' total length. */
  readonly payloadBytes: number
  /** The longest payload. */
  readonly maxPayload: number
  /** Member list rows, and their total length. */
  readonly lists: number
  readonly listBytes: number
}

/** A hook event of `type` in `conversation` whose participants (right after it) are `participants`. */
export function loggedEvent(
  id: string,
  options: {
    readonly type?: HookEventType
    readonly conversation?: string
    readonly participants?: readonly string[]
    readonly time?: number
  } = {},
): HookEvent {
  const conversation = (options.conversation ?? "c1") as ConversationId
  return {
    event: {
      id,
      type: options.type ?? "messages.read",
      time: options.time ?? 1,
      conversationId: conversation,
      actor: { kind: "user", user: "alice" as UserId },
    },
    subject: { user: "alice" as UserId, upTo: 3 },
    conversation: {
      id: conversation,
      kind: "group",
      title: "t",
      metadata: {},
      createdBy: "alice" as UserId,
      createdAt: 1,
      participants: (options.participants ?? ["alice", "bob"]).map((user) => ({
        user: user as UserId,
        role: "member" as const,
        joinedAt: 1,
      })),
    },
  } as unknown as HookEvent
}

const ids = (entries: readonly EventLogEntry[]) => entries.map((e) => e.event.event.id)
const FOREVER = { maxAgeMs: Number.MAX_SAFE_INTEGER, maxEvents: Number.MAX_SAFE_INTEGER }

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise
    return undefined
  } catch (error) {
    return (error as ParleyError).code
  }
}

/**
 * The behaviour every {@link EventLog} shares, written through its backend's
 * outbox. `setup` gives fresh, empty parts; `reopen`, when given, reopens the
 * same store (durable backends).
 */
export function runEventLogConformance(
  name: string,
  setup: () => Promise<{
    parts: EventLogParts
    reopen?: () => Promise<EventLogParts>
    cleanup?: () => Promise<void>
    /** What the backend's tables hold (durable backends). */
    footprint?: () => Promise<StoredFootprint>
  }>,
) {
  describe(`event log conformance: ${name}`, () => {
    let outbox: Outbox
    let events: EventLog
    let reopen: (() => Promise<EventLogParts>) | undefined
    let cleanup: (() => Promise<void>) | undefined
    let footprint: (() => Promise<StoredFootprint>) | undefined
    beforeEach(async () => {
      const made = await setup()
      ;({ outbox, events } = made.parts)
      reopen = made.reopen
      cleanup = made.cleanup
      footprint = made.footprint
    })
    afterEach(async () => {
      await outbox.close()
      await events.close()
      await cleanup?.()
    })

    const enqueue = (document: string, list: readonly HookEvent[], targets: readonly string[] = []) =>
      outbox.enqueue({ document, events: list.map((event) => ({ event, targets })) })

    it("records every enqueued event once, in order, with increasing ids, whether or not a target wants it", async () => {
      expect(await events.latest()).toBe("0")
      await enqueue("g~c1", [loggedEvent("e1"), loggedEvent("e2")], ["hook:a"])
      await enqueue("g~c1", [loggedEvent("e3")])
      const entries = await events.read({ limit: 100 })
      expect(ids(entries)).toEqual(["e1", "e2", "e3"])
      expect(entries[0]!.event).toEqual(loggedEvent("e1"))
      const numbers = entries.map((e) => Number(e.id))
      expect(numbers.every((n, i) => Number.isSafeInteger(n) && (i === 0 || n > numbers[i - 1]!))).toBe(true)
      expect(await events.latest()).toBe(entries[2]!.id)
      // Events without targets go to the log only, not to the deliveries.
      expect((await outbox.pending()).map((d) => d.event.event.id)).toEqual(["e1", "e2"])
    })

    it("records a frame-sized batch sharing one conversation object whole and in order, each delivery with its own event", async () => {
      // As the events of one large change are: many, one conversation object shared by all of them.
      const shared = loggedEvent("x", { participants: ["alice", "bob", "carol"] }).conversation
      const batch = Array.from(
        { length: 1_234 },
        (_, i) => ({ ...loggedEvent(`b${i}`, { time: i }), conversation: shared }) as HookEvent,
      )
      await outbox.enqueue({
        document: "g~c1",
        events: batch.map((event, i) => ({ event, targets: i % 100 === 7 ? ["hook:a", "hook:b"] : [] })),
      })
      const read: EventLogEntry[] = []
      for (let after: string | undefined; ; ) {
        const page = await events.read({ ...(after ? { after } : {}), limit: 500 })
        if (page.length === 0) break
        read.push(...page)
        after = page.at(-1)!.id
      }
      expect(read.map((e) => e.event)).toEqual(batch)
      const numbers = read.map((e) => Number(e.id))
      expect(numbers.every((n, i) => i === 0 || n > numbers[i - 1]!)).toBe(true)
      expect((await events.read({ user: "carol" as UserId, limit: 1_000 })).length).toBe(1_000)
      const pending = await outbox.pending()
      expect(pending.map((d) => `${d.event.event.id} ${d.target}`)).toEqual(
        batch.flatMap((e, i) => (i % 100 === 7 ? [`${e.event.id} hook:a`, `${e.event.id} hook:b`] : [])),
      )
      expect(new Set(pending.map((d) => d.seq)).size).toBe(pending.length / 2)
    })

    it("reads a large change's events from any id inside it, by type and by user, and prunes them to a newest suffix", async () => {
      // One change: 600 events of two types sharing one conversation object; then bob is removed (10 events).
      const both = loggedEvent("x", { participants: ["alice", "bob"] }).conversation
      const first = Array.from({ length: 600 }, (_, i) =>
        Object.assign(loggedEvent(`f${i}`, { type: i % 3 === 0 ? "messages.read" : "message.sent" }), {
          conversation: both,
        }),
      )
      const alone = loggedEvent("y", { participants: ["alice"] }).conversation
      const second = Array.from({ length: 10 }, (_, i) =>
        Object.assign(loggedEvent(`s${i}`), { conversation: alone }),
      )
      await enqueue("g~c1", first)
      await enqueue("g~c1", second)
      const all = await events.read({ limit: 1000 })
      expect(ids(all)).toEqual([...first, ...second].map((e) => e.event.id))
      for (const at of [0, 1, 62, 63, 64, 65, 248, 249, 250, 251, 500, 598, 599, 605]) {
        const page = await events.read({ after: all[at]!.id, limit: 3 })
        expect(page).toEqual(all.slice(at + 1, at + 4))
      }
      const reads = all.filter((e) => e.event.event.type === "messages.read")
      const paged: EventLogEntry[] = []
      for (let after: string | undefined; ; ) {
        const page = await events.read({ ...(after ? { after } : {}), types: ["messages.read"], limit: 7 })
        if (page.length === 0) break
        paged.push(...page)
        after = page.at(-1)!.id
      }
      expect(paged).toEqual(reads)
      expect(await events.read({ types: ["message.sent"], after: all[599]!.id, limit: 10 })).toEqual([])
      expect(ids(await events.read({ user: "bob" as UserId, limit: 1000 }))).toEqual(
        first.map((e) => e.event.id),
      )
      expect(ids(await events.read({ user: "bob" as UserId, after: all[400]!.id, limit: 1000 }))).toEqual(
        first.slice(401).map((e) => e.event.id),
      )
      expect((await events.read({ user: "alice" as UserId, limit: 1000 })).length).toBe(610)
      await events.prune({ maxAgeMs: Number.MAX_SAFE_INTEGER, maxEvents: 5 })
      // At most the newest 5 stay (a backend storing a change's events together may drop them together).
      const kept = await events.read({ limit: 1000 })
      expect(kept.length).toBeLessThanOrEqual(5)
      expect(kept).toEqual(all.slice(all.length - kept.length))
      expect(await codeOf(events.read({ after: all[300]!.id, limit: 1 }))).toBe("EVENTS_EXPIRED")
      expect(await events.latest()).toBe(all.at(-1)!.id)
    })

    it("reads strictly after an id, in pages of at most `limit`", async () => {
      await enqueue(
        "g~c1",
        ["e1", "e2", "e3", "e4", "e5"].map((id) => loggedEvent(id)),
      )
      const first = await events.read({ limit: 2 })
      expect(ids(first)).toEqual(["e1", "e2"])
      const second = await events.read({ after: first[1]!.id, limit: 2 })
      expect(ids(second)).toEqual(["e3", "e4"])
      const third = await events.read({ after: second[1]!.id, limit: 2 })
      expect(ids(third)).toEqual(["e5"])
      expect(await events.read({ after: third[0]!.id, limit: 2 })).toEqual([])
    })

    it("filters by conversation and by type", async () => {
      await enqueue("g~c1", [loggedEvent("a1", { conversation: "c1", type: "message.sent" })])
      await enqueue("g~c2", [loggedEvent("b1", { conversation: "c2", type: "message.sent" })])
      await enqueue("g~c1", [loggedEvent("a2", { conversation: "c1", type: "messages.read" })])
      await enqueue("g~c1", [loggedEvent("a3", { conversation: "c1", type: "document.updated" })])
      expect(ids(await events.read({ conversation: "c1" as ConversationId, limit: 10 }))).toEqual([
        "a1",
        "a2",
        "a3",
      ])
      expect(ids(await events.read({ types: ["message.sent"], limit: 10 }))).toEqual(["a1", "b1"])
      expect(
        ids(
          await events.read({
            conversation: "c1" as ConversationId,
            types: ["messages.read", "document.updated"],
            limit: 10,
          }),
        ),
      ).toEqual(["a2", "a3"])
    })

    it("gives a user only the events of conversations they took part in when the event happened", async () => {
      await enqueue("g~c1", [
        loggedEvent("with-carol", { conversation: "c1", participants: ["alice", "carol"] }),
      ])
      await enqueue("g~c2", [
        loggedEvent("without-carol", { conversation: "c2", participants: ["alice", "bob"] }),
      ])
      // Carol was removed from c1: what happens there afterwards is not hers to see.
      await enqueue("g~c1", [loggedEvent("after-removal", { conversation: "c1", participants: ["alice"] })])
      const user = (u: string) => events.read({ user: u as UserId, limit: 10 }).then(ids)
      expect(await user("carol")).toEqual(["with-carol"])
      expect(await user("alice")).toEqual(["with-carol", "without-carol", "after-removal"])
      expect(await user("bob")).toEqual(["without-carol"])
      expect(await user("mallory")).toEqual([])
      // Filters combine, and paging by id works for a user too.
      const page = await events.read({ user: "alice" as UserId, limit: 1 })
      expect(ids(await events.read({ user: "alice" as UserId, after: page[0]!.id, limit: 10 }))).toEqual([
        "without-carol",
        "after-removal",
      ])
      expect(
        ids(await events.read({ user: "alice" as UserId, conversation: "c2" as ConversationId, limit: 10 })),
      ).toEqual(["without-carol"])
    })

    it("follows a user's membership through removal and return, across conversations and batches", async () => {
      const at = (id: string, conversation: string, participants: string[]) =>
        loggedEvent(id, { conversation, participants })
      await enqueue("g~c1", [at("in-1", "c1", ["alice", "carol"]), at("in-2", "c1", ["alice", "carol"])])
      await enqueue("g~c2", [at("other-1", "c2", ["carol"])])
      await enqueue("g~c1", [at("out-1", "c1", ["alice"]), at("out-2", "c1", ["alice"])])
      await enqueue("g~c2", [at("other-2", "c2", ["carol", "bob"])])
      await enqueue("g~c1", [at("out-3", "c1", ["alice"]), at("back-1", "c1", ["alice", "carol"])])
      await enqueue("g~c1", [at("back-2", "c1", ["carol"])])
      const user = (u: string) => events.read({ user: u as UserId, limit: 100 }).then(ids)
      expect(await user("carol")).toEqual(["in-1", "in-2", "other-1", "other-2", "back-1", "back-2"])
      expect(await user("alice")).toEqual(["in-1", "in-2", "out-1", "out-2", "out-3", "back-1"])
      expect(await user("bob")).toEqual(["other-2"])
    })

    it("gives a removed user the event of their own removal, and nothing else of the change or after it", async () => {
      const removal = (id: string, users: string[]): HookEvent => {
        const base = loggedEvent(id, {
          conversation: "c1",
          type: "participants.removed",
          participants: ["alice"],
        })
        return { ...base, subject: { users } } as unknown as HookEvent
      }
      await enqueue("g~c1", [loggedEvent("before", { conversation: "c1", participants: ["alice", "carol"] })])
      // One change: a message written with the removal, the removal, the raw document event.
      await enqueue("g~c1", [
        loggedEvent("same-change", { conversation: "c1", participants: ["alice"] }),
        removal("removed", ["carol"]),
        loggedEvent("document", { conversation: "c1", participants: ["alice"] }),
      ])
      await enqueue("g~c1", [loggedEvent("after", { conversation: "c1", participants: ["alice"] })])
      const user = (u: string) => events.read({ user: u as UserId, limit: 10 }).then(ids)
      // Before: carol's feed never said she left (a backend mirroring her conversations kept this one).
      expect(await user("carol")).toEqual(["before", "removed"])
      // Her removal's event without the conversation as the change left it (a new title, new members).
      const [, seen] = await events.read({ user: "carol" as UserId, limit: 10 })
      expect(seen!.event.conversation).toMatchObject({ id: "c1", title: "", metadata: {}, participants: [] })
      const [, , full] = await events.read({ user: "alice" as UserId, limit: 10 })
      expect(full!.event.conversation.title).toBe("t")
      expect(await user("alice")).toEqual(["before", "same-change", "removed", "document", "after"])
      if (!reopen) return
      await outbox.close()
      await events.close()
      ;({ outbox, events } = await reopen())
      expect(await user("carol")).toEqual(["before", "removed"])
    })

    it("tells subscribers of every recorded batch once it is recorded, with the ids read gives", async () => {
      const heard: EventLogEntry[] = []
      const unsubscribe = events.subscribe((entries) => heard.push(...entries))
      events.subscribe(() => {
        throw new Error("a reader's bug")
      })
      await enqueue("g~c1", [loggedEvent("e1"), loggedEvent("e2")], ["hook:a"])
      expect(ids(heard)).toEqual(["e1", "e2"])
      expect(heard).toEqual(await events.read({ limit: 10 }))
      unsubscribe()
      await enqueue("g~c1", [loggedEvent("e3")])
      expect(ids(heard)).toEqual(["e1", "e2"])
    })

    it("records an event id once per conversation: the same events enqueued again are neither logged nor delivered again", async () => {
      const heard: EventLogEntry[] = []
      events.subscribe((entries) => heard.push(...entries))
      const batch = (list: readonly string[], through: number) =>
        outbox.enqueue({
          document: "g~c1",
          events: list.map((id) => ({ event: loggedEvent(id), targets: ["hook:a"] })),
          through,
        })
      const first = await batch(["e1", "e2"], 3)
      expect(first.map((d) => d.event.event.id)).toEqual(["e1", "e2"])
      // The same backlog derived again (another relay taking the conversation over, a record tried again
      // after a commit whose outcome was unknown), with one event more: only that one is new.
      const second = await batch(["e1", "e2", "e3"], 5)
      expect(second.map((d) => d.event.event.id)).toEqual(["e3"])
      expect(await outbox.watermark("g~c1")).toBe(5)
      // Delivered, it is still known: the log remembers it, not the deliveries.
      await outbox.delivered(first[0]!.seq, "hook:a")
      expect(await batch(["e1"], 5)).toEqual([])
      // A repeat inside one batch is one event; the same id in another conversation is another event.
      await outbox.enqueue({
        document: "g~c2",
        events: ["e1", "e1"].map((id) => ({
          event: loggedEvent(id, { conversation: "c2" }),
          targets: ["hook:a"],
        })),
      })
      const logged = await events.read({ limit: 100 })
      expect(logged.map((e) => [e.event.event.conversationId, e.event.event.id])).toEqual([
        ["c1", "e1"],
        ["c1", "e2"],
        ["c1", "e3"],
        ["c2", "e1"],
      ])
      expect(ids(heard)).toEqual(["e1", "e2", "e3", "e1"])
      expect((await outbox.pending()).map((d) => [d.document, d.event.event.id])).toEqual([
        ["g~c1", "e2"],
        ["g~c1", "e3"],
        ["g~c2", "e1"],
      ])
      if (!reopen) return
      await outbox.close()
      await events.close()
      ;({ outbox, events } = await reopen())
      expect(await batch(["e2", "e3", "e4"], 6)).toHaveLength(1)
      expect(ids(await events.read({ limit: 100 }))).toEqual(["e1", "e2", "e3", "e1", "e4"])
    })

    it("records a batch all or nothing, together with its deliveries, and tells subscribers only of what it recorded", async () => {
      const heard: EventLogEntry[] = []
      events.subscribe((entries) => heard.push(...entries))
      // An event that cannot be stored (JSON has no BigInt): a durable backend refuses the whole batch.
      const unstorable = { ...loggedEvent("bad"), subject: { upTo: 1n } } as unknown as HookEvent
      const outcome = await enqueue("g~c1", [loggedEvent("ok"), unstorable], ["hook:a"]).then(
        () => "recorded",
        () => "refused",
      )
      const logged = ids(await events.read({ limit: 10 }))
      const pending = (await outbox.pending()).map((d) => d.event.event.id)
      const expected = outcome === "refused" ? [] : ["ok", "bad"]
      expect(logged).toEqual(expected)
      expect(pending).toEqual(expected)
      expect(ids(heard)).toEqual(expected)
      await enqueue("g~c1", [loggedEvent("next")])
      expect(ids(await events.read({ limit: 10 }))).toEqual([...expected, "next"])
    })

    it("records document.updated without the message content its change's own events carry; deliveries get it whole", async () => {
      const doc = new Y.Doc()
      const alice = "alice" as UserId
      createConversation(doc, alice, {
        kind: "group",
        id: "g~lean" as ConversationId,
        participants: ["bob" as UserId],
      })
      const changes: ChangeEvent[] = []
      const stop = observeChanges(doc, (c) => changes.push(...c))
      const first = sendMessage(doc, alice, { body: "first secret body" })
      doc.transact(() => {
        sendMessage(doc, alice, { body: "second secret body" })
        editMessage(doc, alice, first.id, "edited secret body")
      })
      stop()
      const derived = deriveHookEvents({
        conversationId: "g~lean" as ConversationId,
        doc,
        actor: { kind: "user", user: alice },
        changes,
        positions: [1, 2],
        now: 5,
      })
      expect(derived.map((e) => e.event.type).filter((t) => t === "document.updated")).toEqual([
        "document.updated",
      ])
      const updated = derived.at(-1)!
      // The same change made by hand (not derived: an event recovered or built elsewhere) is logged the same way.
      const byHand = JSON.parse(
        JSON.stringify({ ...updated, event: { ...updated.event, id: "by-hand" } }),
      ) as HookEvent
      const heard: EventLogEntry[] = []
      events.subscribe((entries) => heard.push(...entries))
      await outbox.enqueue({
        document: "g~lean",
        events: [...derived, byHand].map((event) => ({
          event,
          targets: event.event.type === "document.updated" ? ["hook:a"] : [],
        })),
      })
      const read = await events.read({ limit: 100 })
      expect(heard).toEqual(read)
      expect(read.map((e) => e.event.event.type)).toEqual([
        ...derived.map((e) => e.event.type),
        "document.updated",
      ])
      const sentIds = read.flatMap((e) =>
        e.event.event.type === "message.sent"
          ? [(e.event.subject as { message: { id: string } }).message.id]
          : [],
      )
      expect(sentIds).toHaveLength(2)
      for (const entry of read.filter((e) => e.event.event.type === "document.updated")) {
        const subject = entry.event.subject as { changes: unknown[]; positions: number[] }
        expect(subject.positions).toEqual([1, 2])
        expect(subject.changes.filter((c) => (c as { type: string }).type === "message.sent")).toEqual(
          sentIds.map((id) => ({ type: "message.sent", message: { id } })),
        )
        expect(subject.changes).toContainEqual({
          type: "message.edited",
          messageId: first.id,
          editedAt: expect.any(Number),
        })
        expect(JSON.stringify(entry.event)).not.toContain("secret body")
        expect(entry.event.event).toEqual(entry.event.event.id === "by-hand" ? byHand.event : updated.event)
      }
      // The content is in the log, in the events that carry it.
      expect(JSON.stringify(read.filter((e) => e.event.event.type === "message.edited"))).toContain(
        "edited secret body",
      )
      // A hook that wants document.updated gets every change whole, as its handler would.
      const pending = await outbox.pending()
      expect(pending.map((d) => d.event.event.id)).toEqual([updated.event.id, "by-hand"])
      for (const delivery of pending)
        expect(JSON.parse(JSON.stringify(delivery.event.subject))).toEqual(
          JSON.parse(JSON.stringify(updated.subject)),
        )
    })

    it("does not record typing.started, which is not durable", async () => {
      await enqueue("g~c1", [loggedEvent("t1", { type: "typing.started" }), loggedEvent("e1")])
      expect(ids(await events.read({ limit: 10 }))).toEqual(["e1"])
    })

    it("refuses an `after`, a limit or a type it does not know with INVALID_ARGUMENT", async () => {
      await enqueue("g~c1", [loggedEvent("e1")])
      const latest = Number(await events.latest())
      for (const after of ["abc", "-1", "1.5", "", "01", String(latest + 1), "99999999999999999999"])
        expect(await codeOf(events.read({ after, limit: 10 })), after).toBe(ErrorCode.INVALID_ARGUMENT)
      for (const limit of [0, -1, 1.5, 1001])
        expect(await codeOf(events.read({ limit })), String(limit)).toBe(ErrorCode.INVALID_ARGUMENT)
      expect(await codeOf(events.read({ types: ["nope" as HookEventType], limit: 1 }))).toBe(
        ErrorCode.INVALID_ARGUMENT,
      )
      expect(ids(await events.read({ after: "0", limit: 10 }))).toEqual(["e1"])
    })

    it("prunes the oldest events beyond the retention count, and refuses a read from before them with EVENTS_EXPIRED", async () => {
      await enqueue(
        "g~c1",
        ["e1", "e2", "e3", "e4", "e5"].map((id) => loggedEvent(id)),
      )
      const all = await events.read({ limit: 10 })
      expect(await events.prune({ maxAgeMs: FOREVER.maxAgeMs, maxEvents: 2 })).toBe(3)
      expect(ids(await events.read({ limit: 10 }))).toEqual(["e4", "e5"])
      // From e3 on nothing is missing; from before it, e3 itself would be.
      expect(ids(await events.read({ after: all[2]!.id, limit: 10 }))).toEqual(["e4", "e5"])
      expect(await codeOf(events.read({ after: all[1]!.id, limit: 10 }))).toBe(ErrorCode.EVENTS_EXPIRED)
      expect(await codeOf(events.read({ after: "0", limit: 10 }))).toBe(ErrorCode.EVENTS_EXPIRED)
      // Again is nothing more to do.
      expect(await events.prune({ maxAgeMs: FOREVER.maxAgeMs, maxEvents: 2 })).toBe(0)
    })

    it("prunes events older than the retention age, and the user index with them", async () => {
      await enqueue(
        "g~c1",
        [1000, 2000, 3000, 4000].map((time) => loggedEvent(`t${time}`, { time })),
      )
      expect(await events.prune({ maxAgeMs: 1500, maxEvents: FOREVER.maxEvents }, 4000)).toBe(2)
      expect(ids(await events.read({ limit: 10 }))).toEqual(["t3000", "t4000"])
      expect(
        ids(
          await events.read({
            user: "bob" as UserId,
            after: (await events.read({ limit: 1 }))[0]!.id,
            limit: 10,
          }),
        ),
      ).toEqual(["t4000"])
      expect(await events.prune(FOREVER, 4000)).toBe(0)
    })

    it("keeps ids increasing after everything was pruned", async () => {
      await enqueue("g~c1", [loggedEvent("e1"), loggedEvent("e2")])
      const before = await events.latest()
      expect(await events.prune({ maxAgeMs: 0, maxEvents: 0 }, 10)).toBe(2)
      expect(await events.latest()).toBe(before)
      expect(await events.read({ after: before, limit: 10 })).toEqual([])
      await enqueue("g~c1", [loggedEvent("e3")])
      const [entry] = await events.read({ after: before, limit: 10 })
      expect(entry?.event.event.id).toBe("e3")
      expect(Number(entry!.id)).toBeGreaterThan(Number(before))
    })

    it("keeps events, ids and the pruned horizon across a reopen", async () => {
      if (!reopen) return
      await enqueue(
        "g~c1",
        ["e1", "e2", "e3"].map((id) => loggedEvent(id)),
        ["hook:a"],
      )
      const first = await events.read({ limit: 10 })
      await events.prune({ maxAgeMs: FOREVER.maxAgeMs, maxEvents: 2 })
      await outbox.close()
      await events.close()
      ;({ outbox, events } = await reopen())
      expect(await events.read({ after: first[0]!.id, limit: 10 })).toEqual(first.slice(1))
      expect(await codeOf(events.read({ after: "0", limit: 10 }))).toBe(ErrorCode.EVENTS_EXPIRED)
      await enqueue("g~c1", [loggedEvent("e4")])
      const [fourth] = await events.read({ after: first[2]!.id, limit: 10 })
      expect(fourth?.event.event.id).toBe("e4")
      expect(Number(fourth!.id)).toBeGreaterThan(Number(first[2]!.id))
    })

    it("stores a 1,000-member room's member list once for its 100 messages, and reads back every event as it was, across a reopen", async () => {
      // As `participantsOf` gives it: one frozen list until the membership changes, a new conversation object per change.
      const members = bigRoom(1000)
      const sent: HookEvent[] = []
      for (let m = 0; m < 100; m++) {
        const conversation = { ...loggedEvent("x").conversation, participants: members }
        const change = [`m${m}a`, `m${m}b`].map(
          (id) => ({ ...loggedEvent(id, { time: m }), conversation }) as HookEvent,
        )
        sent.push(...change)
        await outbox.enqueue({
          document: "g~c1",
          events: change.map((event) => ({ event, targets: ["hook:a"] })),
        })
      }
      const json = sent.map((e) => JSON.stringify(e))
      const check = async () => {
        const read = await events.read({ limit: 1000 })
        expect(read.map((e) => JSON.stringify(e.event))).toEqual(json)
        expect((await outbox.pending()).map((d) => JSON.stringify(d.event))).toEqual(json)
        expect((await events.read({ user: "u0999" as UserId, limit: 1000 })).length).toBe(200)
      }
      await check()
      if (footprint) {
        const listJson = JSON.stringify(members).length
        const stored = await footprint()
        // 200 events in the log and 200 in the outbox: none carries the ~60 KB list, which is stored once.
        expect(stored.rows).toBe(400)
        expect(stored.lists).toBe(1)
        expect(stored.listBytes).toBe(listJson)
        expect(stored.maxPayload).toBeLessThan(1000)
        // Inline, every row would hold the list: 400 × ~60 KB. Now it is a few hundred bytes per row and the list once.
        expect(stored.payloadBytes + stored.listBytes).toBeLessThan((stored.rows * listJson) / 50)
      }
      if (!reopen) return
      await outbox.close()
      await events.close()
      ;({ outbox, events } = await reopen())
      await check()
      // Dead letters and their replay give the same events too.
      for (const d of await outbox.pending()) await outbox.deadLetter(d.seq, d.target, 1, "no", 5)
      expect((await outbox.deadLetters()).map((d) => JSON.stringify(d.event))).toEqual(json)
      expect((await outbox.replay()).map((d) => JSON.stringify(d.event))).toEqual(json)
    })

    it("keeps a member list while a stored event references it, and prunes it once none does", async () => {
      const before = { ...loggedEvent("x").conversation, participants: bigRoom(3) }
      const after = { ...loggedEvent("x").conversation, participants: bigRoom(4) }
      const a = { ...loggedEvent("a"), conversation: before } as HookEvent
      const b = { ...loggedEvent("b"), conversation: after } as HookEvent
      await outbox.enqueue({ document: "g~c1", events: [{ event: a, targets: ["hook:a"] }] })
      await outbox.enqueue({ document: "g~c1", events: [{ event: b, targets: [] }] })
      expect((await footprint?.())?.lists ?? 2).toBe(2)
      // The log forgets both; the outbox still owes `a`, so its list stays.
      expect(await events.prune({ maxAgeMs: FOREVER.maxAgeMs, maxEvents: 0 })).toBe(2)
      expect((await footprint?.())?.lists ?? 1).toBe(1)
      const [owed] = await outbox.pending()
      expect(JSON.stringify(owed!.event)).toBe(JSON.stringify(a))
      await outbox.delivered(owed!.seq, owed!.target)
      expect(await outbox.pending()).toEqual([])
      await events.prune({ maxAgeMs: FOREVER.maxAgeMs, maxEvents: 0 })
      expect((await footprint?.())?.lists ?? 0).toBe(0)
      // A list swept is written again by the next event that needs it.
      const c = { ...loggedEvent("c"), conversation: before } as HookEvent
      await outbox.enqueue({ document: "g~c1", events: [{ event: c, targets: ["hook:a"] }] })
      expect((await events.read({ limit: 10 })).map((e) => JSON.stringify(e.event))).toEqual([
        JSON.stringify(c),
      ])
      expect((await outbox.pending()).map((d) => JSON.stringify(d.event))).toEqual([JSON.stringify(c)])
    })
  })
}

/** `n` members as `participantsOf` lists them: frozen, sorted, one array shared by every event until they change. */
function bigRoom(n: number): HookEvent["conversation"]["participants"] {
  return Object.freeze(
    Array.from({ length: n }, (_, i) =>
      Object.freeze({
        user: `u${String(i).padStart(4, "0")}` as UserId,
        role: i === 0 ? ("owner" as const) : ("member" as const),
        addedBy: "u0000" as UserId,
        addedAt: 1_700_000_000_000 + i,
      }),
    ),
  )
}
