import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { type Answer, apiClient, createKey, freshDataDir } from "./helpers.js"

/*
 * A write scope is no read scope, in a write's refusals either: a key without `messages:read` (or
 * `conversations:read`) gets the same answer whatever the message (or participant) it names is:
 * another user's, another's sticky one, a deleted one, or none. Only what a write's own success needs
 * is told (a reaction or a read marker needs a message that is there). Keys that may read keep the
 * precise refusals. (An outside tester's finding: the refusals told who wrote a guessed message id,
 * whether it was pinned, and who took part in a conversation.)
 */

const C = "/v1/conversations/g~blind"
const THUMBS = encodeURIComponent("👍")

/** Carol's message, her sticky one, one she deleted, and an id nobody used. */
const PLAIN = "m_blind_plain"
const STICKY = "m_blind_sticky"
const GONE = "m_blind_gone"
const MADE_UP = "m_blind_made_up"
const OTHERS = [PLAIN, STICKY, GONE, MADE_UP]

/** An answer as a prober sees it, with the id it named taken out: status, code, rule, text, body. */
function seen(answer: Answer, id: string): string {
  const { status, body } = answer
  const shown =
    status >= 400 ? { code: body?.code, rule: body?.rule, detail: body?.detail } : (body ?? "(no body)")
  const text = JSON.stringify(shown)
  return `${status} ${id === "" ? text : text.replaceAll(id, "<id>")}`
}

/** The distinct answers to `ask` for each of `targets`. */
async function distinct(targets: readonly string[], ask: (target: string) => Promise<Answer>) {
  const answers = new Set<string>()
  for (const target of targets) answers.add(seen(await ask(target), target))
  return [...answers]
}

