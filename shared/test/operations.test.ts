import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import {
  addParticipants,
  assignSequenceNumbers,
  type ChangeEvent,
  type ConversationId,
  changeRole,
  checkStoredRecord,
  createConversation,
  decodeStoredRecord,
  deleteConversation,
  deleteMessage,
  directConversationId,
  ErrorCode,
  editMessage,
  encodeStoredRecord,
  getConversation,
  getMessage,
  type JsonValue,
  Limits,
  leaveConversation,
  listParticipants,
  type MessageId,
  type Metadata,
  markDelivered,
  markersOf,
  markRead,
  nextFromDocument,
  observeChanges,
  ParleyError,
  profileRecord,
  Rule,
  react,
  removeParticipants,
  renameConversation,
  reopenConversation,
  roleOf,
  SCHEMA_VERSION,
  sendMessage,
  setConversationMetadata,
  setProfile,
  typesOf,
  unreact,
  updateConversation,
} from "../src/index.js"
import { alice, bob, carol, dave, groupDoc, replicaOf, sync } from "./helpers.js"

const forbidden = (rule: string) => expect.objectContaining({ code: ErrorCode.FORBIDDEN, rule })

describe("conversations", () => {
  it("refuses titles and attachment names with control characters or bidirectional overrides", () => {
    const doc = groupDoc()
    // "invoice\u202Efdp.exe" shows as "invoiceexe.pdf".
    for (const title of ["Team\u202Egnp.exe", "line\nbreak", "nul\u0000"]) {
      expect(() => renameConversation(doc, alice, title)).toThrow(ParleyError)
      expect(() => updateConversation(doc, alice, { title })).toThrow(ParleyError)
    }
    expect(getConversation(doc)!.title).toBe("Team")
    const file = {
      kind: "file",
      id: "att_0123456789abcdefghjkmnpqrs",
      url: "/v1/attachments/att_0123456789abcdefghjkmnpqrs",
      name: "invoice\u202Efdp.exe",
      size: 1,
    }
    expect(() => sendMessage(doc, alice, { body: "see", attachments: [file as never] })).toThrow(ParleyError)
    expect(() =>
      sendMessage(doc, alice, { body: "see", attachments: [{ ...file, name: "invoice.pdf" } as never] }),
    ).not.toThrow()
  })

  it("creates a group conversation with the creator as owner and the others as members", () => {
    const doc = groupDoc()
    const info = getConversation(doc)!
    expect(info).toMatchObject({
      id: "g~test",
      kind: "group",
      title: "Team",
      createdBy: alice,
      schemaVersion: SCHEMA_VERSION,
    })
    expect(listParticipants(doc).map((p) => [p.user, p.role])).toEqual([
      ["alice", "owner"],
      ["bob", "member"],
      ["carol", "member"],
    ])
  })

  it("finds the same direct conversation whichever user creates it, even offline on both sides", () => {
    const onAlice = new Y.Doc()
    const onBob = new Y.Doc()
    const a = createConversation(onAlice, alice, { kind: "direct", participants: [bob] })
    const b = createConversation(onBob, bob, { kind: "direct", participants: [alice] })
    expect(a.id).toBe(directConversationId([alice, bob]))
    expect(b.id).toBe(a.id)
    expect(a.distinctKey).toBe(b.distinctKey)
    sync(onAlice, onBob)
    expect(getConversation(onAlice)?.id).toBe(a.id)
    expect(listParticipants(onAlice).map((p) => p.role)).toEqual(["owner", "owner"])
    expect(Y.encodeStateVector(onAlice)).toEqual(Y.encodeStateVector(onBob))
    // Creating it again is a no-op returning the existing conversation.
    expect(createConversation(onAlice, alice, { kind: "direct", participants: [bob] }).id).toBe(a.id)
  })

  it("refuses, before writing, a group under a direct conversation's id or any `dm~` id", () => {
    for (const id of [directConversationId([alice, bob]), `dm~${bob}~${alice}`, `dm~${alice}`, "dm~"]) {
      const doc = new Y.Doc()
      let error: unknown
      try {
        createConversation(doc, alice, { kind: "group", id: id as ConversationId, participants: [bob] })
      } catch (e) {
        error = e
      }
      expect(error, id).toEqual(forbidden(Rule.creationById))
      expect(typesOf(doc).meta.size).toBe(0)
    }
  })

  it("refuses to create a group over an existing conversation", () => {
    const doc = groupDoc()
    expect(() =>
      createConversation(doc, bob, { kind: "group", id: "g~test" as ConversationId, participants: [] }),
    ).toThrow(ParleyError)
  })

  it("lets owners and admins rename, set metadata and delete, and nobody else", () => {
    const doc = groupDoc()
    expect(() => renameConversation(doc, bob, "Mine")).toThrow(forbidden(Rule.adminOnly))
    expect(() => setConversationMetadata(doc, bob, { x: 1 })).toThrow(forbidden(Rule.adminOnly))
    expect(() => deleteConversation(doc, dave)).toThrow(forbidden(Rule.participantOnly))
    renameConversation(doc, alice, "Renamed")
    changeRole(doc, alice, bob, "admin")
    setConversationMetadata(doc, bob, { topic: "launch" })
    expect(getConversation(doc)).toMatchObject({ title: "Renamed", metadata: { topic: "launch" } })
    deleteConversation(doc, bob, { now: 5 })
    expect(getConversation(doc)).toMatchObject({ deletedAt: 5, deletedBy: bob })
  })

  it("reopens a deleted direct conversation for either of its two users, also one who left it, and for nobody else", () => {
    const direct = () => {
      const doc = new Y.Doc()
      createConversation(doc, alice, { kind: "direct", participants: [bob] }, { now: 1 })
      sendMessage(doc, alice, { body: "before" })
      return doc
    }
    // Not deleted: nothing to reopen.
    expect(() => reopenConversation(direct(), alice)).toThrow(forbidden(Rule.reopenDirect))
    for (const reopener of [alice, bob]) {
      const doc = direct()
      deleteConversation(doc, alice, { now: 5 })
      expect(() => sendMessage(doc, bob, { body: "x" })).toThrow(forbidden(Rule.conversationDeleted))
      // Both leave it (which takes it out of their inboxes): the pair can still talk again.
      leaveConversation(doc, alice)
      leaveConversation(doc, bob)
      expect(() => reopenConversation(doc, carol)).toThrow(forbidden(Rule.reopenDirect))
      const events: ChangeEvent[] = []
      observeChanges(doc, (list) => events.push(...list))
      reopenConversation(doc, reopener, { now: 9 })
      const info = getConversation(doc)!
      expect(info).toMatchObject({ reopenedAt: 9, reopenedBy: reopener })
      expect(info.deletedAt).toBeUndefined()
      expect(info.deletedBy).toBeUndefined()
      expect(listParticipants(doc).map((p) => [p.user, p.role, p.addedBy])).toEqual([
        [alice, "owner", reopener],
        [bob, "owner", reopener],
      ])
      expect(events.map((e) => e.type)).toEqual(["conversation.reopened", "participants.added"])
      expect(events[0]).toMatchObject({ reopenedBy: reopener })
      sendMessage(doc, bob, { body: "again" })
      // Deleted again and reopened again: each reopen records the latest.
      deleteConversation(doc, bob, { now: 10 })
      reopenConversation(doc, alice, { now: 11 })
      expect(getConversation(doc)).toMatchObject({ reopenedAt: 11, reopenedBy: alice })
    }
    // A group stays deleted for good: a new group gets a new id.
    const group = groupDoc()
    deleteConversation(group, alice)
    expect(() => reopenConversation(group, alice)).toThrow(forbidden(Rule.reopenDirect))
    expect(getConversation(group)!.deletedAt).toBeTypeOf("number")
  })

  it("refuses oversized titles and metadata", () => {
    const doc = groupDoc()
    expect(() => renameConversation(doc, alice, "x".repeat(201))).toThrow(
      expect.objectContaining({ code: "TOO_LARGE" }),
    )
    expect(() => setConversationMetadata(doc, alice, { big: "x".repeat(5000) })).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    )
    // Nested within Limits.metadataDepth (the object itself is the first level), and past it.
    const nested = (levels: number) => {
      let value: Metadata = { leaf: 1 }
      for (let i = 1; i < levels; i++) value = { a: value }
      return value
    }
    setConversationMetadata(doc, alice, nested(Limits.metadataDepth))
    expect(() => setConversationMetadata(doc, alice, nested(Limits.metadataDepth + 1))).toThrow(
      /metadata nests objects and arrays at most 16 deep/,
    )
    let deep: JsonValue = 1
    for (let i = 0; i < 100_000; i++) deep = [deep]
    expect(() => sendMessage(doc, alice, { body: "deep", metadata: { deep } })).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    )
  })
})

