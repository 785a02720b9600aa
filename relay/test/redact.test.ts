import { describe, expect, it } from "vitest"
import { type HookEvent, stableEventId } from "../src/hooks/events.js"
import { MAX_RECENT_PURGED_IDS, RecentPurges } from "../src/purge/recent-purges.js"
import { namesAnyMessage, redactPayload } from "../src/purge/redact.js"

const event = (subject: unknown) =>
  JSON.stringify({
    event: {
      id: "e1",
      type: "message.sent",
      time: 1,
      conversationId: "g~c",
      actor: { kind: "user", user: "a" },
    },
    subject,
    conversation: { id: "g~c", title: "t", participants: ["a", "b"] },
  })

describe("namesAnyMessage", () => {
  const gone = new Set(["Gone-Message-1", "Gone-Message-2"])
  const payloads = [
    event({ message: { id: "Gone-Message-1", body: "secret", author: "a" } }),
    event({ messageId: "Gone-Message-2", body: "edited secret" }),
    event({
      changes: [
        { type: "message.sent", message: { id: "Kept-Message-1", body: "x" } },
        { type: "message.deleted", messageId: "Gone-Message-2" },
      ],
    }),
    event({ message: { id: "Kept-Message-1", body: 'quoting "id":"Gone-Message-1" in a body' } }),
    event({ message: { id: "Kept-Message-1", body: "Gone-Message-1 named in a body only" } }),
    event({ user: "a", upTo: 3 }),
  ]

  it("is true for every payload redaction would change, and no parse is needed for the others", () => {
    for (const payload of payloads) {
      const changes = redactPayload(payload, { kind: "messages", ids: gone }) !== undefined
      if (changes) expect(namesAnyMessage(payload, gone)).toBe(true)
    }
    expect(payloads.map((p) => namesAnyMessage(p, gone))).toEqual([true, true, true, false, false, false])
  })
})

describe("redactPayload", () => {
  it("redacts an event whose message metadata nests thousands deep (stored before such values were refused) without walking into it", () => {
    // Written out, as JSON.stringify itself overflows at this depth.
    const deep = `${"[".repeat(50_000)}"secret deep"${"]".repeat(50_000)}`
    const withDeep = (id: string) =>
      event({ message: { id, body: "secret", author: "a", metadata: { deep: "DEEP" } } }).replace(
        '"DEEP"',
        deep,
      )
    const payload = withDeep("Gone-Message-1")
    const gone = { kind: "messages", ids: new Set(["Gone-Message-1"]) } as const
    // Before: RangeError (stack overflow) on every purge that read it, and the hooks of every conversation
    // waited behind the failing record.
    const redacted = JSON.parse(redactPayload(payload, gone)!)
    expect(redacted.subject.message).toMatchObject({
      id: "Gone-Message-1",
      body: "",
      metadata: {},
      purged: true,
    })
    expect(redactPayload(withDeep("Kept-Message-1"), gone)).toBeUndefined()
  })

  it("empties a purged message's body and marks it purged, so that nobody takes the empty body for what was sent", () => {
    const payload = event({
      message: { id: "Gone-Message-1", body: "secret", author: "a", attachments: [1] },
    })
    const redacted = JSON.parse(
      redactPayload(payload, { kind: "messages", ids: new Set(["Gone-Message-1"]) })!,
    )
    expect(redacted.subject.message).toEqual({
      id: "Gone-Message-1",
      body: "",
      author: "a",
      attachments: [],
      purged: true,
    })
    const edited = event({ messageId: "Gone-Message-1", body: "edited secret" })
    expect(
      JSON.parse(redactPayload(edited, { kind: "messages", ids: new Set(["Gone-Message-1"]) })!).subject,
    ).toEqual({ messageId: "Gone-Message-1", body: "", purged: true })
  })
})

