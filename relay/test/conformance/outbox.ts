import type { ConversationId, UserId } from "@parley/shared"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import type { HookEvent } from "../../src/hooks/events.js"
import type { Outbox } from "../../src/hooks/outbox.js"

/** A minimal, valid event for outbox tests. */
export function sampleEvent(id: string, conversationId = "c1"): HookEvent {
  return {
    event: {
      id,
      type: "messages.read",
      time: 1,
      conversationId: conversationId as ConversationId,
      actor: { kind: "user", user: "alice" as UserId },
    },
    subject: { user: "alice" as UserId, upTo: 3 },
    conversation: {
      id: conversationId as ConversationId,
      kind: "group",
      title: "t",
      metadata: {},
      createdBy: "alice" as UserId,
      createdAt: 1,
      participants: [],
    },
  }
}

/**
 * The behaviour every {@link Outbox} shares. `setup` returns a fresh outbox;
 * `reopen`, when given, reopens the same store (durable backends).
 */
export function runOutboxConformance(
  name: string,
  setup: () => Promise<{ outbox: Outbox; reopen?: () => Promise<Outbox>; cleanup?: () => Promise<void> }>,
) {
  describe(`outbox conformance: ${name}`, () => {
    let outbox: Outbox
    let reopen: (() => Promise<Outbox>) | undefined
    let cleanup: (() => Promise<void>) | undefined
    beforeEach(async () => {
      ;({ outbox, reopen, cleanup } = await setup())
    })
    afterEach(async () => {
      await outbox.close()
      await cleanup?.()
    })

    it("gives pending deliveries back in enqueue order, one per target", async () => {
      await outbox.enqueue({ document: "c1", events: [{ event: sampleEvent("e1"), targets: ["a", "b"] }] })
      await outbox.enqueue({ document: "c2", events: [{ event: sampleEvent("e2", "c2"), targets: ["a"] }] })
      const pending = await outbox.pending()
      expect(pending.map((d) => [d.event.event.id, d.target])).toEqual([
        ["e1", "a"],
        ["e1", "b"],
        ["e2", "a"],
      ])
      expect(pending[0]!.seq).toBeLessThan(pending[2]!.seq)
      expect(pending[0]!.event).toEqual(sampleEvent("e1"))
      // One document's only (a relay taking it over).
      expect((await outbox.pending("c2")).map((d) => [d.event.event.id, d.target])).toEqual([["e2", "a"]])
      expect((await outbox.pending("c1")).map((d) => d.target)).toEqual(["a", "b"])
      expect(await outbox.pending("c3")).toEqual([])
    })

    it("lists the documents owed deliveries, once each, without dead letters or delivered ones", async () => {
      expect(await outbox.pendingDocuments()).toEqual([])
      const [b1] = await outbox.enqueue({
        document: "b",
        events: [{ event: sampleEvent("e1", "b"), targets: ["x", "y"] }],
      })
      await outbox.enqueue({ document: "a", events: [{ event: sampleEvent("e2", "a"), targets: ["x"] }] })
      const [c1] = await outbox.enqueue({
        document: "c",
        events: [{ event: sampleEvent("e3", "c"), targets: ["x"] }],
      })
      await outbox.enqueue({ document: "d", events: [{ event: sampleEvent("e4", "d"), targets: [] }] })
      expect(await outbox.pendingDocuments()).toEqual(["a", "b", "c"])
      await outbox.delivered(b1!.seq, "x")
      await outbox.deadLetter(c1!.seq, "x", 3, "gave up", 1)
      expect(await outbox.pendingDocuments()).toEqual(["a", "b"])
      await outbox.delivered(b1!.seq, "y")
      expect(await outbox.pendingDocuments()).toEqual(["a"])
      await outbox.replay({ document: "c" })
      expect(await outbox.pendingDocuments()).toEqual(["a", "c"])
    })

    it("records the watermark with the events and only moves it forward", async () => {
      expect(await outbox.watermark("c1")).toBeUndefined()
      await outbox.enqueue({ document: "c1", events: [], through: 0 })
      expect(await outbox.watermark("c1")).toBe(0)
      await outbox.enqueue({
        document: "c1",
        events: [{ event: sampleEvent("e1"), targets: ["a"] }],
        through: 7,
      })
      await outbox.enqueue({ document: "c1", events: [], through: 5 })
      expect(await outbox.watermark("c1")).toBe(7)
      expect(await outbox.watermark("c2")).toBeUndefined()
    })

    it("forgets a delivery once delivered, keeps the other targets'", async () => {
      const [first] = await outbox.enqueue({
        document: "c1",
        events: [{ event: sampleEvent("e1"), targets: ["a", "b"] }],
      })
      await outbox.delivered(first!.seq, "a")
      expect((await outbox.pending()).map((d) => d.target)).toEqual(["b"])
    })

    it("forgets an event once every target has it, a retried one among them, across a reopen", async () => {
      const [d] = await outbox.enqueue({
        document: "c1",
        events: [{ event: sampleEvent("e1"), targets: ["a", "b", "c"] }],
      })
      await outbox.retryLater(d!.seq, "b", 1, 77, "boom")
      await outbox.delivered(d!.seq, "a")
      if (reopen) {
        await outbox.close()
        outbox = await reopen()
      }
      expect((await outbox.pending()).map((x) => [x.target, x.attempts, x.nextAttemptAt])).toEqual([
        ["b", 1, 77],
        ["c", 0, 0],
      ])
      await outbox.delivered(d!.seq, "c")
      expect((await outbox.pending()).map((x) => x.target)).toEqual(["b"])
      expect(await outbox.pendingDocuments()).toEqual(["c1"])
      await outbox.delivered(d!.seq, "b")
      expect(await outbox.pending()).toEqual([])
      expect(await outbox.pendingDocuments()).toEqual([])
      expect(await outbox.deadLetters()).toEqual([])
    })

    it("pages one lane's owed deliveries after a seq, in order, without other lanes, delivered or dead ones", async () => {
      const ids = Array.from({ length: 7 }, (_, i) => `e${i}`)
      const deliveries = await outbox.enqueue({
        document: "c1",
        events: ids.map((id) => ({ event: sampleEvent(id), targets: ["a", "b"] })),
      })
      await outbox.enqueue({ document: "c2", events: [{ event: sampleEvent("x", "c2"), targets: ["a"] }] })
      const seqs = [...new Set(deliveries.map((d) => d.seq))]
      await outbox.delivered(seqs[0]!, "a")
      await outbox.retryLater(seqs[2]!, "a", 2, 55, "boom")
      await outbox.deadLetter(seqs[3]!, "a", 8, "gave up", 1)
      const page = (after: number, limit: number) => outbox.pendingPage("c1", "a", after, limit)
      const first = await page(0, 3)
      expect(first.map((d) => [d.event.event.id, d.target, d.attempts])).toEqual([
        ["e1", "a", 0],
        ["e2", "a", 2],
        ["e4", "a", 0],
      ])
      expect(first[1]).toMatchObject({ nextAttemptAt: 55, lastError: "boom", document: "c1" })
      expect(first[0]!.event).toEqual(sampleEvent("e1"))
      const rest = await page(first[2]!.seq, 3)
      expect(rest.map((d) => d.event.event.id)).toEqual(["e5", "e6"])
      expect(await page(rest[1]!.seq, 3)).toEqual([])
      expect((await outbox.pendingPage("c1", "b", 0, 100)).map((d) => d.event.event.id)).toEqual(ids)
      expect(await outbox.pendingPage("c3", "a", 0, 100)).toEqual([])
      expect(await outbox.pendingLanes()).toEqual([
        { document: "c1", target: "a" },
        { document: "c1", target: "b" },
        { document: "c2", target: "a" },
      ])
      expect(await outbox.pendingLanes("c2")).toEqual([{ document: "c2", target: "a" }])
      for (const seq of seqs) await outbox.delivered(seq, "b")
      expect(await outbox.pendingLanes("c1")).toEqual([{ document: "c1", target: "a" }])
    })

    it("keeps attempts and the next attempt time of a retried delivery", async () => {
      const [d] = await outbox.enqueue({
        document: "c1",
        events: [{ event: sampleEvent("e1"), targets: ["a"] }],
      })
      await outbox.retryLater(d!.seq, "a", 2, 12345, "boom")
      const [again] = await outbox.pending()
      expect(again).toMatchObject({ attempts: 2, nextAttemptAt: 12345, lastError: "boom" })
    })

    it("moves a delivery to the dead letters and replays it with a fresh attempt count", async () => {
      const [d] = await outbox.enqueue({
        document: "c1",
        events: [
          { event: sampleEvent("e1"), targets: ["a"] },
          { event: sampleEvent("e2"), targets: ["a"] },
        ],
      })
      await outbox.deadLetter(d!.seq, "a", 5, "gave up", 999)
      expect((await outbox.pending()).map((x) => x.event.event.id)).toEqual(["e2"])
      const dead = await outbox.deadLetters()
      expect(dead).toHaveLength(1)
      expect(dead[0]).toMatchObject({ target: "a", attempts: 5, lastError: "gave up", deadAt: 999 })
      expect(await outbox.replay({ eventId: "nope" })).toEqual([])
      const replayed = await outbox.replay({ eventId: "e1" })
      expect(replayed.map((x) => [x.event.event.id, x.attempts])).toEqual([["e1", 0]])
      expect(await outbox.deadLetters()).toEqual([])
      expect((await outbox.pending()).map((x) => x.event.event.id)).toEqual(["e1", "e2"])
    })

    it("keeps events, dead letters and watermarks across a reopen", async () => {
      if (!reopen) return
      const [d] = await outbox.enqueue({
        document: "c1",
        events: [
          { event: sampleEvent("e1"), targets: ["a"] },
          { event: sampleEvent("e2"), targets: ["a"] },
        ],
        through: 4,
      })
      await outbox.deadLetter(d!.seq, "a", 3, "x", 1)
      await outbox.close()
      outbox = await reopen()
      expect(await outbox.watermark("c1")).toBe(4)
      expect((await outbox.pending()).map((x) => x.event.event.id)).toEqual(["e2"])
      expect((await outbox.deadLetters()).map((x) => x.event.event.id)).toEqual(["e1"])
      const [e3] = await outbox.enqueue({
        document: "c1",
        events: [{ event: sampleEvent("e3"), targets: ["a"] }],
      })
      expect(e3!.seq).toBeGreaterThan(d!.seq + 1)
    })
  })
}
