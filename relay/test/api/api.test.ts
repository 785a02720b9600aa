import { readFileSync } from "node:fs"
import {
  getMessage,
  inboxDocumentName,
  Limits,
  listInbox,
  type MessageId,
  profileRecord,
  sendMessage,
  setProfile,
  type UserId,
} from "@parley/shared"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { DEFAULT_KEY_CACHE_MS } from "../../src/api/key-cache.js"
import { docUntil, stockProvider, synced } from "../helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { apiClient, createKey, freshDataDir, revokeKey } from "./helpers.js"

const ALL = [
  "conversations:read",
  "conversations:write",
  "messages:read",
  "messages:write",
  "events:read",
  "act-as-user",
]

describe("HTTP API against a relay process", () => {
  let relay: RelayProcess
  let dataDir: string
  let full: ReturnType<typeof apiClient>
  let writer: ReturnType<typeof apiClient>
  let reader: ReturnType<typeof apiClient>
  /** A key that manages rooms: it reads conversations, not messages. */
  let rooms: ReturnType<typeof apiClient>
  let fullKey: string
  const base = () => relay.httpUrl

  beforeAll(async () => {
    dataDir = freshDataDir()
    fullKey = await createKey(dataDir, "backend", ALL)
    full = apiClient(base, fullKey)
    writer = apiClient(
      base,
      await createKey(dataDir, "writer", [
        "conversations:read",
        "conversations:write",
        "messages:read",
        "messages:write",
      ]),
    )
    reader = apiClient(base, await createKey(dataDir, "reader", ["conversations:read", "messages:read"]))
    rooms = apiClient(base, await createKey(dataDir, "rooms", ["conversations:read"]))
    relay = await startRelayProcess({ dataDir })
  })
  afterAll(async () => {
    await stopRelayProcesses()
  })

  it("creates a group with its participants and roles, the key's service as owner", async () => {
    const created = await full("POST", "/v1/conversations", {
      id: "g~api-group",
      title: "Support",
      metadata: { ticket: 4711 },
      participants: [{ user: "alice" }, { user: "bob", role: "admin" }],
    })
    expect(created.status).toBe(201)
    expect(created.body).toMatchObject({
      id: "g~api-group",
      kind: "group",
      title: "Support",
      createdBy: "service.backend",
    })
    const roles = Object.fromEntries(
      (created.body.participants as { user: string; role: string }[]).map((p) => [p.user, p.role]),
    )
    expect(roles).toEqual({ "service.backend": "owner", alice: "member", bob: "admin" })
    const got = await reader("GET", "/v1/conversations/g~api-group")
    expect(got.status).toBe(200)
    expect(got.body).toMatchObject({ metadata: { ticket: 4711 }, markers: {}, lastSequence: 0 })
    expect(got.body.lastMessage).toBeUndefined()
    const again = await full("POST", "/v1/conversations", { id: "g~api-group", participants: [] })
    expect(again.status).toBe(409)
    expect(again.body.code).toBe("CONFLICT")
  })

  it("finds or creates a direct conversation: 201 the first time, 200 with the same one after", async () => {
    const first = await full("POST", "/v1/conversations/direct", { with: "bob", asUser: "alice" })
    expect(first.status).toBe(201)
    expect(first.body.id).toBe("dm~alice~bob")
    const second = await full("POST", "/v1/conversations/direct", { with: "alice", asUser: "bob" })
    expect(second.status).toBe(200)
    expect(second.body.id).toBe("dm~alice~bob")
    expect(second.body.createdBy).toBe("alice")
    const own = await full("POST", "/v1/conversations/direct", { with: "carol" })
    expect(own.body.id).toBe("dm~carol~service.backend")
  })

  it("reopens a deleted direct conversation, empty, for either user (also after both left it)", async () => {
    const sendAs = (user: string, body: string) =>
      full("POST", "/v1/conversations/dm~dora~eli/messages", { body, asUser: user })
    expect((await full("POST", "/v1/conversations/direct", { with: "eli", asUser: "dora" })).status).toBe(201)
    expect((await sendAs("dora", "Old-Api-Text")).status).toBe(201)
    expect((await full("DELETE", "/v1/conversations/dm~dora~eli?asUser=dora")).status).toBe(204)
    expect((await sendAs("eli", "refused")).body).toMatchObject({ rule: "conversation-deleted" })
    const reopened = await full("POST", "/v1/conversations/direct", { with: "dora", asUser: "eli" })
    expect(reopened.status).toBe(200)
    expect(reopened.body).toMatchObject({ id: "dm~dora~eli", reopenedBy: "eli" })
    expect(reopened.body.deletedAt).toBeUndefined()
    expect((await sendAs("eli", "New-Api-Text")).status).toBe(201)
    expect((await sendAs("dora", "Dora-Api-Reply")).status).toBe(201)
    const listed = await reader("GET", "/v1/conversations/dm~dora~eli/messages")
    expect(listed.body.messages.map((m: { body: string }) => m.body)).toEqual([
      "New-Api-Text",
      "Dora-Api-Reply",
    ])

    // Deleted again, and both left it: still the pair's to reopen.
    expect((await full("DELETE", "/v1/conversations/dm~dora~eli?asUser=eli")).status).toBe(204)
    for (const user of ["dora", "eli"])
      expect(
        (await full("DELETE", `/v1/conversations/dm~dora~eli/participants/${user}?asUser=${user}`)).status,
      ).toBe(200)
    const back = await full("POST", "/v1/conversations/direct", { with: "eli", asUser: "dora" })
    expect(back.status).toBe(200)
    expect(back.body.participants.map((p: { user: string }) => p.user).sort()).toEqual(["dora", "eli"])
    expect((await sendAs("eli", "After-Both-Left")).status).toBe(201)
    const again = await reader("GET", "/v1/conversations/dm~dora~eli/messages")
    expect(again.body.messages.map((m: { body: string }) => m.body)).toEqual(["After-Both-Left"])
  })

  it("renames, sets metadata, adds and removes participants, changes a role and deletes", async () => {
    expect((await full("POST", "/v1/conversations", { id: "g~api-admin", participants: [] })).status).toBe(
      201,
    )
    const renamed = await full("PATCH", "/v1/conversations/g~api-admin", {
      title: "Renamed",
      metadata: { a: 1 },
    })
    expect(renamed.body).toMatchObject({ title: "Renamed", metadata: { a: 1 } })
    // All or nothing: before, a refused metadata kept the title that came with it.
    const tooLarge = await full("PATCH", "/v1/conversations/g~api-admin", {
      title: "Half-Applied",
      metadata: { big: "x".repeat(5000) },
    })
    expect(tooLarge.status).toBe(422)
    // JavaScript's object internals as keys: before, 500 INTERNAL (Yjs threw mid-write), or a key dropped.
    for (const metadata of ['{"constructor":1}', '{"__proto__":{"x":1}}', '{"a":{"constructor":{}}}']) {
      const reserved = await full("PATCH", "/v1/conversations/g~api-admin", {
        title: "Half-Applied",
        metadata: JSON.parse(metadata),
      })
      expect([400, 422]).toContain(reserved.status)
      expect(reserved.body.detail).toMatch(
        /metadata key "constructor" is reserved|the key "__proto__" is not accepted/,
      )
    }
    const created = await full("POST", "/v1/conversations", {
      id: "g~api-reserved",
      participants: [],
      metadata: { constructor: 1 },
    })
    expect(created.status).toBe(422)
    expect((await full("GET", "/v1/conversations/g~api-reserved")).status).toBe(404)
    // Ids the shared rules refuse everywhere else: before, "..." became a conversation's owner here.
    for (const asUser of ["...", "__proto__"])
      expect(
        (await full("POST", "/v1/conversations", { id: "g~api-dots", participants: [], asUser })).status,
      ).toBe(400)
    expect((await full("GET", "/v1/conversations/g~api-admin")).body).toMatchObject({
      title: "Renamed",
      metadata: { a: 1 },
    })
    const added = await full("POST", "/v1/conversations/g~api-admin/participants", {
      users: ["dave", "erin"],
    })
    expect(added.body).toEqual({ users: ["dave", "erin"] })
    const role = await full("PUT", "/v1/conversations/g~api-admin/participants/dave/role", { role: "admin" })
    expect(role.body.participants.find((p: { user: string }) => p.user === "dave").role).toBe("admin")
    const removed = await full("DELETE", "/v1/conversations/g~api-admin/participants/erin")
    expect(removed.body).toEqual({ users: ["erin"] })
    const gone = await full("DELETE", "/v1/conversations/g~api-admin/participants/erin")
    expect(gone.body).toEqual({ users: [] })
    // dave, now an admin, may rename; as a plain member erin could not have.
    expect(
      (await full("PATCH", "/v1/conversations/g~api-admin", { title: "By dave", asUser: "dave" })).status,
    ).toBe(200)
    expect((await full("DELETE", "/v1/conversations/g~api-admin")).status).toBe(204)
    expect((await full("GET", "/v1/conversations/g~api-admin")).body.deletedAt).toEqual(expect.any(Number))
    expect((await full("GET", "/v1/conversations/g~never-made")).status).toBe(404)
  })

  it("sends messages with every field, lists them by sequence number, edits, reacts and deletes", async () => {
    await full("POST", "/v1/conversations", { id: "g~api-msgs", participants: [{ user: "alice" }] })
    const first = await full("POST", "/v1/conversations/g~api-msgs/messages", {
      body: "Your order shipped",
      type: "notice",
      priority: "emergency",
      metadata: { order: 17 },
      attachments: [{ url: "https://example.com/label.pdf", name: "label.pdf", mimeType: "application/pdf" }],
    })
    expect(first.status).toBe(201)
    // Nested past the shared bound (4 KB of brackets, under the byte limit): before, 201, and every purge
    // that later read its hook events overflowed the stack, stalling the hooks of every conversation.
    let deep: unknown = 1
    for (let i = 0; i < 2_000; i++) deep = [deep]
    const nested = await full("POST", "/v1/conversations/g~api-msgs/messages", {
      body: "deep",
      metadata: { a: deep },
    })
    expect(nested.status).toBe(422)
    expect(nested.body.detail).toMatch(/metadata nests objects and arrays at most 16 deep/)
    const deepTitle = await full("PATCH", "/v1/conversations/g~api-msgs", { metadata: { a: deep } })
    expect(deepTitle.status).toBe(422)
    expect(first.body).toMatchObject({
      author: "service.backend",
      type: "notice",
      priority: "emergency",
      metadata: { order: 17 },
      seq: 1,
    })
    for (let i = 2; i <= 5; i++) {
      const sent = await full("POST", "/v1/conversations/g~api-msgs/messages", {
        body: `m${i}`,
        asUser: "alice",
        ...(i === 3 ? { replyTo: first.body.id } : {}),
      })
      expect(sent.body.seq).toBe(i)
    }
    const after = await reader("GET", "/v1/conversations/g~api-msgs/messages?after=2&limit=2")
    expect(after.body.messages.map((m: { seq: number }) => m.seq)).toEqual([3, 4])
    expect(after.body.messages[0].replyTo).toBe(first.body.id)
    const before = await reader("GET", "/v1/conversations/g~api-msgs/messages?before=3")
    expect(before.body.messages.map((m: { seq: number }) => m.seq)).toEqual([1, 2])
    const latest = await reader("GET", "/v1/conversations/g~api-msgs/messages?limit=2")
    expect(latest.body).toMatchObject({ lastSequence: 5 })
    expect(latest.body.messages.map((m: { seq: number }) => m.seq)).toEqual([4, 5])
    const notices = await reader("GET", "/v1/conversations/g~api-msgs/messages?type=notice")
    expect(notices.body.messages.map((m: { seq: number }) => m.seq)).toEqual([1])

    const id = first.body.id as string
    const edited = await full("PATCH", `/v1/conversations/g~api-msgs/messages/${id}`, {
      body: "Shipped today",
    })
    expect(edited.body).toMatchObject({ body: "Shipped today", editedAt: expect.any(Number) })
    const reacted = await full("POST", `/v1/conversations/g~api-msgs/messages/${id}/reactions`, {
      emoji: "👍",
      asUser: "alice",
    })
    expect(reacted.body.reactions).toEqual({ "👍": ["alice"] })
    const unreacted = await full(
      "DELETE",
      `/v1/conversations/g~api-msgs/messages/${id}/reactions/${encodeURIComponent("👍")}?asUser=alice`,
    )
    expect(unreacted.body.reactions).toEqual({})
    expect((await full("DELETE", `/v1/conversations/g~api-msgs/messages/${id}`)).status).toBe(204)
    const listed = await reader("GET", "/v1/conversations/g~api-msgs/messages?after=0&limit=1")
    expect(listed.body.messages[0]).toMatchObject({
      id,
      type: "deleted",
      body: "",
      deleted: { by: "service.backend" },
    })
    expect((await full("DELETE", `/v1/conversations/g~api-msgs/messages/m_nonexistent`)).status).toBe(404)
  })

  it("writes through the one update path: a user's client receives it, and the user's inbox counts it", async () => {
    await full("POST", "/v1/conversations", {
      id: "g~api-sync",
      participants: [{ user: "alice" }, { user: "bob" }],
    })
    const doc = new Y.Doc()
    const provider = stockProvider(relay.url, "g~api-sync", await relay.token("alice"), doc)
    try {
      await synced(provider)
      const sent = await full("POST", "/v1/conversations/g~api-sync/messages", { body: "hello alice" })
      await docUntil(doc, () => getMessage(doc, sent.body.id as MessageId)?.body === "hello alice")
      const second = await full("POST", "/v1/conversations/g~api-sync/messages", { body: "and again" })
      // The inbox is kept by the relay shortly after each change.
      await expect
        .poll(async () => (await reader("GET", "/v1/users/alice/unread")).body.conversations["g~api-sync"], {
          timeout: 10_000,
        })
        .toBe(2)
      const page = await reader("GET", "/v1/users/alice/conversations?limit=1")
      expect(page.status).toBe(200)
      expect(page.body.conversations[0]).toMatchObject({
        conversationId: "g~api-sync",
        unread: 2,
        muted: false,
      })
      const delivered = await full("POST", "/v1/conversations/g~api-sync/delivered", { asUser: "alice" })
      expect(delivered.body).toEqual({
        user: "alice",
        readUpTo: 0,
        deliveredUpTo: second.body.seq,
        moved: true,
      })
      const read = await full("POST", "/v1/conversations/g~api-sync/read", {
        asUser: "alice",
        upTo: sent.body.id,
      })
      expect(read.body).toEqual({
        user: "alice",
        readUpTo: sent.body.seq,
        deliveredUpTo: second.body.seq,
        moved: true,
      })
      await docUntil(doc, () => doc.getMap("read").get("alice") === sent.body.seq)
      const again = await full("POST", "/v1/conversations/g~api-sync/read", { asUser: "alice", upTo: 1 })
      expect(again.body.moved).toBe(false)
      const latest = await full("POST", "/v1/conversations/g~api-sync/read", { asUser: "alice" })
      expect(latest.body).toMatchObject({ user: "alice", readUpTo: second.body.seq, moved: true })
      await expect
        .poll(async () => (await reader("GET", "/v1/users/alice/unread")).body.total, { timeout: 10_000 })
        .toBe(0)
      // The page's entries are the ones the user's own inbox document holds.
      const inbox = new Y.Doc()
      const own = stockProvider(
        relay.url,
        inboxDocumentName("alice" as never),
        await relay.token("alice"),
        inbox,
      )
      await synced(own)
      expect((await reader("GET", "/v1/users/alice/conversations")).body.total).toBe(listInbox(inbox).length)
      own.destroy()
    } finally {
      provider.destroy()
    }
  })

  it("shows the display names participants set, on messages, the conversation and inbox previews", async () => {
    await full("POST", "/v1/conversations", {
      id: "g~api-profiles",
      participants: [{ user: "alice" }, { user: "bob" }],
    })
    const doc = new Y.Doc()
    const provider = stockProvider(relay.url, "g~api-profiles", await relay.token("alice"), doc)
    try {
      await synced(provider)
      setProfile(
        doc,
        "alice" as UserId,
        profileRecord({ name: "Alice", picture: "https://example.com/a.png" }),
      )
      sendMessage(doc, "alice" as UserId, { body: "named" })
      await expect
        .poll(async () => (await reader("GET", "/v1/conversations/g~api-profiles/messages")).body.messages, {
          timeout: 10_000,
        })
        .toMatchObject([{ body: "named", authorName: "Alice", authorPicture: "https://example.com/a.png" }])
      const conversation = await reader("GET", "/v1/conversations/g~api-profiles")
      expect(conversation.body.profiles).toEqual([
        { user: "alice", name: "Alice", picture: "https://example.com/a.png", named: true },
      ])
      await expect
        .poll(
          async () =>
            (await reader("GET", "/v1/users/bob/conversations")).body.conversations.find(
              (c: { conversationId: string }) => c.conversationId === "g~api-profiles",
            )?.lastMessage,
          { timeout: 10_000 },
        )
        .toMatchObject({ author: "alice", authorName: "Alice", text: "named" })
    } finally {
      provider.destroy()
    }
  })

  it("pages a user's conversations newest first", async () => {
    for (const n of [1, 2, 3]) {
      await full("POST", "/v1/conversations", { id: `g~api-page-${n}`, participants: [{ user: "paula" }] })
      await full("POST", `/v1/conversations/g~api-page-${n}/messages`, { body: `p${n}` })
    }
    await expect
      .poll(async () => (await reader("GET", "/v1/users/paula/conversations")).body.total, {
        timeout: 10_000,
      })
      .toBe(3)
    const first = await reader("GET", "/v1/users/paula/conversations?limit=2")
    expect(first.body.conversations.map((c: { conversationId: string }) => c.conversationId)).toEqual([
      "g~api-page-3",
      "g~api-page-2",
    ])
    expect(first.body.nextOffset).toBe(2)
    const second = await reader(
      "GET",
      `/v1/users/paula/conversations?limit=2&offset=${first.body.nextOffset}`,
    )
    expect(second.body.conversations.map((c: { conversationId: string }) => c.conversationId)).toEqual([
      "g~api-page-1",
    ])
    expect(second.body.nextOffset).toBeUndefined()
  })

  it("refuses missing, malformed, unknown and wrong keys with one 401 problem", async () => {
    const [id] = fullKey.slice(3).split("_")
    for (const key of [
      undefined,
      "garbage",
      `pk_${"A".repeat(16)}_${"b".repeat(43)}`,
      `pk_${id}_${"b".repeat(43)}`,
    ]) {
      const answer = await apiClient(base, key)("GET", "/v1/conversations/g~api-group")
      expect(answer.status).toBe(401)
      expect(answer.contentType).toBe("application/problem+json")
      expect(answer.body).toMatchObject({
        type: "urn:parley:error:UNAUTHORIZED",
        status: 401,
        code: "UNAUTHORIZED",
      })
      expect(answer.headers.get("www-authenticate")).toContain("Bearer")
    }
  })

  it("holds each key to its scopes, and to the document rules as its participant", async () => {
    const denied = await reader("POST", "/v1/conversations", { participants: [] })
    expect(denied.status).toBe(403)
    expect(denied.body.detail).toContain("conversations:write")
    const notAsUser = await writer("POST", "/v1/conversations/g~api-group/messages", {
      body: "x",
      asUser: "alice",
    })
    expect(notAsUser.status).toBe(403)
    expect(notAsUser.body.detail).toContain("act-as-user")
    // The writer's service is no participant of the backend's group.
    const outsider = await writer("POST", "/v1/conversations/g~api-group/messages", { body: "x" })
    expect(outsider.status).toBe(403)
    expect(outsider.body.rule).toBe("participant-only")
    // Nor where its write would change nothing: a role set to the one it is (alice is a member) answered
    // the whole conversation, messages included, and removing a non-member told members apart.
    for (const [method, path, body] of [
      ["PUT", "/v1/conversations/g~api-group/participants/alice/role", { role: "member" }],
      ["DELETE", "/v1/conversations/g~api-group/participants/zed", undefined],
    ] as const) {
      const unchanged = await writer(method, path, body)
      expect(unchanged.status).toBe(403)
      expect(unchanged.body.rule).toBe("participant-only")
      expect(unchanged.body).not.toHaveProperty("participants")
    }
    // Acting as a user is acting under that user's rules.
    const bobs = await full("POST", "/v1/conversations/g~api-group/messages", {
      body: "bob's",
      asUser: "bob",
    })
    const notAuthor = await full("PATCH", `/v1/conversations/g~api-group/messages/${bobs.body.id}`, {
      body: "edited by alice",
      asUser: "alice",
    })
    expect(notAuthor.status).toBe(403)
    expect(notAuthor.body.rule).toBe("author-only")
    const memberRenames = await full("PATCH", "/v1/conversations/g~api-group", {
      title: "no",
      asUser: "alice",
    })
    expect(memberRenames.body.rule).toBe("admin-only")
    // A service participant is no user to act as.
    const asService = await full("POST", "/v1/conversations/g~api-group/messages", {
      body: "x",
      asUser: "service.writer",
    })
    expect(asService.status).toBe(400)
  })

  it("refuses a revoked key within the key cache's few seconds", async () => {
    const key = await createKey(dataDir, "short-lived", ["conversations:read"])
    const client = apiClient(base, key)
    expect((await client("GET", "/v1/conversations/g~api-group")).status).toBe(200)
    await revokeKey(dataDir, "short-lived")
    const revokedAt = Date.now()
    await expect
      .poll(async () => (await client("GET", "/v1/conversations/g~api-group")).status, {
        timeout: DEFAULT_KEY_CACHE_MS + 2000,
        interval: 100,
      })
      .toBe(401)
    expect(Date.now() - revokedAt).toBeLessThan(DEFAULT_KEY_CACHE_MS + 1000)
    // Neither key's secret ever reaches the relay's log.
    const log = relay.lines.join("\n")
    for (const k of [key, fullKey]) expect(log).not.toContain(k.slice(-43))
  })

  it("sends one message for concurrent retries with the same Idempotency-Key", async () => {
    await full("POST", "/v1/conversations", { id: "g~api-idem", participants: [] })
    const send = () =>
      full(
        "POST",
        "/v1/conversations/g~api-idem/messages",
        { body: "once", priority: "emergency" },
        {
          "idempotency-key": "order-17-shipped",
        },
      )
    const answers = await Promise.all(Array.from({ length: 20 }, send))
    expect(new Set(answers.map((a) => a.body.id)).size).toBe(1)
    expect(answers.filter((a) => a.status === 201)).toHaveLength(1)
    expect(answers.filter((a) => a.status === 200)).toHaveLength(19)
    const listed = await reader("GET", "/v1/conversations/g~api-idem/messages")
    expect(listed.body.messages.map((m: { body: string }) => m.body)).toEqual(["once"])

    const reused = await full(
      "POST",
      "/v1/conversations/g~api-idem/messages",
      { body: "other" },
      {
        "idempotency-key": "order-17-shipped",
      },
    )
    expect(reused.status).toBe(409)
    expect(reused.body.code).toBe("CONFLICT")
    // Keys are per API key: another backend's same key is another message.
    await full("POST", "/v1/conversations/g~api-idem/participants", { users: ["service.writer"] })
    const others = await writer(
      "POST",
      "/v1/conversations/g~api-idem/messages",
      { body: "once" },
      {
        "idempotency-key": "order-17-shipped",
      },
    )
    expect(others.status).toBe(201)
    expect(others.body.id).not.toBe(answers[0]!.body.id)
  })

  it("treats a client-chosen message id as the idempotency record too", async () => {
    await full("POST", "/v1/conversations", { id: "g~api-ids", participants: [] })
    const body = { id: "m_client_chosen_1", body: "hi", metadata: { k: "v" } }
    const answers = await Promise.all(
      [0, 1, 2].map(() => full("POST", "/v1/conversations/g~api-ids/messages", body)),
    )
    expect(answers.map((a) => a.status).sort()).toEqual([200, 200, 201])
    const changed = await full("POST", "/v1/conversations/g~api-ids/messages", { ...body, body: "changed" })
    expect(changed.status).toBe(409)
    const both = await full("POST", "/v1/conversations/g~api-ids/messages", body, { "idempotency-key": "k" })
    expect(both.status).toBe(400)
  })

  it("answers bad JSON, unknown fields, bad parameters and oversized bodies with problems", async () => {
    const badJson = await full("POST", "/v1/conversations/g~api-group/messages", "{not json")
    expect([badJson.status, badJson.contentType, badJson.body.code]).toEqual([
      400,
      "application/problem+json",
      "INVALID_ARGUMENT",
    ])
    const unknown = await full("POST", "/v1/conversations/g~api-group/messages", { body: "x", sneaky: true })
    expect(unknown.status).toBe(400)
    expect(unknown.body.detail).toContain("sneaky")
    const badId = await full("GET", "/v1/conversations/bad%20id")
    expect(badId.status).toBe(400)
    const badLimit = await reader("GET", "/v1/conversations/g~api-group/messages?limit=0")
    expect(badLimit.status).toBe(400)
    const unknownQuery = await reader("GET", "/v1/conversations/g~api-group/messages?limt=3")
    expect(unknownQuery.status).toBe(400)
    // Named as a query parameter (before: "(body): Unrecognized key"), and a repeated one by name (before:
    // "received NaN").
    expect(unknownQuery.body.detail).toMatch(/^\(query\): .*limt/)
    const twice = await reader("GET", "/v1/conversations/g~api-group/messages?limit=2&limit=3")
    expect([twice.status, twice.body.detail]).toEqual([400, "query limit: given more than once"])
    const unexpectedQuery = await reader("GET", "/v1/conversations/g~api-group?asUser=alice")
    expect(unexpectedQuery.status).toBe(400)
    const tooLong = await full("POST", "/v1/conversations/g~api-group/messages", { body: "x".repeat(16_001) })
    expect(tooLong.status).toBe(400)
    const metadata = await full("POST", "/v1/conversations/g~api-group/messages", {
      body: "x",
      metadata: { blob: "y".repeat(5000) },
    })
    expect([metadata.status, metadata.body.code]).toEqual([422, "INVALID_UPDATE"])
    // Nested as deep as a body's JSON values allow: refused the same way, not a 500; deeper, for its count.
    const nested = (depth: number) =>
      full(
        "POST",
        "/v1/conversations/g~api-group/messages",
        `{"body":"x","metadata":{"a":${"[".repeat(depth)}${"]".repeat(depth)}}}`,
      )
    const deep = await nested(9_990)
    expect([deep.status, deep.body.code]).toEqual([422, "INVALID_UPDATE"])
    const deeper = await nested(100_000)
    expect([deeper.status, deeper.body.code]).toEqual([400, "INVALID_ARGUMENT"])
    const huge = await full("POST", "/v1/conversations/g~api-group/messages", { body: "x".repeat(300_000) })
    expect([huge.status, huge.body.code]).toEqual([413, "TOO_LARGE"])
    const notJson = await full("POST", "/v1/conversations/g~api-group/messages", undefined, {
      "content-type": "text/plain",
    })
    expect([notJson.status, notJson.contentType]).toEqual([415, "application/problem+json"])
    // JSON in UTF-8 only: before, a Latin-1 "café" and bytes no character is made of were stored as U+FFFD.
    const raw = (bytes: Uint8Array<ArrayBuffer>, contentType: string) =>
      fetch(`${base()}/v1/conversations/g~api-group/messages`, {
        method: "POST",
        headers: { authorization: `Bearer ${fullKey}`, "content-type": contentType },
        body: bytes,
      })
    const latin1 = Uint8Array.from([...Buffer.from('{"body":"caf'), 0xe9, ...Buffer.from('"}')])
    expect((await raw(latin1, "application/json; charset=iso-8859-1")).status).toBe(415)
    expect((await raw(Buffer.from('{"body":"x"}'), "application/vnd.api+json")).status).toBe(415)
    const invalid = await raw(latin1, "application/json")
    expect(invalid.status).toBe(400)
    expect((await invalid.json()).detail).toMatch(/not UTF-8/)
    const utf8 = await raw(Buffer.from('{"body":"café"}'), "application/json; charset=UTF-8")
    expect(utf8.status).toBe(201)
    expect((await utf8.json()).body).toBe("café")
    const noRoute = await full("GET", "/v1/nothing-here")
    expect([noRoute.status, noRoute.contentType]).toEqual([404, "application/problem+json"])
    // The relay still serves.
    expect((await reader("GET", "/v1/conversations/g~api-group")).status).toBe(200)
  })

  it("gives a key that takes part in nothing one refusal on every write, whatever the conversation holds or whether it exists", async () => {
    // No read scope: what a conversation holds, or whether it exists, is none of this key's business.
    const outsider = apiClient(
      base,
      await createKey(dataDir, "outsider", ["conversations:write", "messages:write"]),
    )
    for (const id of ["g~oracle-empty", "g~oracle-busy", "g~oracle-gone"])
      await full("POST", "/v1/conversations", { id, participants: [{ user: "alice" }] })
    await full("POST", "/v1/conversations/g~oracle-busy/messages", {
      id: "m_oracle_secret",
      body: "x",
      priority: "sticky",
      asUser: "alice",
    })
    await full("POST", "/v1/conversations/g~oracle-busy/messages/m_oracle_secret/reactions", {
      emoji: "👍",
      asUser: "alice",
    })
    await full("DELETE", "/v1/conversations/g~oracle-gone")
    // Each distinct answer, with the first request that got it.
    const answers = new Map<string, string>()
    for (const id of ["g~oracle-empty", "g~oracle-busy", "g~oracle-gone", "g~oracle-never"])
      for (const message of ["m_oracle_secret", "m_oracle_unknown"]) {
        const c = `/v1/conversations/${id}`
        const m = `${c}/messages/${message}`
        const writes: [string, string, unknown?, Record<string, string>?][] = [
          ["PATCH", c, { title: "t" }],
          ["DELETE", c],
          ["POST", `${c}/participants`, { users: ["zed"] }],
          ["DELETE", `${c}/participants/alice`],
          ["PUT", `${c}/participants/alice/role`, { role: "member" }],
          ["POST", `${c}/messages`, { body: "x" }],
          ["POST", `${c}/messages`, { id: message, body: "x" }],
          ["POST", `${c}/messages`, { body: "x" }, { "idempotency-key": `oracle-${message}` }],
          ["PATCH", m, { body: "y" }],
          ["DELETE", m],
          ["DELETE", `${c}/pins/${message}`],
          ["POST", `${m}/reactions`, { emoji: "👍" }],
          ["DELETE", `${m}/reactions/${encodeURIComponent("👍")}`],
          ["POST", `${c}/read`, {}],
          ["POST", `${c}/read`, { upTo: message }],
          ["POST", `${c}/read`, { upTo: 1 }],
          ["POST", `${c}/delivered`, { upTo: message }],
        ]
        for (const [method, path, body, headers] of writes) {
          const answer = await outsider(method, path, body, headers)
          const seen = `${answer.status} ${answer.body?.rule} ${answer.body?.detail}`
          if (!answers.has(seen)) answers.set(seen, `${method} ${path} ${JSON.stringify(body ?? null)}`)
        }
      }
    expect([...answers.keys()]).toEqual([
      "403 participant-only only participants may change a conversation (the actor is not one of this one, or it does not exist)",
    ])
    // And none of them wrote anything.
    expect((await full("GET", "/v1/conversations/g~oracle-never")).status).toBe(404)
    const busy = await full("GET", "/v1/conversations/g~oracle-busy")
    expect([busy.body.title, busy.body.lastSequence, busy.body.deletedAt]).toEqual(["", 1, undefined])
  })

  it("refuses a string cut inside a character (a lone surrogate) in any field with 400, storing nothing", async () => {
    // A backend that cut a string at a length limit: it ends with half of the emoji.
    const cut = "Your code: 🔐1234".slice(0, 12)
    const c = "/v1/conversations/g~api-strings"
    expect((await full("POST", "/v1/conversations", { id: "g~api-strings", participants: [] })).status).toBe(
      201,
    )
    const whole = await full("POST", `${c}/messages`, { id: "m_strings_whole", body: "Your code: 🔐" })
    expect(whole.status).toBe(201)
    for (const [method, path, body, where] of [
      ["POST", `${c}/messages`, { body: cut }, "body"],
      ["POST", `${c}/messages`, { body: "x", type: cut }, "type"],
      ["POST", `${c}/messages`, { body: "x", metadata: { tags: ["ok", cut] } }, "metadata.tags.1"],
      ["POST", `${c}/messages`, { body: "x", metadata: { [cut]: 1 } }, "metadata."],
      [
        "POST",
        `${c}/messages`,
        { body: "x", attachments: [{ url: "https://example.com/a.png", name: cut }] },
        "attachments.0.name",
      ],
      ["PATCH", `${c}/messages/m_strings_whole`, { body: cut }, "body"],
      ["POST", `${c}/messages/m_strings_whole/reactions`, { emoji: "🔐".slice(0, 1) }, "emoji"],
      ["PATCH", c, { title: cut }, "title"],
      ["PATCH", c, { metadata: { note: cut } }, "metadata.note"],
      ["POST", "/v1/conversations", { title: cut, participants: [] }, "title"],
    ] as const) {
      const answer = await full(method, path, body)
      expect([answer.status, answer.body.code]).toEqual([400, "INVALID_ARGUMENT"])
      expect(answer.body.detail).toContain(where)
      expect(answer.body.detail).toContain("not well-formed")
    }
    const stored = await full("GET", `${c}/messages`)
    expect(
      stored.body.messages.map((m: { body: string; reactions: object }) => [m.body, m.reactions]),
    ).toEqual([["Your code: 🔐", {}]])
    const conversation = await full("GET", c)
    expect([conversation.body.title, conversation.body.metadata]).toEqual(["", {}])
  })

  it("refuses a string over its limit in UTF-16 code units with 400 naming the field, whatever its characters", async () => {
    const c = "/v1/conversations/g~api-lengths"
    expect((await full("POST", "/v1/conversations", { id: "g~api-lengths", participants: [] })).status).toBe(
      201,
    )
    // Before: 200 emoji (400 units) passed the schema, then came back 413 for a title, 422 for a body.
    const emoji = (n: number) => "😀".repeat(n)
    for (const [method, path, body, where] of [
      ["POST", "/v1/conversations", { title: emoji(Limits.titleLength), participants: [] }, "title"],
      ["PATCH", c, { title: emoji(Limits.titleLength) }, "title"],
      ["POST", `${c}/messages`, { body: emoji(Limits.bodyLength / 2 + 1) }, "body"],
      ["POST", `${c}/messages`, { body: "x".repeat(Limits.bodyLength + 1) }, "body"],
    ] as const) {
      const answer = await full(method, path, body)
      expect([answer.status, answer.body.code]).toEqual([400, "INVALID_ARGUMENT"])
      expect(answer.body.detail).toContain(where)
    }
    expect((await full("POST", `${c}/messages`, { body: emoji(Limits.bodyLength / 2) })).status).toBe(201)
  })

  it("lists and unpins sticky messages, flags unread emergencies in the inbox, sets the fleeting time", async () => {
    const created = await full("POST", "/v1/conversations", {
      id: "g~api-prio",
      participants: [{ user: "alice" }, { user: "carol" }],
    })
    expect(created.status).toBe(201)
    const sticky = await full("POST", "/v1/conversations/g~api-prio/messages", {
      body: "Pinned rules",
      priority: "sticky",
      asUser: "alice",
    })
    const alarm = await full("POST", "/v1/conversations/g~api-prio/messages", {
      body: "Server room flooding",
      priority: "emergency",
      asUser: "alice",
    })
    const pins = await reader("GET", "/v1/conversations/g~api-prio/pins")
    expect(pins.body.messages.map((m: { id: string }) => m.id)).toEqual([sticky.body.id])
    const refused = await full("DELETE", `/v1/conversations/g~api-prio/pins/${sticky.body.id}?asUser=carol`)
    expect(refused.status).toBe(403)
    expect(refused.body.rule).toBe("unpin-author-or-admin")
    const unpinned = await full("DELETE", `/v1/conversations/g~api-prio/pins/${sticky.body.id}?asUser=alice`)
    expect(unpinned.status).toBe(204)
    expect((await reader("GET", "/v1/conversations/g~api-prio/pins")).body.messages).toEqual([])

    const carolsEntry = async () =>
      (await reader("GET", "/v1/users/carol/conversations")).body.conversations.find(
        (c: { conversationId: string }) => c.conversationId === "g~api-prio",
      )
    await expect.poll(async () => (await carolsEntry())?.emergency).toEqual([alarm.body.id])
    await full("POST", "/v1/conversations/g~api-prio/read", { asUser: "carol" })
    await expect.poll(async () => (await carolsEntry())?.unread).toBe(0)
    expect((await carolsEntry()).emergency).toBeUndefined()

    // A key without messages:read reads no one's words: not the pins, not the last message, not previews.
    await full("POST", "/v1/conversations/g~api-prio/messages", {
      body: "Pinned again",
      priority: "sticky",
      asUser: "alice",
    })
    expect((await rooms("GET", "/v1/conversations/g~api-prio/pins")).status).toBe(403)
    const withLast = await reader("GET", "/v1/conversations/g~api-prio")
    expect(withLast.body.lastMessage.body).toBe("Pinned again")
    const withoutLast = await rooms("GET", "/v1/conversations/g~api-prio")
    expect(withoutLast.status).toBe(200)
    expect(withoutLast.body).not.toHaveProperty("lastMessage")
    expect(withoutLast.body.lastSequence).toBe(withLast.body.lastSequence)
    const listed = async (client: typeof rooms) =>
      (await client("GET", "/v1/users/carol/conversations")).body.conversations.find(
        (c: { conversationId: string }) => c.conversationId === "g~api-prio",
      )
    await expect.poll(async () => (await listed(reader))?.lastMessage?.text).toBe("Pinned again")
    const entry = await listed(rooms)
    expect(entry.unread).toBe(1)
    expect(entry).not.toHaveProperty("lastMessage")
    expect(JSON.stringify(entry)).not.toContain("Pinned again")

    const patched = await full("PATCH", "/v1/conversations/g~api-prio", { fleetingSeconds: 60 })
    expect(patched.body.fleetingSeconds).toBe(60)
    const member = await full("PATCH", "/v1/conversations/g~api-prio", {
      fleetingSeconds: 5,
      asUser: "carol",
    })
    expect(member.status).toBe(403)
  })

  it("serves the checked-in OpenAPI document", async () => {
    const served = await apiClient(base, undefined)("GET", "/v1/openapi.json")
    expect(served.status).toBe(200)
    expect(served.body).toEqual(
      JSON.parse(readFileSync(new URL("../../openapi.json", import.meta.url), "utf8")),
    )
  })
})

