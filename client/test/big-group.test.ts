import "fake-indexeddb/auto"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { connectClient, destroyClients, eventually, type RelayProcess, SAVED, startRelay } from "./support.js"

/**
 * Participants the creator may add per minute on this relay (default 500). A group of 600 is
 * created in two parts (the SDK's parts hold at most 350 structs): the first, the creation with
 * its first ~340 members, fits the budget; the rest does not, and is refused RATE_LIMITED until
 * the budget refills. Raised a little above the default so that the refill takes seconds, not 12.
 */
const PARTICIPANTS_PER_MINUTE = 560

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay({
    args: ["--dev", "--user-participants-per-minute", String(PARTICIPANTS_PER_MINUTE)],
  })
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(destroyClients)

/** How many refusals with `code` the relay counted (its /metrics). */
async function refusals(code: string): Promise<number> {
  const text = await (await fetch(`${relay.httpUrl}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(`parley_errors_total{code="${code}"}`))
  return line === undefined ? 0 : Number(line.split(" ").at(-1))
}

describe("a group of 1,000 at the relay's defaults", () => {
  it("is saved at once: its parts fit one minute's participants budget, nothing waits for a refill", async () => {
    const defaults = await startRelay({ args: ["--dev"] })
    try {
      const alice = await connectClient(defaults, "alice")
      const people = Array.from({ length: 999 }, (_, i) => `q${i}`)
      const chat = await alice.createConversation({ participants: people, title: "a thousand" })
      const hello = chat.send("hello thousand")
      // Before: the second part was refused RATE_LIMITED and the creation saved a minute later.
      await chat.flush({ timeoutMs: 20_000 })
      expect(SAVED).toContain(chat.status(hello.id))
      expect(chat.participants).toHaveLength(1_000)
      const text = await (await fetch(`${defaults.httpUrl}/metrics`)).text()
      expect(text).not.toMatch(/^parley_errors_total\{code="RATE_LIMITED"\}/m)
    } finally {
      await destroyClients()
      await defaults.stop()
    }
  }, 60_000)
})

describe("a group larger than one update", () => {
  it("is created with 600 participants, and a member sees all of them and the first message", async () => {
    const alice = await connectClient(relay, "alice")
    const people = Array.from({ length: 600 }, (_, i) => `p${i}`)
    const errors: string[] = []
    const chat = await alice.createConversation({ participants: people, title: "big" })
    chat.on("error", ({ error }) => errors.push(`${error.code}/${error.rule}: ${error.message}`))
    const hello = chat.send("hello big")
    await eventually(() => expect(SAVED).toContain(chat.status(hello.id)), 60_000)
    expect(chat.participants).toHaveLength(601)

    const member = await connectClient(relay, "p599")
    const seen = await member.conversation(chat.id).ready()
    await eventually(() => expect(seen.participants).toHaveLength(601))
    expect(seen.participants.find((p) => p.user === "alice")?.role).toBe("owner")
    await eventually(() => expect(seen.messages().map((m) => m.body)).toEqual(["hello big"]))
    // The second part waited for the creator's budget (retryable, never told as an error).
    expect(await refusals("RATE_LIMITED")).toBeGreaterThan(0)
    expect(errors).toEqual([])
  }, 90_000)
})