describe("values that are not JSON", () => {
  it("refuses them before writing anything, and leaves out keys given as undefined, as JSON does", () => {
    const doc = groupDoc()
    const before = Y.encodeStateVector(doc)
    const notJson: [string, unknown][] = [
      ["a function", () => 1],
      ["NaN", Number.NaN],
      ["Infinity", Number.POSITIVE_INFINITY],
      ["a symbol", Symbol("s")],
      ["a bigint", 1n],
      ["bytes", new Uint8Array([1])],
      ["a Map", new Map([["a", 1]])],
      ["a Date", new Date(0)],
      ["undefined in an array", [1, undefined]],
    ]
    for (const [what, value] of notJson) {
      const invalid = expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT })
      expect(() => setConversationMetadata(doc, alice, { z: value } as never), what).toThrow(invalid)
      expect(() => sendMessage(doc, alice, { body: "x", metadata: { z: value } as never }), what).toThrow(
        invalid,
      )
      expect(() => updateConversation(doc, alice, { metadata: { z: { y: value } } as never }), what).toThrow(
        invalid,
      )
      expect(
        () =>
          createConversation(new Y.Doc(), alice, {
            kind: "group",
            id: "g~j" as ConversationId,
            participants: [],
            metadata: { z: value } as never,
          }),
        what,
      ).toThrow(invalid)
    }
    expect(Y.encodeStateVector(doc)).toEqual(before)
    // Plain JavaScript's mistakes are typed errors too, not a TypeError from inside.
    const message = sendMessage(doc, alice, { body: "hi" })
    const typed = expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT })
    const before2 = Y.encodeStateVector(doc)
    expect(() => renameConversation(doc, alice, 123 as never)).toThrow(typed)
    expect(() => renameConversation(doc, alice, null as never)).toThrow(typed)
    expect(() => sendMessage(doc, alice, null as never)).toThrow(typed)
    expect(() => react(doc, alice, message.id, undefined as never)).toThrow(typed)
    expect(() => sendMessage(doc, alice, { body: "x", metadata: { b: 1n } as never })).toThrow(
      /metadata holds plain JSON only/,
    )
    expect(Y.encodeStateVector(doc)).toEqual(before2)
    // `{ title: maybeTitle }` with maybeTitle undefined: written without the key, which the relay accepts.
    const sent = sendMessage(doc, alice, {
      body: "see",
      attachments: [{ kind: "link", url: "https://example.com", title: undefined }],
      metadata: { replyTo: undefined, tags: [{ a: 1, b: undefined }] } as never,
    })
    const stored = typesOf(doc).messages.toArray().at(-1)
    expect(checkStoredRecord(stored)).toBeUndefined()
    expect(JSON.stringify(stored)).not.toContain("undefined")
    expect(sent.attachments).toEqual([{ kind: "link", url: "https://example.com" }])
    expect(sent.metadata).toEqual({ tags: [{ a: 1 }] })
    // What is checked is what is written: a getter that turns into a bigint after n reads is refused or
    // written as checked, whatever n (before: some n wrote the bigint, or threw a TypeError).
    for (let n = 1; n <= 8; n++) {
      let reads = 0
      const metadata = {
        get v() {
          return ++reads <= n ? 1 : (10n as never)
        },
      }
      try {
        const sly = sendMessage(doc, alice, { body: "sly", metadata })
        expect(JSON.stringify(sly.metadata)).toBe('{"v":1}')
      } catch (error) {
        expect(error).toMatchObject({ code: ErrorCode.INVALID_ARGUMENT })
      }
    }
    expect(() => sendMessage(doc, alice, { body: "x", attachments: new Map() as never })).toThrow(
      expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }),
    )
    setConversationMetadata(doc, alice, { topic: "x", gone: undefined } as never)
    expect(getConversation(doc)?.metadata).toEqual({ topic: "x" })
  })
})

