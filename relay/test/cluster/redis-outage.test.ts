import {
  createConversation,
  listMessages,
  newConversationId,
  newMessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import { deleteRedisKeys, REDIS_URL, redisUnreachable } from "../helpers/cluster.js"
import { postgresUnreachable, scratchSchema } from "../helpers/postgres.js"
import { startRelayProcess } from "../helpers/relay-process.js"
import { startTcpProxy, type TcpProxy } from "../helpers/tcp-proxy.js"
import { until } from "../helpers/until.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

/**
 * Relays over one scratch schema and one key prefix of their own; `throughProxy[i]` puts
 * relay i's Redis connections behind a proxy of its own, which the test can stall or cut.
 */
async function relays(throughProxy: readonly boolean[]) {
  const schema = await scratchSchema()
  cleanup.push(() => schema.drop())
  const prefix = `parley-redis-outage-test:${process.pid}:${Date.now().toString(36)}:`
  cleanup.push(() => deleteRedisKeys(prefix))
  const target = new URL(REDIS_URL)
  const secret = `redis-outage-${Math.random().toString(36).slice(2)}`
  const started: { relay: Awaited<ReturnType<typeof startRelayProcess>>; proxy?: TcpProxy }[] = []
  for (const proxied of throughProxy) {
    const proxy = proxied ? await startTcpProxy(target.hostname, Number(target.port || 6379)) : undefined
    if (proxy) cleanup.push(() => proxy.close())
    const relay = await startRelayProcess({
      secret,
      args: [
        "--storage",
        "postgres",
        "--database-url",
        schema.url,
        "--redis-url",
        proxy ? `redis://127.0.0.1:${proxy.port}` : REDIS_URL,
        "--redis-prefix",
        prefix,
      ],
    })
    cleanup.push(() => relay.kill())
    started.push({ relay, ...(proxy ? { proxy } : {}) })
  }
  return started
}

const readiness = async (httpUrl: string) => {
  const response = await fetch(`${httpUrl}/readyz`)
  return { status: response.status, body: await response.text() }
}

/** Whether the relay at `httpUrl` says it is ready on every look for `ms`. */
const readyThroughout = async (httpUrl: string, ms: number) => {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 100)))
    if ((await readiness(httpUrl)).status !== 200) return false
  return true
}

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("a relay whose Redis stalls or drops", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("a relay whose Redis stalls or drops", () => {
    it("is not ready while Redis answers nothing (no error, only silence), and ready again once it answers", async () => {
      const [started] = await relays([true])
      const { relay } = started!
      const proxy = started!.proxy!
      await until(
        () => readiness(relay.httpUrl),
        (r) => r.status === 200,
      )
      proxy.stall()
      const stalled = await until(
        () => readiness(relay.httpUrl),
        (r) => r.status === 503,
      )
      expect(JSON.parse(stalled.body).failing).toEqual([expect.objectContaining({ dependency: "redis" })])
      proxy.resume()
      await until(
        () => readiness(relay.httpUrl),
        (r) => r.status === 200,
      )
    }, 60_000)

    it("brings its clients what another relay stored while its subscription was down, with no write after it", async () => {
      const [a, b] = await relays([false, true])
      const id = newConversationId()
      const writer = new TestClient(a!.relay.url, id, await a!.relay.token(alice))
      cleanup.push(() => writer.close())
      await writer.synced()
      createConversation(writer.doc, alice, { kind: "group", id, participants: [bob] })
      await writer.allSaved()
      const reader = new TestClient(b!.relay.url, id, await b!.relay.token(bob))
      cleanup.push(() => reader.close())
      await reader.synced()
      const has = (body: string) => listMessages(reader.doc, { last: 10 }).some((m) => m.body === body)
      sendMessage(writer.doc, alice, { id: newMessageId(), body: "followed" })
      await writer.allSaved()
      await reader.until(() => has("followed"))

      // Relay b loses Redis; a stores a message meanwhile (published to nobody on b), then nothing more.
      b!.proxy!.cut()
      await until(
        () => readiness(b!.relay.httpUrl),
        (r) => r.status === 503,
      )
      sendMessage(writer.doc, alice, { id: newMessageId(), body: "while b was cut off" })
      await writer.allSaved()
      b!.proxy!.heal()
      await reader.until(() => has("while b was cut off"))
      expect(listMessages(reader.doc, { last: 10 }).map((m) => m.body)).toEqual([
        "followed",
        "while b was cut off",
      ])
      // Two relays, a proxy and Redis's reconnect backoff: slow on a busy machine, not wrong.
    }, 60_000)

    it("asks a client it refused while Redis was down for its work again once Redis answers, without waiting for its retry", async () => {
      const [a, b] = await relays([false, true])
      const id = newConversationId()
      const owner = new TestClient(a!.relay.url, id, await a!.relay.token(alice))
      cleanup.push(() => owner.close())
      await owner.synced()
      createConversation(owner.doc, alice, { kind: "group", id, participants: [bob] })
      await owner.allSaved()
      // Bob writes through relay b, which forwards to a (the conversation's owner) over Redis.
      const writer = new TestClient(b!.relay.url, id, await b!.relay.token(bob))
      cleanup.push(() => writer.close())
      await writer.synced()
      b!.proxy!.stall()
      await until(
        () => readiness(b!.relay.httpUrl),
        (r) => r.status === 503,
      )
      sendMessage(writer.doc, bob, { id: newMessageId(), body: "written while Redis was away" })
      await writer.until(() => writer.errors.some((e) => e.code === "UNAVAILABLE"))
      // This client never sends its work again by itself (the SDK would, at the end of its backoff, up
      // to 10 s later): what brings it is the relay's sync request once Redis answers.
      b!.proxy!.resume()
      await owner.until(() =>
        listMessages(owner.doc, { last: 10 }).some((m) => m.body === "written while Redis was away"),
      )
      await writer.allSaved()
    }, 60_000)

    // The start of the reply lost: the probe's `SET` on the command connection, its `PING` on the subscriber.
    it.each([
      ["command", "+OK\r\n"],
      ["subscriber", "*2\r\n$4\r\npong\r\n"],
    ])(
      "replaces its %s connection to Redis once a reply went missing on the way, and is ready again within seconds",
      async (_, start) => {
        const [a, b] = await relays([false, true])
        const id = newConversationId()
        const owner = new TestClient(a!.relay.url, id, await a!.relay.token(alice))
        cleanup.push(() => owner.close())
        await owner.synced()
        createConversation(owner.doc, alice, { kind: "group", id, participants: [bob] })
        await owner.allSaved()
        await until(
          () => readiness(b!.relay.httpUrl),
          (r) => r.status === 200,
        )
        // From here each reply on that connection answers the command sent before it, or none.
        await b!.proxy!.dropReply(start)
        await until(
          () => readyThroughout(b!.relay.httpUrl, 3000),
          (ready) => ready,
          15_000,
        )
        // Redis carries b's work again: a change written through b reaches a, which orders the conversation.
        const writer = new TestClient(b!.relay.url, id, await b!.relay.token(bob))
        cleanup.push(() => writer.close())
        await writer.synced()
        sendMessage(writer.doc, bob, { id: newMessageId(), body: "after the lost reply" })
        await owner.until(() =>
          listMessages(owner.doc, { last: 10 }).some((m) => m.body === "after the lost reply"),
        )
        await writer.allSaved()
      },
      60_000,
    )
  })
}
