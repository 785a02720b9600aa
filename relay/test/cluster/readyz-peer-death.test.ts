import { createConversation, newConversationId, type UserId } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { redisUnreachable, startCluster, type TestCluster } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"
import { Writer } from "./writer.js"

const cleanup: (() => unknown)[] = []
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** One `/readyz` answer of a surviving relay. */
interface Sample {
  readonly relay: number
  readonly at: number
  readonly status: number
  readonly body: string
}

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
  describe("the surviving relays' readiness when a relay dies", () => {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
  })
} else {
  describe("the surviving relays' readiness when a relay dies", () => {
    it("stays ready on both survivors while they take over the conversations a SIGKILLed relay ordered", async () => {
      const cluster: TestCluster = await startCluster(3)
      cleanup.push(() => cluster.stop())
      // Conversations ordered by each relay (its creator writes first there), each with a writer on every relay.
      const conversations = Number(process.env.READYZ_CONVERSATIONS ?? 12)
      let turn = 0
      // After the kill, reconnects go to the survivors (the load balancer's job).
      const live = () => {
        for (let i = 0; i < 3; i++) {
          const relay = cluster.relays[(turn++ + i) % 3]
          if (relay) return relay.url
        }
        throw new Error("no relay running")
      }
      const writers: Writer[] = []
      for (let c = 0; c < conversations; c++) {
        const id = newConversationId()
        const owner = c % 3
        const users = [0, 1, 2].map((i) => `user${c}-${i}` as UserId)
        const group = await Promise.all(
          users.map(async (user) => new Writer(user, id, await cluster.token(user), live)),
        )
        for (const w of group) cleanup.push(() => w.stop())
        const creator = group[owner]!
        await creator.connect(cluster.relay(owner).url).synced()
        createConversation(creator.doc, users[owner]!, {
          kind: "group",
          id,
          participants: users.filter((u) => u !== users[owner]),
        })
        await creator.client!.allSaved()
        for (const [i, w] of group.entries()) if (i !== owner) await w.connect(cluster.relay(i).url).synced()
        writers.push(...group)
      }

      let writing = true
      const burst = (async () => {
        for (let round = 0; writing; round++) {
          for (const w of writers) if (Math.random() < 0.5) w.send(`${w.user} ${round}`)
          await sleep(50)
        }
      })()
      await sleep(1500)

      const samples: Sample[] = []
      await cluster.kill(0)
      const killedAt = Date.now()
      // Every 100 ms for two lease lifetimes and the takeovers after them, as a load balancer's check would.
      while (Date.now() - killedAt < 8000) {
        const round = [1, 2].map(async (relay) => {
          const started = Date.now()
          const response = await fetch(`${cluster.relay(relay).httpUrl}/readyz`)
          samples.push({ relay, at: started - killedAt, status: response.status, body: await response.text() })
        })
        await Promise.all([...round, sleep(100)])
      }
      writing = false
      await burst
      await Promise.all(writers.map((w) => w.settled(60_000)))

      const notReady = samples.filter((s) => s.status !== 200)
      console.log(
        `[readyz after a peer's SIGKILL] ${conversations} conversations, ${writers.reduce((n, w) => n + w.sent.length, 0)} messages, ` +
          `${samples.length} samples, ${notReady.length} not ready${notReady.length ? `:\n${notReady.map((s) => `relay ${s.relay} +${s.at} ms ${s.status} ${s.body}`).join("\n")}` : ""}`,
      )
      if (process.env.READYZ_DEBUG)
        for (const i of [1, 2])
          console.log(
            `relay ${i} killedAt=${new Date(killedAt).toISOString()}\n` +
              cluster
                .relay(i)
                .stderr()
                .split("\n")
                .filter((l) => l.includes("DEBUG"))
                .join("\n"),
          )
      expect(notReady).toEqual([])
    }, 120_000)
  })
}