describe("what the relay would refuse", () => {
  it("is refused before writing: a role, a marker or a fleeting time of the wrong kind", () => {
    const doc = groupDoc()
    sendMessage(doc, alice, { body: "hi" })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    const before = Y.encodeStateVector(doc)
    const invalid = expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT })
    expect(() => addParticipants(doc, alice, [dave], "god" as never)).toThrow(invalid)
    expect(() => addParticipants(doc, alice, [dave], Number.NaN as never)).toThrow(invalid)
    expect(() => changeRole(doc, alice, bob, "superuser" as never)).toThrow(invalid)
    expect(() => markRead(doc, alice, Number.NaN)).toThrow(invalid)
    expect(() => markRead(doc, alice, 1.5)).toThrow(invalid)
    expect(() => updateConversation(doc, alice, { fleetingSeconds: "10" as never })).toThrow(invalid)
    expect(Y.encodeStateVector(doc)).toEqual(before)
  })
})

describe("participants", () => {
  it("adds, removes and changes roles as owner and admin", () => {
    const doc = groupDoc()
    expect(addParticipants(doc, alice, [dave, bob])).toEqual([dave])
    changeRole(doc, alice, dave, "admin")
    expect(roleOf(doc, dave)).toBe("admin")
    expect(removeParticipants(doc, dave, [carol])).toEqual([carol])
    expect(roleOf(doc, carol)).toBeUndefined()
  })

  it("refuses members managing others, admins touching owners, and changes in direct conversations", () => {
    const doc = groupDoc()
    expect(() => addParticipants(doc, bob, [dave])).toThrow(forbidden(Rule.adminOnly))
    expect(() => removeParticipants(doc, bob, [carol])).toThrow(forbidden(Rule.adminOnly))
    expect(() => changeRole(doc, bob, bob, "admin")).toThrow(forbidden(Rule.adminOnly))
    changeRole(doc, alice, bob, "admin")
    expect(() => changeRole(doc, bob, carol, "owner")).toThrow(forbidden(Rule.ownerOnly))
    expect(() => removeParticipants(doc, bob, [alice])).toThrow(forbidden(Rule.ownerOnly))
    expect(() => addParticipants(doc, bob, [dave], "owner")).toThrow(forbidden(Rule.ownerOnly))
    const direct = new Y.Doc()
    createConversation(direct, alice, { kind: "direct", participants: [bob] })
    expect(() => addParticipants(direct, alice, [carol])).toThrow(forbidden(Rule.directIsFixed))
    expect(() => removeParticipants(direct, alice, [bob])).toThrow(forbidden(Rule.directIsFixed))
  })

  it("lets anyone leave", () => {
    const doc = groupDoc()
    leaveConversation(doc, carol)
    expect(listParticipants(doc).map((p) => p.user)).toEqual([alice, bob])
  })

  it("keeps a group's last owner until another participant is made an owner", () => {
    const doc = groupDoc()
    expect(() => leaveConversation(doc, alice)).toThrow(forbidden(Rule.lastOwner))
    expect(() => changeRole(doc, alice, alice, "admin")).toThrow(forbidden(Rule.lastOwner))
    expect(roleOf(doc, alice)).toBe("owner")
    changeRole(doc, alice, bob, "owner")
    leaveConversation(doc, alice)
    expect(roleOf(doc, alice)).toBeUndefined()
    // The last participant may leave: nobody is left without an owner.
    removeParticipants(doc, bob, [carol])
    leaveConversation(doc, bob)
    expect(listParticipants(doc)).toEqual([])
    // Once deleted, everyone may leave it (it only goes from their inbox).
    const deleted = groupDoc()
    deleteConversation(deleted, alice)
    leaveConversation(deleted, alice)
    expect(roleOf(deleted, alice)).toBeUndefined()
  })
})

