import {
  type ConversationId,
  createConversation,
  directConversationId,
  directDistinctKey,
  directUsersOf,
  ErrorCode,
  listMessages,
  MessageType,
  MetaKey,
  newConversationId,
  type Role,
  Rule,
  readParleyFrame,
  removeParticipants,
  SCHEMA_VERSION,
  sendMessage,
  typesOf,
  type UserId,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import * as awarenessProtocol from "y-protocols/awareness"
import * as Y from "yjs"
import { stockProvider, synced, TestClient } from "./helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const clients: TestClient[] = []
const cleanups: (() => void)[] = []
let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelayProcess()
})
afterAll(() => stopRelayProcesses())
afterEach(() => {
  for (const c of clients.splice(0)) c.close()
  for (const cleanup of cleanups.splice(0)) cleanup()
})

let unique = 0
/** Fresh user names per test: the relay is shared. */
const users = () => {
  unique++
  return {
    alice: `alice${unique}` as UserId,
    bob: `bob${unique}` as UserId,
    mallory: `mallory${unique}` as UserId,
  }
}

async function connect(on: RelayProcess, name: string, user: string, parley = true): Promise<TestClient> {
  const c = new TestClient(on.url, name, await on.token(user), { parley })
  clients.push(c)
  await c.opened
  return c
}

/** A creation of any shape, written straight into `doc` as a hostile client would (no shared checks). */
function forgeCreation(
  doc: Y.Doc,
  actor: UserId,
  claim: { id: string; kind: string; participants: [UserId, Role][]; distinctKey?: string },
) {
  const t = typesOf(doc)
  doc.transact(() => {
    t.meta.set(MetaKey.schemaVersion, SCHEMA_VERSION)
    t.meta.set(MetaKey.id, claim.id)
    t.meta.set(MetaKey.kind, claim.kind)
    t.meta.set(MetaKey.title, "")
    t.meta.set(MetaKey.createdBy, actor)
    t.meta.set(MetaKey.metadata, {})
    if (claim.distinctKey !== undefined) t.meta.set(MetaKey.distinctKey, claim.distinctKey)
    for (const [user, role] of claim.participants)
      t.participants.set(user, { role, addedBy: actor, addedAt: Date.now() })
    t.meta.set(MetaKey.createdAt, Date.now())
  })
}

/** Publishes `state` as the client's awareness. */
function publishAwareness(client: TestClient, state: Record<string, unknown>) {
  client.awareness.setLocalState(state)
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.awareness)
  encoding.writeVarUint8Array(
    encoder,
    awarenessProtocol.encodeAwarenessUpdate(client.awareness, [client.doc.clientID]),
  )
  client.send(encoding.toUint8Array(encoder))
}

const EMPTY_STATE_VECTOR = Y.encodeStateVector(new Y.Doc())
const EMPTY_UPDATE = Y.encodeStateAsUpdate(new Y.Doc())
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b))

/**
 * What a frame is, in words: for a client whose access is not known (or
 * refused), every frame must be one that holds nothing of the document.
 */
function describeFrame(frame: Uint8Array): string {
  const decoder = decoding.createDecoder(frame)
  const type = decoding.readVarUint(decoder)
  if (type === MessageType.sync) {
    const step = decoding.readVarUint(decoder)
    const body = decoding.readVarUint8Array(decoder)
    if (step === 0 && same(body, EMPTY_STATE_VECTOR)) return "sync step 1, empty"
    if (step === 1 && same(body, EMPTY_UPDATE)) return "sync step 2, empty"
    return `sync ${step} with content`
  }
  if (type === MessageType.auth) return "permission denied"
  if (type === MessageType.awareness && same(decoding.readVarUint8Array(decoder), Uint8Array.of(0)))
    return "keepalive"
  if (type === MessageType.parley) {
    const parley = readParleyFrame(decoder)
    if (parley?.type === "error") return `error ${parley.error.rule}`
    if (parley?.type === "saved")
      return `saved ${JSON.stringify([...Y.decodeStateVector(parley.stateVector)])}`
  }
  return `message type ${type}`
}

/** Asserts that `client` was sent nothing derived from the document and no byte of `secrets`. */
function expectNothingOfTheDocument(client: TestClient, secrets: string[], ownRefusals: string[] = []) {
  const allowed = new Set([
    "sync step 1, empty",
    "sync step 2, empty",
    "keepalive",
    "saved []",
    ...ownRefusals.map((rule) => `error ${rule}`),
  ])
  for (const frame of client.frames) {
    expect(allowed).toContain(describeFrame(frame))
    for (const secret of secrets) expect(Buffer.from(frame).includes(Buffer.from(secret))).toBe(false)
  }
}

