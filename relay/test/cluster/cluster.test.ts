import {
  createConversation,
  encodeAwareness,
  encodeSyncUpdate,
  listMessages,
  newConversationId,
  newMessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { Awareness, encodeAwarenessUpdate } from "y-protocols/awareness"
import * as Y from "yjs"
import { TestClient } from "../helpers/clients.js"
import { redisUnreachable, startCluster, type TestCluster } from "../helpers/cluster.js"
import { gappedWrites } from "../helpers/gapped-writes.js"
import { postgresUnreachable } from "../helpers/postgres.js"
import { metricLine } from "../helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId

const clients: TestClient[] = []
const clusters: TestCluster[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  for (const cluster of clusters.splice(0)) await cluster.stop()
})

function client(url: string, name: string, token: string): TestClient {
  const c = new TestClient(url, name, token)
  clients.push(c)
  return c
}

/** Every message of `doc` as `seq:id`, in order. */
function order(doc: Y.Doc): string[] {
  return listMessages(doc, { last: 1_000_000 }).map((m) => `${m.seq}:${m.id}`)
}

const sequenced = (doc: Y.Doc, count: number) => () => {
  const list = listMessages(doc, { last: 1_000_000 })
  return list.length === count && list.every((m) => m.seq !== undefined)
}

/** `relays` relays; alice, on the first, creates a group with bob and carol. */
async function groupOnRelays(relays: number): Promise<{ cluster: TestCluster; id: string; a: TestClient }> {
  const cluster = await startCluster(relays)
  clusters.push(cluster)
  const id = newConversationId()
  const a = client(cluster.relay(0).url, id, await cluster.token(alice))
  await a.synced()
  createConversation(a.doc, alice, { kind: "group", id, participants: [bob, carol] })
  await a.allSaved()
  return { cluster, id, a }
}

