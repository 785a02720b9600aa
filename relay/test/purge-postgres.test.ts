import {
  createConversation,
  decodeSegment,
  deleteConversation,
  deleteMessage,
  ErrorCode,
  newConversationId,
  Rule,
  sealedHistory,
  sealedSegments,
  sendMessage,
  typesOf,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it, onTestFinished } from "vitest"
import * as Y from "yjs"
import { PostgresBackend } from "../src/backend/postgres.js"
import { type RunningRelay, startRelay } from "../src/relay.js"
import { TestClient } from "./helpers/clients.js"
import {
  postgresUnreachable,
  purgedEverywhere,
  rowsHolding,
  scratchSchema,
  DATABASE_URL as url,
} from "./helpers/postgres.js"
import { signToken } from "./helpers/relay-process.js"

const SECRET = "purge-postgres-secret"
const alice = "alice" as UserId
const bob = "bob" as UserId
const unreachable = await postgresUnreachable()

const relays: RunningRelay[] = []
const clients: TestClient[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const r of relays.splice(0)) await r.close()
})

/** A relay on a scratch schema of its own, and that schema's connection string. */
async function relayOnPostgres(): Promise<{ relay: RunningRelay; backend: PostgresBackend; url: string }> {
  const scratch = await scratchSchema()
  onTestFinished(() => scratch.drop())
  const backend = await PostgresBackend.open(scratch.url)
  const relay = await startRelay({
    backend,
    port: 0,
    warmUp: false,
    log: "silent",
    auth: { kind: "secret", secret: SECRET },
    history: { segmentSize: 10, keepLive: 5 },
  })
  relays.push(relay)
  return { relay, backend, url: scratch.url }
}

async function joinAs(relay: RunningRelay, user: UserId, id: string): Promise<TestClient> {
  const client = new TestClient(relay.url, id, await signToken(SECRET, user))
  clients.push(client)
  await client.synced()
  return client
}

if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("deletion deletes (PostgreSQL)", () => {
    it.skip(`skipped: PostgreSQL unreachable at ${url} (${unreachable})`, () => {})
  })
} else {
  describe("deletion deletes (PostgreSQL)", () => {
    it("a deleted conversation refuses writes and its text is in no table afterwards", async () => {
      const { relay, url: schemaUrl } = await relayOnPostgres()
      const id = newConversationId()
      const a = await joinAs(relay, alice, id)
      createConversation(a.doc, alice, { kind: "group", id, participants: [bob], title: "Pg-Title-Okapi" })
      for (let i = 0; i < 20; i++) {
        sendMessage(a.doc, alice, { body: `Pg-Secret-Tapir-${i}` })
        await a.allSaved()
      }
      await a.until(() => sealedSegments(a.doc).length >= 1)
      const b = await joinAs(relay, bob, id)
      const offline = new Y.Doc()
      Y.applyUpdate(offline, Y.encodeStateAsUpdate(b.doc))
      const before = Y.encodeStateVector(offline)
      sendMessage(offline, bob, { body: "Pg-Late-Message" })
      const late = Y.encodeStateAsUpdate(offline, before)
      expect(await rowsHolding(schemaUrl, "Pg-Secret-Tapir-")).not.toEqual([])

      deleteConversation(a.doc, alice)
      await a.allSaved()
      await b.until(() => typesOf(b.doc).messages.length === 0)
      b.sendUpdate(late)
      await b.until(() => b.errors.length > 0)
      expect(b.errors[0]).toMatchObject({ code: ErrorCode.FORBIDDEN, rule: Rule.conversationDeleted })
      for (const text of ["Pg-Secret-Tapir-", "Pg-Title-Okapi", "Pg-Late-Message"])
        await purgedEverywhere(schemaUrl, text)
    })

    it("deleting a sealed message and erasing a user leave none of their text in any table", async () => {
      const { relay, backend, url: schemaUrl } = await relayOnPostgres()
      const id = newConversationId()
      const a = await joinAs(relay, alice, id)
      createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
      await a.allSaved()
      const b = await joinAs(relay, bob, id)
      const sent = []
      for (let i = 0; i < 20; i++) {
        const [who, client] = i % 2 === 0 ? [alice, a] : [bob, b]
        const body = i === 2 ? "Pg-Sealed-Gone" : who === bob ? `Pg-Bob-Erased-${i}` : `Pg-Alice-Stays-${i}`
        sent.push(sendMessage(client.doc, who, { body }))
        await client.allSaved()
      }
      await a.until(() => sealedSegments(a.doc).length >= 1)
      for (const stored of await backend.history.all(id))
        sealedHistory(a.doc).add(decodeSegment(stored.bytes))
      deleteMessage(a.doc, alice, sent[2]!.id)
      await a.allSaved()
      await purgedEverywhere(schemaUrl, "Pg-Sealed-Gone")

      const service = await signToken(SECRET, "ops", { role: "service" })
      const response = await fetch(`${relay.httpUrl}/admin/users/bob/content`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${service}` },
      })
      expect(await response.json()).toMatchObject({ user: "bob", messages: 10 })
      await purgedEverywhere(schemaUrl, "Pg-Bob-Erased-")
      expect(await rowsHolding(schemaUrl, "Pg-Alice-Stays-")).not.toEqual([])
    })
  })
}