/** Alice creates `id` (a group with bob, or their direct conversation) with a secret title and message. */
async function createWithSecrets(owner: TestClient, actor: UserId, other: UserId, id: ConversationId) {
  const secrets = [`title-${id}`, `body-${id}`]
  const direct = id.startsWith("dm~")
  owner.doc.transact(() => {
    createConversation(
      owner.doc,
      actor,
      direct ? { kind: "direct", participants: [other] } : { kind: "group", id, participants: [other] },
    )
    typesOf(owner.doc).meta.set(MetaKey.title, secrets[0]!)
    sendMessage(owner.doc, actor, { body: secrets[1]! })
  })
  await owner.allSaved()
  return secrets
}

describe("the id decides who may create a conversation", () => {
  it("refuses a third user on a direct conversation's id at connect, alike before and after the pair creates it", async () => {
    const { alice, bob, mallory } = users()
    const id = directConversationId([alice, bob])
    // Before: no pending socket to squat from, nor to watch for the pair to start talking.
    const refusals: string[] = []
    for (const parley of [false, true]) {
      const squatter = await connect(relay, id, mallory, parley)
      const close = await squatter.closed
      refusals.push(`${close.code} ${close.reason}`)
      expect(squatter.frames).toEqual([])
    }
    const stockDoc = new Y.Doc()
    const stock = stockProvider(relay.url, id, await relay.token(mallory), stockDoc)
    cleanups.push(() => stock.destroy())
    const stockClose = await new Promise<number | undefined>((resolve) =>
      stock.on("connection-close", (event: CloseEvent | null) => resolve(event?.code)),
    )
    expect(stockClose).toBe(4403)

    const owner = await connect(relay, id, alice)
    await owner.synced()
    const secrets = await createWithSecrets(owner, alice, bob, id)
    // After: refused with the same close, so that nothing tells an existing pair from a missing one.
    for (const parley of [false, true]) {
      const stranger = await connect(relay, id, mallory, parley)
      const close = await stranger.closed
      expect(`${close.code} ${close.reason}`).toBe(refusals[Number(parley)])
      expectNothingOfTheDocument(stranger, secrets)
    }
    expect(refusals[0]).toMatch(/^4403 /)

    const other = await connect(relay, id, bob)
    await other.until(() => listMessages(other.doc, { last: 5 }).length === 1)
    expect(typesOf(other.doc).meta.get(MetaKey.kind)).toBe("direct")
    expect([...typesOf(other.doc).participants.keys()].sort()).toEqual([alice, bob].sort())
  })

  it("refuses every other shape of creation under a direct id, and `dm~` ids that are not two users'", async () => {
    const { alice, bob, mallory } = users()
    const id = directConversationId([alice, bob])
    const key = directDistinctKey([alice, bob])
    const attempts: [UserId, string, Parameters<typeof forgeCreation>[2]][] = [
      // A third user creating the pair's conversation, without and with themselves.
      [
        mallory,
        id,
        {
          id,
          kind: "direct",
          distinctKey: key,
          participants: [
            [alice, "owner"],
            [bob, "owner"],
          ],
        },
      ],
      [
        mallory,
        id,
        {
          id,
          kind: "direct",
          distinctKey: key,
          participants: [
            [alice, "owner"],
            [bob, "owner"],
            [mallory, "owner"],
          ],
        },
      ],
      // One of the pair, with an extra or a missing participant, or another distinct key.
      [
        alice,
        id,
        {
          id,
          kind: "direct",
          distinctKey: key,
          participants: [
            [alice, "owner"],
            [bob, "owner"],
            [mallory, "owner"],
          ],
        },
      ],
      [alice, id, { id, kind: "direct", distinctKey: key, participants: [[alice, "owner"]] }],
      [
        alice,
        id,
        {
          id,
          kind: "direct",
          distinctKey: "elsewhere",
          participants: [
            [alice, "owner"],
            [bob, "owner"],
          ],
        },
      ],
      // `dm~` ids that are not the canonical id of two users, even as a group (refused at connect).
      [
        alice,
        `dm~${bob}~${alice}`,
        { id: `dm~${bob}~${alice}`, kind: "group", participants: [[alice, "owner"]] },
      ],
      [alice, `dm~${alice}`, { id: `dm~${alice}`, kind: "group", participants: [[alice, "owner"]] }],
      // A direct conversation under any other id.
      [
        alice,
        `g~direct${unique}`,
        {
          id: `g~direct${unique}`,
          kind: "direct",
          distinctKey: key,
          participants: [
            [alice, "owner"],
            [bob, "owner"],
          ],
        },
      ],
    ]
    for (const [actor, name, claim] of attempts) {
      const c = await connect(relay, name, actor)
      if (name.startsWith("dm~") && !directUsersOf(name)?.includes(actor)) {
        // Not one of the pair (or no pair's canonical id): refused before the document is even loaded.
        expect((await c.closed).code).toBe(4403)
        expect(c.frames).toEqual([])
        continue
      }
      await c.synced()
      forgeCreation(c.doc, actor, claim)
      await c.until(() => c.errors.length > 0)
      expect(c.errors[0], JSON.stringify(claim)).toMatchObject({
        code: ErrorCode.FORBIDDEN,
        rule: Rule.creationById,
      })
      c.close()
    }
    // Nothing was stored: the pair creates their conversation, with exactly the two of them.
    const owner = await connect(relay, id, bob)
    await owner.synced()
    expect(typesOf(owner.doc).meta.size).toBe(0)
    await createWithSecrets(owner, bob, alice, id)
    const other = await connect(relay, id, alice)
    await other.until(() => listMessages(other.doc, { last: 5 }).length === 1)
    expect([...typesOf(other.doc).participants.entries()].sort()).toEqual(
      [...typesOf(owner.doc).participants.entries()].sort(),
    )
    expect(typesOf(other.doc).participants.size).toBe(2)
  })

  it("creates a group id only as a group its creator owns", async () => {
    const { alice, bob } = users()
    const id = newConversationId()
    const c = await connect(relay, id, alice)
    await c.synced()
    forgeCreation(c.doc, alice, {
      id,
      kind: "group",
      participants: [
        [alice, "member"],
        [bob, "owner"],
      ],
    })
    await c.until(() => c.errors.length > 0)
    expect(c.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.creatorIsOwner })
  })
})

