import {
  CloseCode,
  createConversation,
  type ErrorCode,
  isRetryable,
  listMessages,
  newConversationId,
  type UserId,
} from "@parley/shared"
import pg from "pg"
import { afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { Writer } from "../../relay/test/cluster/writer.js"
import { TestClient } from "../../relay/test/helpers/clients.js"
import {
  haproxyPath,
  REDIS_URL,
  redisUnreachable,
  startCluster,
  startLoadBalancer,
} from "../../relay/test/helpers/cluster.js"
import { DATABASE_URL, postgresUnreachable } from "../../relay/test/helpers/postgres.js"
import { eventually, readyz } from "./helpers.js"
import { redisServerMissing, startPrivateRedis } from "./redis-server.js"
import { TcpProxy } from "./tcp-proxy.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

const cleanups: (() => unknown)[] = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("two relays while Redis or PostgreSQL fails", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("two relays while Redis or PostgreSQL fails", () => {
    it("while Redis fails: writes refused retryably, reported in /readyz, and store the pending messages once when Redis answers again", async () => {
      const { proxy, proxied } = await redisProxy()
      const cluster = await startCluster(2, { redisUrl: proxied.toString() })
      cleanups.push(() => cluster.stop())
      const { id, a, b } = await chatting(cluster)

      proxy.blackhole()
      proxy.cut()
      for (const relay of [cluster.relay(0), cluster.relay(1)])
        await eventually(async () => {
          const { status, body } = await readyz(relay.httpUrl)
          expect(status).toBe(503)
          expect(JSON.stringify(body)).toContain("redis")
        })
      // Past the lease's lifetime: even the relay that ordered the conversation has stopped writing.
      await new Promise((r) => setTimeout(r, 1600))
      const started = Date.now()
      a.send("during")
      b.send("during")
      for (const w of [a, b]) await refusedRetryably(w)
      const waited = Date.now() - started
      for (const w of [a, b]) expect(w.acked.size).toBe(1)
      console.log(`writes refused ${waited} ms after they were sent, with Redis down`)

      proxy.restore()
      for (const relay of [cluster.relay(0), cluster.relay(1)])
        await eventually(async () => expect((await readyz(relay.httpUrl)).status).toBe(200))
      // The SDK re-sends pending work when it reconnects; a retryable refusal keeps it pending.
      a.client!.close()
      // Like the SDK after a retryable refusal: the pending work goes again on a fresh connection.
      a.client!.close()
      b.client!.close()
      await Promise.all([a.settled(), b.settled()])
      const reader = new TestClient(cluster.relay(1).url, id, await cluster.token(alice))
      cleanups.push(() => reader.close())
      await fourNumbered(reader)
      const messages = listMessages(reader.doc, { last: 100 })
      expect(messages.map((m) => m.body).sort()).toEqual(["before", "before", "during", "during"])
      expect(messages.map((m) => m.seq)).toEqual([1, 2, 3, 4])
    }, 90_000)

    it("while one relay is cut off from Redis: its clients' updates to a conversation another relay orders are refused at once, not held", async () => {
      const { proxy, proxied } = await redisProxy()
      // Relay 0 (which orders the conversation: alice created it there) keeps Redis; relay 1 loses it.
      const cluster = await startCluster(2, { redisUrl: (i) => (i === 1 ? proxied.toString() : REDIS_URL) })
      cleanups.push(() => cluster.stop())
      const { b } = await chatting(cluster)
      // Held, not cut: relay 1's connections stay open and its commands get no answer (each times out).
      proxy.blackhole()
      await eventually(async () => expect((await readyz(cluster.relay(1).httpUrl)).status).toBe(503))
      // Bob keeps typing through relay 1: every update is answered (refused, retryably) within moments.
      const started = Date.now()
      for (let i = 0; i < 10; i++) b.send(`during ${i}`)
      // Before, one a forward's Redis timeout (about one per 4 s), the rest held until Redis returned.
      await eventually(() => {
        expect(b.refusals().errors.length + b.refusals().closes.length).toBeGreaterThanOrEqual(10)
      }, 10_000)
      const waited = Date.now() - started
      await refusedRetryably(b)
      console.log(`[redis cut from one relay] 10 forwarded updates refused within ${waited} ms`)
    }, 60_000)

    it("while PostgreSQL fails: writes refused retryably on every relay, every relay not ready, pending messages stored once after", async () => {
      const proxy = await proxyTo(DATABASE_URL, 5432)
      const cluster = await startCluster(2, {
        databaseUrl: through(proxy),
        args: ["--storage-timeout-ms", "1000"],
      })
      cleanups.push(() => cluster.stop())
      const { id, a, b } = await chatting(cluster)

      proxy.blackhole()
      proxy.cut()
      a.send("during")
      b.send("during")
      for (const w of [a, b]) await refusedRetryably(w)
      for (const w of [a, b]) expect(w.acked.size).toBe(1)
      // The relay that does not order the conversation too: its probe writes to the same database.
      for (const relay of [cluster.relay(0), cluster.relay(1)])
        await eventually(async () => {
          const { status, body } = await readyz(relay.httpUrl)
          expect(status).toBe(503)
          expect(JSON.stringify(body)).toContain("storage")
        })

      proxy.restore()
      // Both: a relay still failing refuses the changes sent to it again.
      for (const relay of [cluster.relay(0), cluster.relay(1)])
        await eventually(async () => expect((await readyz(relay.httpUrl)).status).toBe(200))
      // Like the SDK after a retryable refusal: the pending work goes again on a fresh connection.
      a.client!.close()
      b.client!.close()
      // Resent after a retryable refusal on the new connection too, as the SDK does: the owner refuses a
      // change at once while its own held change is still being stored after the recovery, and a
      // forwarded resend can arrive in that window (suspected cause of one CI failure under load,
      // 2026-12-04: "bob: 1 messages never acknowledged"; not reproduced in 7 runs, 4 of them loaded).
      await Promise.all([a, b].map(settledResending)).catch((error: unknown) => {
        // What the relays warned about, to read next to a failure.
        for (const relay of [cluster.relay(0), cluster.relay(1)])
          console.log(relay.lines.filter((line) => /"level":[456]0/.test(line)).join("\n"))
        for (const w of [a, b])
          console.log(`${w.user}: refusals`, JSON.stringify(w.client!.errors), "close", w.client!.closeEvent)
        throw error
      })
      const reader = new TestClient(cluster.relay(1).url, id, await cluster.token(alice))
      cleanups.push(() => reader.close())
      await fourNumbered(reader)
      const messages = listMessages(reader.doc, { last: 100 })
      expect(messages.map((m) => m.body).sort()).toEqual(["before", "before", "during", "during"])
      expect(messages.map((m) => m.seq)).toEqual([1, 2, 3, 4])
    }, 90_000)

    // The fence row the append locks, and the documents row it advances (the brief's own case; locked,
    // it was taken for storage failing: every conversation of the relay held as long as the lock).
    it.each(["parley_cluster_fences", "parley_documents"])(
      "while conversations' %s rows are locked: the relay's other conversations go on, ready; the locked one's message stored once released",
      async (table) => {
        // A storage timeout far above the lock wait: before, the lock held the relay's appends until it.
        const cluster = await startCluster(2, { args: ["--storage-timeout-ms", "20000"] })
        cleanups.push(() => cluster.stop())
        // Two conversations relay 0 orders (alice created both there).
        const locked = await chatting(cluster)
        const other = await chatting(cluster)
        // As an operator's `SELECT … FOR UPDATE` in an open transaction, or a backend stopped mid-append.
        const release = await holdLock(
          `SELECT * FROM ${cluster.schema.schema}.${table} WHERE doc = $1 FOR UPDATE`,
          [locked.id],
        )
        locked.a.send("during the row lock")
        const started = Date.now()
        for (let i = 0; i < 3; i++) other.a.send(`other ${i}`)
        // Before: every conversation of the relay waited as long as the lock (30 s in an outside probe),
        // and its /readyz flapped with the storage timeouts.
        await settledResending(other.a)
        const waited = Date.now() - started
        expect(waited).toBeLessThan(8_000)
        expect((await readyz(cluster.relay(0).httpUrl)).status).toBe(200)
        expect(locked.a.acked.size).toBe(1)
        await release()
        await settledResending(locked.a)
        expect(await storedBodies(cluster, locked.id, 3)).toEqual(["before", "before", "during the row lock"])
        console.log(`[${table} row locked] another conversation's 3 messages stored in ${waited} ms`)
      },
      90_000,
    )

    it("while the whole fence table is locked: the ordering relay not ready, writes refused retryably, stored once after", async () => {
      const cluster = await startCluster(2, { args: ["--storage-timeout-ms", "20000"] })
      cleanups.push(() => cluster.stop())
      const { id, a } = await chatting(cluster)
      const release = await holdLock(
        `LOCK TABLE ${cluster.schema.schema}.parley_cluster_fences IN ACCESS EXCLUSIVE MODE`,
      )
      a.send("during the table lock")
      // Not a conversation's row this time: every append waits, so storage is failing, said at once
      // (not after the 20 s storage timeout).
      await eventually(async () => expect((await readyz(cluster.relay(0).httpUrl)).status).toBe(503), 8_000)
      await release()
      await settledResending(a)
      expect(await storedBodies(cluster, id, 3)).toEqual(["before", "before", "during the table lock"])
    }, 90_000)

    it("while one relay is cut off from PostgreSQL: another takes the conversations it ordered, and their writes go on", async () => {
      const proxy = await proxyTo(DATABASE_URL, 5432)
      // Relay 0 orders the conversation (alice created it there) and reaches PostgreSQL through the proxy.
      const cluster = await startCluster(2, {
        databaseUrl: (url, i) => (i === 0 ? through(proxy)(url) : url),
        args: ["--storage-timeout-ms", "1000"],
      })
      cleanups.push(() => cluster.stop())
      // Alice's load balancer sends her reconnects to a relay that is ready, as /readyz tells it.
      let aliceAt = 0
      const { id, a, b } = await chatting(cluster, () => cluster.relay(aliceAt).url)
      // Alice writes on relay 0 as it loses PostgreSQL: her change's append goes into the black hole and
      // waits there for storage (a change sent once storage is known to fail is refused at once instead,
      // and relay 0 forwards it when it is sent again).
      proxy.blackhole()
      a.send("as relay 0 loses its database")
      await eventually(async () => expect((await readyz(cluster.relay(0).httpUrl)).status).toBe(503))
      proxy.cut()
      aliceAt = 1
      // Bob, on relay 1 whose storage answers, keeps writing while relay 0 is cut off: once relay 0 let
      // its lease go (3 s of failing storage, then the lease's 1.5 s), relay 1 orders and stores them.
      const started = Date.now()
      for (let i = 0; i < 3; i++) b.send(`during ${i}`)
      await settledResending(b)
      const waited = Date.now() - started
      // Alice's change did not wait for relay 0's database: once relay 1 ordered the conversation, relay 0
      // let the change go (retryably) and closed her connection; she reconnected and sent it again.
      // Before, she had no answer and no other write stored for the whole outage.
      const aliceStarted = Date.now()
      await settledResending(a)
      const aliceWaited = Date.now() - aliceStarted
      expect(a.reconnects).toBeGreaterThan(0)
      // Stored while relay 0 was still cut off (not ready), through relay 1 (ready).
      expect((await readyz(cluster.relay(0).httpUrl)).status).toBe(503)
      expect((await readyz(cluster.relay(1).httpUrl)).status).toBe(200)
      const reader = new TestClient(cluster.relay(1).url, id, await cluster.token(bob))
      cleanups.push(() => reader.close())
      await eventually(() =>
        // Each once; alice's among bob's in whatever order relay 1 numbered them.
        expect(
          listMessages(reader.doc, { last: 10 })
            .map((m) => m.body)
            .sort(),
        ).toEqual(["as relay 0 loses its database", "before", "before", "during 0", "during 1", "during 2"]),
      )
      console.log(
        `[postgres cut from the ordering relay] bob's 3 messages stored through relay 1 in ${waited} ms; alice's, held on relay 0, ${aliceWaited} ms later`,
      )
    }, 90_000)

    it.skipIf(
      (redisServerMissing() !== undefined || haproxyPath() === undefined) &&
        process.env.PARLEY_REQUIRE_SERVICES !== "1",
    )(
      "while Redis holds writes behind the shipped load balancer: every relay not ready, and a new reader through it still syncs (before: nobody served)",
      async () => {
        const redis = await startPrivateRedis()
        cleanups.push(() => redis.stop())
        const cluster = await startCluster(2, { redisUrl: redis.url })
        cleanups.push(() => cluster.stop())
        const lb = await startLoadBalancer(haproxyPath()!, cluster.ports)
        cleanups.push(() => lb.stop())
        const { id } = await chatting(cluster)
        await redis.admin.call("CLIENT", "PAUSE", "8000", "WRITE")
        cleanups.push(() => redis.admin.call("CLIENT", "UNPAUSE"))
        for (const relay of [cluster.relay(0), cluster.relay(1)])
          await eventually(async () => expect((await readyz(relay.httpUrl)).status).toBe(503), 6_000)
        // Both marked down by the load balancer's /readyz check (200 ms, two failures).
        await new Promise((resolve) => setTimeout(resolve, 1_000))
        const reader = new TestClient(lb.url, id, await cluster.token(bob))
        cleanups.push(() => reader.close())
        await Promise.race([
          reader.synced(),
          reader.closed.then(({ code }) => {
            throw new Error(`the reader's socket closed (${code}) before it synced`)
          }),
        ])
        expect(listMessages(reader.doc, { last: 10 }).map((m) => m.body)).toEqual(["before", "before"])
      },
      90_000,
    )

    it.skipIf(redisServerMissing() !== undefined && process.env.PARLEY_REQUIRE_SERVICES !== "1")(
      "while Redis holds writes (CLIENT PAUSE WRITE; PING still answers): every relay not ready, then ready, and a message sent meanwhile stored once",
      async () => {
        // A Redis of this test's own: a pause reaches every client of the server.
        const redis = await startPrivateRedis()
        cleanups.push(() => redis.stop())
        const cluster = await startCluster(2, { redisUrl: redis.url })
        cleanups.push(() => cluster.stop())
        const relays = [cluster.relay(0), cluster.relay(1)]
        const { id, b } = await chatting(cluster)
        for (const relay of relays)
          await eventually(async () => expect((await readyz(relay.httpUrl)).status).toBe(200))

        // What each relay's /readyz said, in order, from the pause on.
        const seen: { status: number; body: string }[][] = relays.map(() => [])
        let polling = true
        const polls = relays.map(async (relay, i) => {
          while (polling) {
            const { status, body } = await readyz(relay.httpUrl)
            seen[i]!.push({ status, body: JSON.stringify(body) })
            await new Promise((r) => setTimeout(r, 50))
          }
        })
        cleanups.push(async () => {
          polling = false
          await Promise.all(polls)
        })
        await redis.admin.call("CLIENT", "PAUSE", "3000", "WRITE")
        expect(await redis.admin.ping()).toBe("PONG")
        // Relay 1 does not order the conversation: its change goes to relay 0 over Redis.
        b.send("during the pause")
        const notReady = (i: number) => seen[i]!.findIndex((s) => s.status === 503)
        await eventually(() => {
          for (const i of [0, 1]) expect(notReady(i)).toBeGreaterThanOrEqual(0)
        }, 10_000)
        for (const i of [0, 1]) {
          expect(seen[i]![notReady(i)]!.body).toContain("redis")
          expect(seen[i]![notReady(i)]!.body).toContain("did not take a write")
        }
        // Ready again once the pause is over.
        await eventually(() => {
          for (const i of [0, 1]) expect(seen[i]!.slice(notReady(i)).at(-1)?.status).toBe(200)
        }, 10_000)
        polling = false
        await Promise.all(polls)

        // Sent after its relay noticed the pause (it asks Redis who orders the conversation, and that
        // read waits behind the paused writes), the change is refused at once and retryably: writes fail
        // fast while Redis fails. Sent before, it waits out the pause. After a refusal a client sends
        // its pending work again, as the SDK does (`resendLater`); without one it must be acknowledged
        // as sent. Seen under load (2026-12-03, 1 run of 6 with two busy loops beside it): refused
        // with UNAVAILABLE "Redis is not answering", never resent, never acknowledged.
        const refusals = b.client!.errors
        expect(refusals.every((e) => isRetryable(e.code as ErrorCode))).toBe(true)
        if (refusals.length > 0) b.client!.sendUpdate(Y.encodeStateAsUpdate(b.doc))
        await b.settled().catch((error: unknown) => {
          // What the relays warned about, to read next to a failure.
          for (const relay of relays)
            console.log(relay.lines.filter((line) => /"level":[456]0/.test(line)).join("\n"))
          console.log("bob's refusals", JSON.stringify(b.client!.errors), "close", b.client!.closeEvent)
          throw error
        })
        expect(b.reconnects).toBe(0)
        const during = b.sent.at(-1)!
        console.log(
          `[redis pause] change sent through the relay that does not order it: acknowledged ${b.acked.get(during.id)! - during.at} ms after it was sent (pause 3000 ms), refusals ${JSON.stringify(b.client!.errors.map((e) => e.code))}`,
        )
        const reader = new TestClient(cluster.relay(1).url, id, await cluster.token(alice))
        cleanups.push(() => reader.close())
        await reader.synced()
        await reader.until(() => {
          const listed = listMessages(reader.doc, { last: 100 })
          return listed.length >= 3 && listed.every((m) => m.seq !== undefined)
        })
        const messages = listMessages(reader.doc, { last: 100 })
        expect(messages.map((m) => m.body).sort()).toEqual(["before", "before", "during the pause"])
        expect(messages.map((m) => m.seq)).toEqual([1, 2, 3])
      },
      // As its siblings: a private Redis and two relays start first, which under a busy suite took
      // more than the 30 s this test once had (it timed out once before its first check).
      90_000,
    )
  })
}

/** The bodies of the first `count` messages of conversation `id` as a reader on relay 0 gets them, sorted. */
async function storedBodies(
  cluster: Awaited<ReturnType<typeof startCluster>>,
  id: string,
  count: number,
): Promise<string[]> {
  const reader = new TestClient(cluster.relay(0).url, id, await cluster.token(bob))
  cleanups.push(() => reader.close())
  await reader.synced()
  await reader.until(() => listMessages(reader.doc, { last: 10 }).length === count)
  return listMessages(reader.doc, { last: 10 })
    .map((m) => m.body)
    .sort()
}

/**
 * Runs `sql` (a lock) in a transaction of another PostgreSQL session, held
 * until the returned function (or the test's end) rolls it back.
 */
async function holdLock(sql: string, args: unknown[] = []): Promise<() => Promise<void>> {
  const locker = new pg.Client({ connectionString: DATABASE_URL })
  await locker.connect()
  let holding = true
  const release = async () => {
    if (!holding) return
    holding = false
    await locker.query("ROLLBACK")
  }
  cleanups.push(async () => {
    await release()
    await locker.end()
  })
  await locker.query("BEGIN")
  await locker.query(sql, args)
  return release
}

/**
 * A group of alice (writing through relay 0, which creates it) and bob
 * (through relay 1), each with one message stored: the starting point of
 * every test here. The writers stop when the test ends.
 */
/**
 * `writer.settled()`, with its pending work sent again after a retryable
 * refusal on the connection it has (once per refusal), as the SDK does.
 */
async function settledResending(writer: Writer): Promise<void> {
  const answered = new WeakMap<TestClient, number>()
  const timer = setInterval(() => {
    const client = writer.client
    if (!client || writer.acked.size >= writer.sent.length) return
    const refusals = client.errors.length
    if (refusals <= (answered.get(client) ?? 0)) return
    answered.set(client, refusals)
    if (client.errors.every((e) => isRetryable(e.code as ErrorCode)))
      client.sendUpdate(Y.encodeStateAsUpdate(writer.doc))
  }, 100)
  try {
    await writer.settled()
  } finally {
    clearInterval(timer)
  }
}

/**
 * Waits (bounded, so that a failure says what happened instead of timing out
 * the test) for a refusal of the writer's change, on whichever connection it
 * has: an error on the socket or a close; every one must be retryable.
 */
async function refusedRetryably(writer: Writer): Promise<void> {
  await eventually(() => {
    const { errors, closes } = writer.refusals()
    expect(errors.length + closes.length, `${writer.user}: no refusal`).toBeGreaterThan(0)
  })
  const { errors, closes } = writer.refusals()
  expect(errors.filter((e) => !isRetryable(e.code as ErrorCode))).toEqual([])
  expect(closes.filter((code) => code !== CloseCode.Unavailable.code)).toEqual([])
}

/**
 * Waits for the reader to hold four numbered messages. Relay 1 may still be
 * applying what relay 0 stored (published through Redis) when the reader
 * joins; the test then checks they are the four, once each.
 */
async function fourNumbered(reader: TestClient): Promise<void> {
  await eventually(() => {
    const listed = listMessages(reader.doc, { last: 100 })
    expect(listed.filter((m) => m.seq !== undefined).length).toBeGreaterThanOrEqual(4)
    expect(listed.every((m) => m.seq !== undefined)).toBe(true)
  })
}

/** A TCP proxy in front of Redis the test can cut and black-hole, and the URL that reaches Redis through it. */
async function redisProxy() {
  const proxy = await proxyTo(REDIS_URL, 6379)
  return { proxy, proxied: new URL(through(proxy)(REDIS_URL)) }
}

/** A TCP proxy in front of the server of `url` (its port, else `defaultPort`), closed when the test ends. */
async function proxyTo(url: string, defaultPort: number): Promise<TcpProxy> {
  const target = new URL(url)
  const proxy = await TcpProxy.start({ host: target.hostname, port: Number(target.port || defaultPort) })
  cleanups.push(() => proxy.close())
  return proxy
}

/** `url` (a connection string) made to go through `proxy`. */
const through = (proxy: TcpProxy) => (url: string) => {
  const proxied = new URL(url)
  proxied.hostname = "127.0.0.1"
  proxied.port = String(proxy.port)
  return proxied.toString()
}

async function chatting(
  cluster: Awaited<ReturnType<typeof startCluster>>,
  aliceAt: () => string = () => cluster.relay(0).url,
) {
  const id = newConversationId()
  const a = new Writer(alice, id, await cluster.token(alice), aliceAt)
  const b = new Writer(bob, id, await cluster.token(bob), () => cluster.relay(1).url)
  cleanups.push(() => a.stop())
  cleanups.push(() => b.stop())
  const first = a.connect()
  await first.synced()
  createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
  await first.allSaved()
  await b.connect().synced()
  a.send("before")
  b.send("before")
  await Promise.all([a.settled(), b.settled()])
  return { id, a, b }
}