describe("messages", () => {
  it("sends a message with attachments, reply-to, metadata and priority", () => {
    const doc = groupDoc()
    const first = sendMessage(doc, alice, { body: "hello" }, { now: 10 })
    const second = sendMessage(doc, bob, {
      body: "look",
      replyTo: first.id,
      type: "image",
      priority: "sticky",
      metadata: { mood: "happy" },
      attachments: [
        {
          url: "https://cdn.example/1.png",
          name: "1.png",
          mimeType: "image/png",
          size: 10,
          width: 2,
          height: 3,
        },
      ],
    })
    expect(first).toMatchObject({
      author: alice,
      body: "hello",
      type: "text",
      priority: "normal",
      createdAt: 10,
    })
    expect(getMessage(doc, second.id)).toMatchObject({
      replyTo: first.id,
      type: "image",
      priority: "sticky",
      metadata: { mood: "happy" },
      attachments: [expect.objectContaining({ name: "1.png", width: 2 })],
    })
  })

  it("is idempotent by client-generated id", () => {
    const doc = groupDoc()
    const id = "msg-0000000001" as MessageId
    sendMessage(doc, alice, { id, body: "once" })
    sendMessage(doc, alice, { id, body: "twice?" })
    expect(typesOf(doc).messages.length).toBe(1)
    expect(getMessage(doc, id)?.body).toBe("once")
  })

  it("refuses non-participants, oversized bodies and malformed attachments", () => {
    const doc = groupDoc()
    expect(() => sendMessage(doc, dave, { body: "hi" })).toThrow(forbidden(Rule.participantOnly))
    expect(() => sendMessage(doc, alice, { body: "x".repeat(16_001) })).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    )
    expect(() => sendMessage(doc, alice, { body: "x", attachments: [{ url: "" }] })).toThrow(ParleyError)
  })

  it("lets only the author edit", () => {
    const doc = groupDoc()
    const m = sendMessage(doc, bob, { body: "typo" })
    expect(() => editMessage(doc, alice, m.id, "hijack")).toThrow(forbidden(Rule.authorOnly))
    editMessage(doc, bob, m.id, "fixed", { now: 42 })
    expect(getMessage(doc, m.id)).toMatchObject({ body: "fixed", editedAt: 42 })
  })

  it("deletes for real: the placeholder stays, the content is gone from the document", () => {
    const doc = groupDoc()
    const m = sendMessage(doc, bob, { body: "secret plans", metadata: { key: "hidden-value" } })
    editMessage(doc, bob, m.id, "edited secret")
    react(doc, carol, m.id, "👍")
    const other = sendMessage(doc, carol, { body: "still here" })
    expect(() => deleteMessage(doc, carol, m.id)).toThrow(forbidden(Rule.authorOrAdmin))
    deleteMessage(doc, bob, m.id, { now: 99 })
    expect(getMessage(doc, m.id)).toMatchObject({
      body: "",
      type: "deleted",
      deleted: { at: 99, by: bob },
      reactions: {},
    })
    expect(getMessage(doc, other.id)?.body).toBe("still here")
    const encoded = Buffer.from(Y.encodeStateAsUpdate(doc)).toString("latin1")
    expect(encoded).not.toContain("secret")
    expect(encoded).not.toContain("hidden-value")
    // The replica that receives the deletion also holds no content.
    const replica = replicaOf(doc)
    expect(getMessage(replica, m.id)?.deleted).toEqual({ at: 99, by: bob })
    deleteMessage(doc, bob, m.id) // twice is a no-op
  })

  it("stores records with one-letter field names and reads them back whole", () => {
    const doc = groupDoc()
    const plain = sendMessage(doc, alice, { body: "hello" }, { now: 10 })
    const full = sendMessage(doc, bob, {
      body: "see",
      type: "image",
      replyTo: plain.id,
      priority: "emergency",
      metadata: { k: 1 },
      attachments: [{ url: "https://cdn.example/a.png" }],
    })
    deleteMessage(doc, alice, plain.id, { now: 20 })
    const stored = typesOf(doc).messages.toArray()
    expect(stored).toContainEqual({
      i: full.id,
      a: bob,
      b: "see",
      t: full.createdAt,
      y: "image",
      r: plain.id,
      p: "emergency",
      m: { k: 1 },
      f: [{ url: "https://cdn.example/a.png" }],
    })
    expect(stored).toContainEqual({ i: plain.id, a: alice, t: 10, x: 20, d: alice })
    for (const value of stored) {
      expect(checkStoredRecord(value)).toBeUndefined()
      expect(encodeStoredRecord(decodeStoredRecord(value)!)).toEqual(value)
    }
    // Full field names are schema version 1: read, never written.
    expect(checkStoredRecord({ id: full.id, author: bob, body: "x", createdAt: 1 })).toMatch(/unknown field/)
  })

  it("reads, edits and deletes messages a schema version 1 writer stored with full field names", () => {
    const doc = groupDoc()
    const v1 = { id: "version1msg01" as MessageId, author: bob, body: "from before", createdAt: 5 }
    typesOf(doc).messages.push([v1])
    const v2 = sendMessage(doc, carol, { body: "after" })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    expect(getMessage(doc, v1.id)).toMatchObject({ author: bob, body: "from before", seq: 1 })
    editMessage(doc, bob, v1.id, "edited")
    expect(getMessage(doc, v1.id)?.body).toBe("edited")
    deleteMessage(doc, bob, v1.id, { now: 7 })
    expect(getMessage(doc, v1.id)?.deleted).toEqual({ at: 7, by: bob })
    expect(getMessage(doc, v2.id)?.body).toBe("after")
    expect(Buffer.from(Y.encodeStateAsUpdate(doc)).toString("latin1")).not.toContain("from before")
  })

  it("lets an admin delete someone else's message", () => {
    const doc = groupDoc()
    const m = sendMessage(doc, bob, { body: "spam" })
    deleteMessage(doc, alice, m.id)
    expect(getMessage(doc, m.id)?.deleted?.by).toBe(alice)
  })

  it("adds and removes reactions only as oneself", () => {
    const doc = groupDoc()
    const m = sendMessage(doc, alice, { body: "vote" })
    react(doc, bob, m.id, "👍")
    react(doc, carol, m.id, "👍")
    react(doc, carol, m.id, "🎉")
    expect(getMessage(doc, m.id)?.reactions).toEqual({ "👍": [bob, carol], "🎉": [carol] })
    unreact(doc, carol, m.id, "👍")
    expect(getMessage(doc, m.id)?.reactions).toEqual({ "👍": [bob], "🎉": [carol] })
    expect(() => react(doc, dave, m.id, "👍")).toThrow(forbidden(Rule.participantOnly))
    expect(() => react(doc, bob, m.id, "")).toThrow(ParleyError)
  })
})