describe("a write's refusals to a key that may not read what it names", () => {
  let relay: RelayProcess
  let admin: ReturnType<typeof apiClient>
  /** May post, not read messages; acts as users too. */
  let bot: ReturnType<typeof apiClient>
  /** As `bot`, with `messages:read`. */
  let botReader: ReturnType<typeof apiClient>
  /** May manage rooms, not read them; acts as users too. */
  let rooms: ReturnType<typeof apiClient>
  /** As `rooms`, with `conversations:read`. */
  let roomsReader: ReturnType<typeof apiClient>

  /** The query of a write without a body, acting as `as` (the key's own participant when undefined). */
  const query = (as: string | undefined) => (as === undefined ? "" : `?asUser=${as}`)
  const acting = (as: string | undefined) => (as === undefined ? {} : { asUser: as })

  beforeAll(async () => {
    const dataDir = freshDataDir()
    const key = (name: string, scopes: string[]) => createKey(dataDir, name, [...scopes, "act-as-user"])
    const keys = {
      admin: await key("admin", [
        "conversations:read",
        "conversations:write",
        "messages:read",
        "messages:write",
      ]),
      bot: await key("bot", ["messages:write"]),
      botReader: await key("bot-reader", ["messages:write", "messages:read"]),
      rooms: await key("rooms", ["conversations:write"]),
      roomsReader: await key("rooms-reader", ["conversations:write", "conversations:read"]),
    }
    relay = await startRelayProcess({ dataDir })
    const client = (k: string) => apiClient(() => relay.httpUrl, k)
    ;[admin, bot, botReader, rooms, roomsReader] = [
      client(keys.admin),
      client(keys.bot),
      client(keys.botReader),
      client(keys.rooms),
      client(keys.roomsReader),
    ]
    // Alice owns it; dave is an admin; bob, carol and the bot's own participant are members.
    const created = await admin("POST", "/v1/conversations", {
      id: "g~blind",
      participants: [
        { user: "bob" },
        { user: "carol" },
        { user: "dave", role: "admin" },
        { user: "service.bot" },
      ],
      asUser: "alice",
    })
    expect(created.status).toBe(201)
    for (const [id, priority] of [
      [PLAIN, "normal"],
      [STICKY, "sticky"],
      [GONE, "normal"],
    ])
      expect(
        (await admin("POST", `${C}/messages`, { id, body: `carol's ${id}`, priority, asUser: "carol" }))
          .status,
      ).toBe(201)
    expect((await admin("DELETE", `${C}/messages/${GONE}?asUser=carol`)).status).toBe(204)
  })
  afterAll(() => stopRelayProcesses())

  // Bob, a member, through the user; and the key's own participant (service.bot, a member too).
  for (const as of ["bob", undefined]) {
    const who = as ?? "service.bot"
    describe(`acting as ${who}`, () => {
      it("edits: the same 404 for another's message, another's sticky one, a deleted one and a made-up id", async () => {
        const answers = await distinct(OTHERS, (m) =>
          bot("PATCH", `${C}/messages/${m}`, { body: "guess", ...acting(as) }),
        )
        expect(answers).toEqual([
          `404 {"code":"NOT_FOUND","detail":"no message \\"<id>\\" that ${who} may edit"}`,
        ])
      })

      it("deletes: the same 404 for another's message, another's sticky one, a deleted one and a made-up id", async () => {
        const answers = await distinct(OTHERS, (m) => bot("DELETE", `${C}/messages/${m}${query(as)}`))
        expect(answers).toEqual([
          `404 {"code":"NOT_FOUND","detail":"no message \\"<id>\\" that ${who} may delete"}`,
        ])
      })

      it("unpins: the same 404 for another's message, another's sticky one, a deleted one and a made-up id", async () => {
        const answers = await distinct(OTHERS, (m) => bot("DELETE", `${C}/pins/${m}${query(as)}`))
        expect(answers).toEqual([
          `404 {"code":"NOT_FOUND","detail":"no pinned message \\"<id>\\" that ${who} may unpin"}`,
        ])
      })

      it("reacts: the message's id alone to a message that is there, one 404 for a deleted one or a made-up id", async () => {
        const react = (m: string) =>
          bot("POST", `${C}/messages/${m}/reactions`, { emoji: "👍", ...acting(as) })
        // A reaction is added only to a message that is there: that much its success tells (documented).
        expect(await distinct([PLAIN, STICKY], react)).toEqual(['200 {"id":"<id>"}'])
        expect(await distinct([GONE, MADE_UP], react)).toEqual([
          `404 {"code":"NOT_FOUND","detail":"no message \\"<id>\\" that ${who} may react to"}`,
        ])
      })

      it("removes a reaction: the message's id alone, whatever the id names", async () => {
        const answers = await distinct(OTHERS, (m) =>
          bot("DELETE", `${C}/messages/${m}/reactions/${THUMBS}${query(as)}`),
        )
        expect(answers).toEqual(['200 {"id":"<id>"}'])
      })

      it("marks read or delivered: whose marker alone to a message that is there, one 404 for a made-up id", async () => {
        for (const which of ["read", "delivered"]) {
          const mark = (m: string) => bot("POST", `${C}/${which}`, { upTo: m, ...acting(as) })
          // Sticky (later) first: the marker then does not move for the plain one, and no answer tells.
          expect(await distinct([STICKY, PLAIN, GONE], mark)).toEqual([`200 {"user":"${who}"}`])
          expect(await distinct([MADE_UP], mark)).toEqual([
            `404 {"code":"NOT_FOUND","detail":"no message \\"<id>\\" that ${who} may mark ${which} up to"}`,
          ])
          // Nor does a number tell how many messages the conversation holds.
          expect(seen(await bot("POST", `${C}/${which}`, { upTo: 1000, ...acting(as) }), "")).toBe(
            `200 {"user":"${who}"}`,
          )
        }
      })
    })
  }

  it("still lets a key that may not read edit, unpin and delete the actor's own message", async () => {
    const own = "m_blind_bobs"
    const sent = await bot(
      "POST",
      `${C}/messages`,
      { body: "mine", priority: "sticky", asUser: "bob" },
      {
        "idempotency-key": own,
      },
    )
    expect(sent.status).toBe(201)
    // A send's answer keeps its number: the key wrote that message.
    expect(sent.body).toEqual({ id: expect.any(String), seq: expect.any(Number) })
    const m = sent.body.id as string
    const edited = await bot("PATCH", `${C}/messages/${m}`, { body: "mine, edited", asUser: "bob" })
    expect([edited.status, edited.body]).toEqual([200, { id: m }])
    expect((await bot("DELETE", `${C}/pins/${m}?asUser=bob`)).status).toBe(204)
    expect((await bot("DELETE", `${C}/pins/${m}?asUser=bob`)).status).toBe(204)
    expect((await bot("DELETE", `${C}/messages/${m}?asUser=bob`)).status).toBe(204)
    expect((await bot("DELETE", `${C}/messages/${m}?asUser=bob`)).status).toBe(204)
  })

  it("gives a key that may read messages the precise refusals, as before", async () => {
    const as = { asUser: "bob" }
    const edit = (m: string) => botReader("PATCH", `${C}/messages/${m}`, { body: "x", ...as })
    expect(seen(await edit(PLAIN), PLAIN)).toBe(
      '403 {"code":"FORBIDDEN","rule":"author-only","detail":"only the author may edit a message"}',
    )
    expect(seen(await edit(MADE_UP), MADE_UP)).toBe('404 {"code":"NOT_FOUND","detail":"no message <id>"}')
    const remove = (m: string) => botReader("DELETE", `${C}/messages/${m}?asUser=bob`)
    expect((await remove(PLAIN)).body.rule).toBe("author-or-admin")
    expect((await remove(GONE)).status).toBe(204)
    expect((await remove(MADE_UP)).status).toBe(404)
    const unpin = (m: string) => botReader("DELETE", `${C}/pins/${m}?asUser=bob`)
    expect(seen(await unpin(PLAIN), PLAIN)).toBe(
      '422 {"code":"INVALID_UPDATE","detail":"the message is not pinned"}',
    )
    expect((await unpin(STICKY)).body.rule).toBe("unpin-author-or-admin")
    expect((await unpin(MADE_UP)).status).toBe(404)
    const reacted = await botReader("POST", `${C}/messages/${PLAIN}/reactions`, { emoji: "🎉", ...as })
    expect(reacted.body).toMatchObject({ id: PLAIN, author: "carol", seq: 1, body: `carol's ${PLAIN}` })
    expect(
      (await botReader("DELETE", `${C}/messages/${MADE_UP}/reactions/${THUMBS}?asUser=bob`)).status,
    ).toBe(404)
    const marked = await botReader("POST", `${C}/read`, { upTo: STICKY, asUser: "dave" })
    expect(marked.body).toEqual({ user: "dave", readUpTo: 2, deliveredUpTo: 2, moved: true })
  })

  describe("participants, to a key that may not read the conversation", () => {
    const role = (as: string, user: string, to = "member") =>
      rooms("PUT", `${C}/participants/${user}/role`, { role: to, asUser: as })
    const remove = (as: string, user: string) => rooms("DELETE", `${C}/participants/${user}?asUser=${as}`)
    const adminOnly = (what: string) =>
      `403 {"code":"FORBIDDEN","rule":"admin-only","detail":"only owners and admins may ${what}"}`

    it("refuses a member's role change admin-only, whoever it names and whatever their role", async () => {
      // Carol's role is member already (it was a 200 no-op), zed takes no part (it was a 404).
      const answers = await distinct(["alice", "carol", "dave", "zed"], (user) => role("bob", user))
      expect(answers).toEqual([adminOnly("change roles")])
      expect(await distinct(["alice", "zed"], (user) => role("bob", user, "owner"))).toEqual([
        adminOnly("change roles"),
      ])
    })

    it("refuses a member's removal of another admin-only, whether or not they take part", async () => {
      const answers = await distinct(["alice", "carol", "dave", "zed"], (user) => remove("bob", user))
      expect(answers).toEqual([adminOnly("remove participants")])
    })

    it("gives an admin one 404 for an owner and for a user who takes no part", async () => {
      expect(await distinct(["alice", "zed"], (user) => role("dave", user))).toEqual([
        '404 {"code":"NOT_FOUND","detail":"no participant \\"<id>\\" whose role dave may change"}',
      ])
      expect(await distinct(["alice", "zed"], (user) => remove("dave", user))).toEqual([
        '404 {"code":"NOT_FOUND","detail":"no participant \\"<id>\\" that dave may remove"}',
      ])
      // Making an owner needs an owner, whoever it names.
      expect(await distinct(["carol", "zed"], (user) => role("dave", user, "owner"))).toEqual([
        '403 {"code":"FORBIDDEN","rule":"owner-only","detail":"only an owner may make or unmake an owner"}',
      ])
      // Where the write can be made, it is: a participant's role, set already or not.
      expect(seen(await role("dave", "carol"), "")).toBe('200 {"id":"g~blind","kind":"group"}')
    })

    it("gives a key that may read the conversation the precise refusals, as before", async () => {
      const as = (user: string) => ({ role: "member", asUser: user })
      const zed = await roomsReader("PUT", `${C}/participants/zed/role`, as("bob"))
      expect(seen(zed, "")).toBe('404 {"code":"NOT_FOUND","detail":"zed is not a participant"}')
      expect((await roomsReader("PUT", `${C}/participants/carol/role`, as("bob"))).status).toBe(200)
      expect((await roomsReader("PUT", `${C}/participants/alice/role`, as("bob"))).body.rule).toBe(
        "admin-only",
      )
      expect((await roomsReader("PUT", `${C}/participants/alice/role`, as("dave"))).body.rule).toBe(
        "owner-only",
      )
      const absent = await roomsReader("DELETE", `${C}/participants/zed?asUser=bob`)
      expect([absent.status, absent.body]).toEqual([200, { users: [] }])
    })
  })
  it("answers a group created under a direct conversation's id the same whether its two users talk or not", async () => {
    // Alice and bob talk; alice and erin never did. (Before: 409 "already exists" for the first pair, 403
    // for the second — who talks to whom, to a key with no read scope, as any third user or as one of them.)
    expect((await admin("POST", "/v1/conversations/direct", { with: "bob", asUser: "alice" })).status).toBe(
      201,
    )
    for (const as of ["zed", "alice"]) {
      const answers = await distinct(["dm~alice~bob", "dm~alice~erin"], (id) =>
        rooms("POST", "/v1/conversations", { id, participants: [], asUser: as }),
      )
      expect(answers).toHaveLength(1)
      expect(answers[0]).toMatch(/^403 .*"rule":"creation-by-id"/)
    }
  })
  it("answers finding or creating a direct conversation the same whether the two users talked before", async () => {
    // Alice and bob talk (the test above); alice and fay never did. Before: 200 for the first, 201 for the second.
    const answers = await distinct(["bob", "fay"], (other) =>
      rooms("POST", "/v1/conversations/direct", { with: other, asUser: "alice" }),
    )
    expect(answers).toEqual(['200 {"id":"dm~alice~<id>","kind":"direct"}'])
    // A key that may read is told which it was.
    const told = await roomsReader("POST", "/v1/conversations/direct", { with: "gus", asUser: "alice" })
    expect(told.status).toBe(201)
  })
})