describe("RecentPurges", () => {
  const sent = (id: string) => JSON.parse(event({ message: { id, body: `text of ${id}` } })) as HookEvent

  it("applies the purges of the last minutes to events taken in later, and forgets them after", () => {
    let now = 0
    const purges = new RecentPurges(1_000, () => now)
    purges.note("doc-a", { kind: "messages", ids: new Set(["Gone-Message-1"]) })
    const kept = sent("Kept-Message-1")
    expect(purges.redact("doc-a", kept)).toBe(kept)
    expect(purges.redact("doc-b", sent("Gone-Message-1")).subject).toMatchObject({
      message: { body: "text of Gone-Message-1" },
    })
    expect(purges.redact("doc-a", sent("Gone-Message-1")).subject).toMatchObject({
      message: { body: "", purged: true },
    })
    purges.note("doc-b", { kind: "conversation" })
    expect(purges.redact("doc-b", kept).subject).toEqual({ purged: true })
    expect(purges.covers("doc-b", "anything")).toBe(true)
    now = 1_001
    expect(purges.covers("doc-a", "Gone-Message-1")).toBe(false)
    expect(purges.redact("doc-b", kept)).toBe(kept)
    expect(purges.size).toBe(0)
  })

  it("applies a whole conversation's purge to the events of changes up to its position, not to those of a reopen after it", () => {
    const purges = new RecentPurges()
    const at = (position: number | undefined, id: string) => {
      const base = sent(id)
      const eventId = position === undefined ? "evt_random" : stableEventId("g~c", position, 0)
      return { ...base, event: { ...base.event, id: eventId } } as HookEvent
    }
    purges.note("dm~a~b", { kind: "conversation", through: 40 })
    expect(purges.redact("dm~a~b", at(40, "Old-Message")).subject).toEqual({ purged: true })
    expect(purges.redact("dm~a~b", at(7, "Older-Message")).subject).toEqual({ purged: true })
    expect(purges.redact("dm~a~b", at(undefined, "Unplaced-Message")).subject).toEqual({ purged: true })
    const after = at(41, "New-Message")
    expect(purges.redact("dm~a~b", after)).toBe(after)
    expect(purges.covers("dm~a~b", "Old-Message", 40)).toBe(true)
    expect(purges.covers("dm~a~b", "New-Message", 41)).toBe(false)
    // A message of the reopened conversation deleted in turn: its events go, the others' stay.
    purges.note("dm~a~b", { kind: "messages", ids: new Set(["New-Message"]) })
    expect(purges.redact("dm~a~b", after).subject).toMatchObject({ message: { body: "", purged: true } })
    expect(purges.covers("dm~a~b", "New-Message", 41)).toBe(true)
    const other = at(42, "Other-New-Message")
    expect(purges.redact("dm~a~b", other)).toBe(other)
    // A purge told without a position (a relay of an earlier version) covers every event.
    purges.note("g~other", { kind: "conversation" })
    expect(purges.covers("g~other", "Any", 10_000)).toBe(true)
  })

  it("applies a user's erasure to events taken in later: their name and profile go, their messages and others' names stay", () => {
    const purges = new RecentPurges()
    const by = (user: string, name: string) =>
      ({
        ...JSON.parse(event({ changes: [{ type: "profile.updated", user, profile: { user, name } }] })),
        event: { id: "e2", type: "document.updated", actor: { kind: "user", user, name } },
      }) as HookEvent
    purges.note("doc-a", { kind: "messages", ids: new Set(["Gone-Message-1"]) })
    purges.note("doc-a", { kind: "user", user: "dan" })
    const dan = purges.redact("doc-a", by("dan", "Dan-Name"))
    expect(JSON.stringify(dan)).not.toContain("Dan-Name")
    expect(dan.event.actor).toEqual({ kind: "user", user: "dan" })
    expect(dan.subject).toEqual({
      changes: [{ type: "profile.updated", user: "dan", profile: { user: "dan", purged: true } }],
    })
    const eve = by("eve", "Eve-Name")
    expect(purges.redact("doc-a", eve)).toBe(eve)
    // The earlier purge of a message still applies with it.
    expect(purges.redact("doc-a", sent("Gone-Message-1")).subject).toMatchObject({ message: { body: "" } })
    expect(purges.redact("doc-b", by("dan", "Dan-Name")).event.actor).toMatchObject({ name: "Dan-Name" })
  })

  it("holds at most its cap of message ids, forgetting the documents purged longest ago", () => {
    const purges = new RecentPurges()
    const ids = (prefix: string, n: number) => new Set(Array.from({ length: n }, (_, i) => `${prefix}-${i}`))
    // Each key counts one besides its ids: these two fill the cap exactly.
    purges.note("old", { kind: "messages", ids: ids("old", MAX_RECENT_PURGED_IDS / 2 - 1) })
    purges.note("new", { kind: "messages", ids: ids("new", MAX_RECENT_PURGED_IDS / 2 - 1) })
    expect(purges.covers("old", "old-0")).toBe(true)
    purges.note("newer", { kind: "messages", ids: ids("newer", 10) })
    expect(purges.covers("old", "old-0")).toBe(false)
    expect(purges.covers("new", "new-0")).toBe(true)
    expect(purges.covers("newer", "newer-9")).toBe(true)
  })

  it("counts each purged conversation toward that cap too, so that deleting conversations buys no unbounded memory", () => {
    const purges = new RecentPurges()
    for (let i = 0; i <= MAX_RECENT_PURGED_IDS; i++) purges.note(`doc-${i}`, { kind: "conversation" })
    expect(purges.size).toBe(MAX_RECENT_PURGED_IDS)
    expect(purges.covers("doc-0", "any")).toBe(false)
    expect(purges.covers(`doc-${MAX_RECENT_PURGED_IDS}`, "any")).toBe(true)
  })
})