describe("nobody reads before access is known", () => {
  it("sends a stranger connected before the creation nothing of it, then closes it with 4403", async () => {
    const { alice, bob, mallory } = users()
    // A group's id: a direct one refuses anyone but the pair at connect (the test above).
    for (const id of [newConversationId()]) {
      // A raw client without and with Parley's frames, and a stock y-websocket provider.
      const raw = await connect(relay, id, mallory, false)
      const parley = await connect(relay, id, mallory)
      const stockDoc = new Y.Doc()
      const stock = stockProvider(relay.url, id, await relay.token(mallory), stockDoc)
      let stockClose: number | undefined
      stock.on("connection-close", (event: CloseEvent | null) => {
        stockClose ??= event?.code
      })
      cleanups.push(() => stock.destroy())
      await Promise.all([raw.synced(), parley.synced(), synced(stock)])
      // A participant waiting too, and the owner, who publishes presence before and after creating.
      const member = await connect(relay, id, bob)
      const owner = await connect(relay, id, alice)
      await Promise.all([member.synced(), owner.synced()])
      publishAwareness(owner, { user: alice, status: `presence-before-${id}` })
      const secrets = await createWithSecrets(owner, alice, bob, id)
      publishAwareness(owner, { user: alice, status: `presence-after-${id}` })
      secrets.push(`presence-before-${id}`, `presence-after-${id}`)

      expect((await raw.closed).code).toBe(4403)
      expect((await parley.closed).code).toBe(4403)
      expectNothingOfTheDocument(raw, secrets)
      expectNothingOfTheDocument(parley, secrets)
      await new Promise<void>((resolve) => {
        if (stockClose !== undefined) resolve()
        else stock.on("connection-close", () => resolve())
      })
      expect(stockClose).toBe(4403)
      expect(typesOf(stockDoc).meta.size).toBe(0)
      expect([...stock.awareness.getStates().keys()]).toEqual([stockDoc.clientID])

      // The participant waiting with them was let in: the conversation and the later presence reach them.
      await member.until(() => listMessages(member.doc, { last: 5 }).some((m) => m.body === secrets[1]))
      await member.until(() =>
        [...member.awareness.getStates().values()].some((s) => s.status === `presence-after-${id}`),
      )
      expect(member.closeEvent).toBeUndefined()
    }
  })

  it("refuses a stranger connecting after the creation with 4403, sending nothing of it", async () => {
    const { alice, bob, mallory } = users()
    const id = newConversationId()
    const owner = await connect(relay, id, alice)
    await owner.synced()
    const secrets = await createWithSecrets(owner, alice, bob, id)
    for (const parley of [false, true]) {
      const stranger = await connect(relay, id, mallory, parley)
      expect((await stranger.closed).code).toBe(4403)
      expectNothingOfTheDocument(stranger, secrets)
    }
  })

  it("sends a stranger racing the creation with its own updates only its own refusals", async () => {
    const { alice, bob, mallory } = users()
    const id = newConversationId()
    const stranger = await connect(relay, id, mallory)
    const owner = await connect(relay, id, alice)
    await Promise.all([stranger.synced(), owner.synced()])
    // Both at once: a forged creation (a direct conversation under a group's id), then messages piled
    // on it, while alice creates.
    forgeCreation(stranger.doc, mallory, {
      id,
      kind: "direct",
      distinctKey: directDistinctKey([mallory, alice]),
      participants: [
        [mallory, "owner"],
        [alice, "owner"],
      ],
    })
    for (let i = 0; i < 5; i++) sendMessage(stranger.doc, mallory, { body: `spam ${i}` })
    const secrets = await createWithSecrets(owner, alice, bob, id)
    expect((await stranger.closed).code).toBe(4403)
    expectNothingOfTheDocument(stranger, secrets, [
      Rule.creationById,
      // What it piled on its refused squat refers to it: refused as malformed, or as a stranger's, or
      // as following changes the relay does not have.
      Rule.schema,
      Rule.participantOnly,
      Rule.missingChanges,
    ])
    expect(listMessages(owner.doc, { last: 10 }).map((m) => m.body)).toEqual([secrets[1]])
  })

  it("sends a removed participant the removal alone, and nothing it was bundled with", async () => {
    const { alice, bob } = users()
    for (const bundled of [false, true]) {
      const id = newConversationId()
      const owner = await connect(relay, id, alice)
      await owner.synced()
      await createWithSecrets(owner, alice, bob, id)
      const removed = await connect(relay, id, bob)
      await removed.until(() => listMessages(removed.doc, { last: 5 }).length === 1)
      // Its first sync is over (the answer to its sync step 2 is the last frame of it).
      await removed.until(() => removed.saves.length > 0)
      const before = removed.frames.length
      const secret = `after-removal-${id}`
      owner.doc.transact(() => {
        removeParticipants(owner.doc, alice, [bob])
        if (bundled) sendMessage(owner.doc, alice, { body: secret })
      })
      expect((await removed.closed).code).toBe(4403)
      const after = removed.frames.slice(before).map(describeFrame)
      // No y-protocols "permission denied" before the close: y-websocket would log its URL and token.
      if (bundled) expect(after).toEqual([])
      else expect(after).toEqual(["sync 2 with content"])
      // The removal alone reached its replica; bundled, nothing did.
      expect(typesOf(removed.doc).participants.has(bob)).toBe(bundled)
      for (const frame of removed.frames) expect(Buffer.from(frame).includes(Buffer.from(secret))).toBe(false)
      // A later message of the owner reaches nobody removed.
      sendMessage(owner.doc, alice, { body: `later-${id}` })
      await owner.allSaved()
    }
  })

  it("keeps all of this after a restart", async () => {
    const { alice, bob, mallory } = users()
    const first = await startRelayProcess()
    const id = newConversationId()
    const owner = await connect(first, id, alice)
    await owner.synced()
    const secrets = await createWithSecrets(owner, alice, bob, id)
    owner.close()
    await first.kill()
    const second = await startRelayProcess({ dataDir: first.dataDir, secret: first.secret })
    // An existing conversation, loaded from storage before anyone's access is decided.
    const stranger = await connect(second, id, mallory)
    expect((await stranger.closed).code).toBe(4403)
    expectNothingOfTheDocument(stranger, secrets)
    const member = await connect(second, id, bob)
    await member.until(() => listMessages(member.doc, { last: 5 }).length === 1)
    // A conversation created after the restart, with a stranger waiting on its id.
    const next = newConversationId()
    const waiting = await connect(second, next, mallory, false)
    await waiting.synced()
    const creator = await connect(second, next, bob)
    await creator.synced()
    const more = await createWithSecrets(creator, bob, alice, next)
    expect((await waiting.closed).code).toBe(4403)
    expectNothingOfTheDocument(waiting, more)
  })
})