describe("markers", () => {
  it("moves read and delivered markers forward only, read implying delivered", () => {
    const doc = groupDoc()
    const ids = [1, 2, 3].map((i) => sendMessage(doc, alice, { body: `m${i}` }).id)
    assignSequenceNumbers(doc, nextFromDocument(doc))
    expect(markDelivered(doc, bob, ids[1])).toBe(true)
    expect(markersOf(doc, bob)).toEqual({ read: 0, delivered: 2 })
    expect(markRead(doc, bob, ids[0])).toBe(true)
    expect(markersOf(doc, bob)).toEqual({ read: 1, delivered: 2 })
    expect(markRead(doc, bob, 1)).toBe(false) // not backwards, not even equal
    expect(markRead(doc, bob)).toBe(true)
    expect(markersOf(doc, bob)).toEqual({ read: 3, delivered: 3 })
    expect(() => markRead(doc, dave)).toThrow(forbidden(Rule.participantOnly))
  })

  it("refuses a message id it does not hold as react and edit do, rather than marking every message read", () => {
    const doc = groupDoc()
    sendMessage(doc, alice, { body: "m" })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    for (const mark of [markRead, markDelivered]) {
      // Well formed but unknown here: NOT_FOUND; not an id at all: INVALID_ARGUMENT.
      expect(() => mark(doc, bob, "unknown-message-id" as MessageId)).toThrow(
        expect.objectContaining({ code: ErrorCode.NOT_FOUND }),
      )
      expect(() => mark(doc, bob, "no such id" as MessageId)).toThrow(
        expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT }),
      )
    }
    expect(markersOf(doc, bob)).toEqual({ read: 0, delivered: 0 })
  })

  it("never moves past the last sequenced message", () => {
    const doc = groupDoc()
    sendMessage(doc, alice, { body: "m" })
    assignSequenceNumbers(doc, nextFromDocument(doc))
    markRead(doc, bob, 1000)
    expect(markersOf(doc, bob).read).toBe(1)
  })
})