describe("idempotent sends across a relay SIGKILL", () => {
  afterAll(async () => {
    await stopRelayProcesses()
  })

  it("returns the first message to a retry after the relay was killed and restarted", async () => {
    const dataDir = freshDataDir()
    const key = await createKey(dataDir, "backend", ALL)
    let relay = await startRelayProcess({ dataDir })
    const api = apiClient(() => relay.httpUrl, key)
    await api("POST", "/v1/conversations", { id: "g~api-kill", participants: [{ user: "alice" }] })
    const first = await api(
      "POST",
      "/v1/conversations/g~api-kill/messages",
      { body: "exactly once" },
      {
        "idempotency-key": "k-1",
      },
    )
    expect(first.status).toBe(201)
    await relay.kill()
    relay = await startRelayProcess({ dataDir })
    const retry = await api(
      "POST",
      "/v1/conversations/g~api-kill/messages",
      { body: "exactly once" },
      {
        "idempotency-key": "k-1",
      },
    )
    expect(retry.status).toBe(200)
    expect(retry.body).toMatchObject({ id: first.body.id, seq: first.body.seq })

    // A send the relay is killed during: whether or not it was stored, the retry leaves one message.
    const racing = api(
      "POST",
      "/v1/conversations/g~api-kill/messages",
      { body: "in flight" },
      {
        "idempotency-key": "k-2",
      },
    ).catch(() => undefined)
    await new Promise((resolve) => setTimeout(resolve, 5))
    await relay.kill()
    await racing
    relay = await startRelayProcess({ dataDir })
    const after = await api(
      "POST",
      "/v1/conversations/g~api-kill/messages",
      { body: "in flight" },
      {
        "idempotency-key": "k-2",
      },
    )
    expect([200, 201]).toContain(after.status)
    const listed = await api("GET", "/v1/conversations/g~api-kill/messages")
    expect(listed.body.messages.map((m: { body: string }) => m.body)).toEqual(["exactly once", "in flight"])
  })
})