/** Two relays; alice on the first creates a group with bob, who joins on the second. */
async function pairOnTwoRelays(): Promise<{ a: TestClient; b: TestClient }> {
  const { cluster, id, a } = await groupOnRelays(2)
  const b = client(cluster.relay(1).url, id, await cluster.token(bob))
  await b.synced()
  return { a, b }
}

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("three relays over PostgreSQL and Redis", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("three relays over PostgreSQL and Redis", () => {
    // Three relay processes start in each test: on a loaded machine that alone can take most of the default 20 s.
    it("lets participants on different relays chat, every relay holding one order with contiguous numbers", async () => {
      const { cluster, id, a } = await groupOnRelays(3)
      const b = client(cluster.relay(1).url, id, await cluster.token(bob))
      const c = client(cluster.relay(2).url, id, await cluster.token(carol))
      await Promise.all([b.synced(), c.synced()])
      const writers: [TestClient, UserId][] = [
        [a, alice],
        [b, bob],
        [c, carol],
      ]
      for (let n = 0; n < 10; n++)
        for (const [w, user] of writers)
          sendMessage(w.doc, user, { id: newMessageId(), body: `${user} ${n}` })
      await Promise.all(writers.map(([w]) => w.allSaved()))
      await Promise.all(writers.map(([w]) => w.until(sequenced(w.doc, 30))))
      const orders = writers.map(([w]) => order(w.doc))
      expect(orders[1]).toEqual(orders[0])
      expect(orders[2]).toEqual(orders[0])
      expect(orders[0]!.map((entry) => Number(entry.split(":")[0]))).toEqual(
        Array.from({ length: 30 }, (_, i) => i + 1),
      )
      // A newcomer on any relay loads the same order from PostgreSQL.
      for (let i = 0; i < 3; i++) {
        const late = client(cluster.relay(i).url, id, await cluster.token(carol))
        await late.synced()
        await late.until(sequenced(late.doc, 30))
        expect(order(late.doc)).toEqual(orders[0])
      }
      // What an operator sees on /metrics: the first relay orders the conversation, the others forwarded
      // their writers' changes to it and had them stored, none refused.
      const metric = (i: number, line: string) => metricLine(cluster.relay(i), line)
      expect(await metric(0, "parley_cluster_documents_owned ")).toBeGreaterThanOrEqual(1)
      for (const i of [1, 2]) {
        expect(await metric(i, 'parley_cluster_forwarded_total{outcome="stored"}')).toBeGreaterThan(0)
        expect(await metric(i, 'parley_cluster_forwarded_total{outcome="refused"}')).toBe(0)
      }
      // (At least: a forward answered late is sent again, and answered twice.)
      expect(
        await metric(0, 'parley_cluster_forwards_answered_total{outcome="stored"}'),
      ).toBeGreaterThanOrEqual(
        (await metric(1, 'parley_cluster_forwarded_total{outcome="stored"}')) +
          (await metric(2, 'parley_cluster_forwarded_total{outcome="stored"}')),
      )
    }, 60_000)

    it("tells a writer on a relay that does not order the document that it must resend its pending work", async () => {
      // Bob writes through the other relay, which forwards to the owner; his first change never arrives.
      const { a, b } = await pairOnTwoRelays()
      const { gapped, whole } = gappedWrites(b.doc, bob)
      b.send(encodeSyncUpdate(gapped))
      await b.until(() => b.errors.length > 0)
      // The owner's answer, passed on (a retryable UNAVAILABLE the owner's rules gave, not "no relay could order").
      expect(b.errors[0]).toMatchObject({ code: "UNAVAILABLE", rule: "missing-changes" })
      b.send(encodeSyncUpdate(whole))
      await a.until(() => listMessages(a.doc, { last: 10 }).length === 2)
      expect(listMessages(a.doc, { last: 10 }).map((m) => m.body)).toEqual(["lost on the way", "sent next"])
    }, 60_000)

    it("shows presence set on one relay to a participant on another", async () => {
      const { a, b } = await pairOnTwoRelays()
      b.awareness.setLocalState({ user: bob, typing: true })
      b.send(encodeAwareness(encodeAwarenessUpdate(b.awareness, [b.doc.clientID])))
      await a.until(() =>
        [...a.awareness.getStates().values()].some((s) => (s as { typing?: boolean }).typing === true),
      )
      b.close()
      // Gone on the other relay too once bob's connection closed.
      await a.until(() => a.awareness.getStates().size === 0)
    }, 60_000)

    it("holds a client id announced on one relay against presence and writes under it through another", async () => {
      const { cluster, id, a } = await groupOnRelays(2)
      // Carol (the attacker) joins on the first relay, so its memory of the bindings predates bob's id.
      const m = client(cluster.relay(0).url, id, await cluster.token(carol))
      const b = client(cluster.relay(1).url, id, await cluster.token(bob))
      await Promise.all([m.synced(), b.synced()])
      const x = b.doc.clientID
      b.awareness.setLocalState({ user: bob, status: "bob's own" })
      b.send(encodeAwareness(encodeAwarenessUpdate(b.awareness, [x])))
      await m.until(() => m.awareness.getStates().get(x)?.status === "bob's own")

      // Carol announces a state under bob's id, with a newer clock, and writes a message under it.
      const forged = new Y.Doc()
      forged.clientID = x
      forged.getMap("scratch").set("state", 1)
      const awareness = new Awareness(forged)
      awareness.setLocalState({ status: "set by carol" })
      for (let i = 0; i < 5; i++) awareness.setLocalState({ status: "set by carol" })
      m.send(encodeAwareness(encodeAwarenessUpdate(awareness, [x])))
      const replica = new Y.Doc()
      replica.clientID = x
      Y.applyUpdate(replica, Y.encodeStateAsUpdate(m.doc))
      const before = Y.encodeStateVector(replica)
      sendMessage(replica, carol, { body: "carol under bob's id" })
      m.sendUpdate(Y.encodeStateAsUpdate(replica, before))
      await m.until(() => m.errors.length > 0)
      expect(m.errors[0]).toMatchObject({ code: "FORBIDDEN", rule: "client-id-owner" })

      // Bob's own message under his id is stored, and every replica converges on it.
      sendMessage(b.doc, bob, { body: "bob's real message" })
      await b.allSaved()
      await a.until(() => listMessages(a.doc, { last: 10 }).some((msg) => msg.body === "bob's real message"))
      const reader = client(cluster.relay(0).url, id, await cluster.token(alice))
      await reader.until(() => listMessages(reader.doc, { last: 10 }).length === 1)
      expect(listMessages(reader.doc, { last: 10 }).map((msg) => `${msg.author}: ${msg.body}`)).toEqual([
        "bob: bob's real message",
      ])
      // Nobody ever saw carol's state under bob's id, on either relay; bob's entry is still his.
      for (const c of [a, b, reader])
        expect([...c.awareness.getStates().values()].some((s) => s.status === "set by carol")).toBe(false)
      expect(a.awareness.getStates().get(x)).toMatchObject({ status: "bob's own" })
      expect(m.frames.some((f) => Buffer.from(f).includes(Buffer.from("set by carol")))).toBe(false)
    }, 60_000)
  })
}