describe("strings cut inside a character", () => {
  // "\uD83D" is the first half of an emoji: Yjs would keep it in the writer's memory but store and
  // sync U+FFFD, so the writer would show a message nobody else sees.
  const cut = "see you \uD83D"
  const invalid = expect.objectContaining({ code: ErrorCode.INVALID_ARGUMENT })

  it("are refused by every write of text, before anything is written, and whole characters pass", () => {
    const doc = groupDoc()
    const before = Y.encodeStateVector(doc)
    expect(() => sendMessage(doc, alice, { body: cut })).toThrow(invalid)
    expect(() => sendMessage(doc, alice, { body: "ok", metadata: { tags: ["a", cut] } })).toThrow(
      /metadata\.tags\.1: not well-formed UTF-16/,
    )
    expect(() => sendMessage(doc, alice, { body: "ok", metadata: { [cut]: 1 } })).toThrow(invalid)
    const sent = sendMessage(doc, alice, { body: "see you \u{1F600}" })
    const afterSend = Y.encodeStateVector(doc)
    expect(() => editMessage(doc, alice, sent.id, cut)).toThrow(invalid)
    expect(() => renameConversation(doc, alice, cut)).toThrow(/title: not well-formed/)
    expect(() => setConversationMetadata(doc, alice, { note: cut })).toThrow(invalid)
    expect(() => react(doc, bob, sent.id, "\uDE00")).toThrow(/reaction: not well-formed/)
    expect(() =>
      createConversation(new Y.Doc(), alice, {
        kind: "group",
        id: "g~x" as ConversationId,
        participants: [],
        title: cut,
      }),
    ).toThrow(invalid)
    expect(() => setProfile(doc, bob, profileRecord({ name: cut }))).toThrow(/profile: name: not well-formed/)
    expect(Y.encodeStateVector(doc)).toEqual(afterSend)
    expect(afterSend).not.toEqual(before)
    expect(getMessage(doc, sent.id)?.body).toBe("see you \u{1F600}")
  })
})
