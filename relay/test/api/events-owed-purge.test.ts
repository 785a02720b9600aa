import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { afterAll, describe, expect, it } from "vitest"
import { runKeysCli } from "../../src/api/keys-cli.js"
import { redisUnreachable, startCluster } from "../helpers/cluster.js"
import { DATABASE_URL, postgresUnreachable, type ScratchSchema, scratchSchema } from "../helpers/postgres.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { isStream, openSse, type SseStream } from "../helpers/sse.js"
import { until } from "../helpers/until.js"
import { apiClient, freshDataDir } from "./helpers.js"

// A deleted message's (or conversation's) text stays in the durable event log and the hook outbox
// until its purge runs (`--purge-delay-ms` after the deletion, or after the restart that finds it
// owed). Readers of those (`GET /v1/events`, `/admin/dead-letters`) must not serve it meanwhile: the
// deletion is acknowledged. A message's purge is held back ten minutes here, so that every read comes
// before it. (A deleted conversation's purge runs right after its deletion is stored: reads of it may
// come before or after that purge, and must show nothing of it either way.)

const HELD_PURGE = ["--purge-delay-ms", "600000"]
const SCOPES = "conversations:read,conversations:write,messages:read,messages:write,events:read"

const servers: Server[] = []
const schemas: ScratchSchema[] = []
const streams: SseStream[] = []
const cleanup: (() => unknown)[] = []
afterAll(async () => {
  for (const s of streams.splice(0)) s.close()
  for (const step of cleanup.splice(0).reverse()) await step()
  await stopRelayProcesses()
  for (const server of servers.splice(0)) await new Promise((resolve) => server.close(resolve))
  for (const schema of schemas.splice(0)) await schema.drop()
})

/** A webhook that refuses every `message.sent` for good (400): each becomes a dead letter. */
async function refusingWebhook(): Promise<string> {
  const server = createServer((req, res) => {
    let body = ""
    req.on("data", (chunk) => {
      body += chunk
    })
    req.on("end", () => {
      const event = JSON.parse(body) as { event: { type: string } }
      res.statusCode = event.event.type === "message.sent" ? 400 : 204
      res.end()
    })
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`
}

/** An API key made as an operator would, in the relay's store (`storage`: its storage flags). */
async function createKey(dataDir: string, storage: readonly string[]): Promise<string> {
  const lines: string[] = []
  const args = ["create", `reader-${Math.random().toString(36).slice(2)}`, "--scopes", SCOPES]
  const code = await runKeysCli([...args, "--data-dir", dataDir, ...storage], (l) => lines.push(l), {})
  if (code !== 0) throw new Error(`keys create failed: ${lines.join("\n")}`)
  return (JSON.parse(lines[0]!) as { key: string }).key
}

/** Everything a `/v1/events` stream from the start of the log serves, once it served `until`'s event. */
async function readLog(relay: RelayProcess, key: string, untilType: string, untilConversation: string) {
  const stream = await openSse(`${relay.httpUrl}/v1/events`, {
    authorization: `Bearer ${key}`,
    "last-event-id": "0",
  })
  if (!isStream(stream)) throw new Error(`stream refused: ${JSON.stringify(stream.body)}`)
  streams.push(stream)
  await stream.until(
    (events) =>
      events.some((e) => e.event === untilType && e.data.includes(`"conversationId":"${untilConversation}"`)),
    30_000,
  )
  stream.close()
  return stream.events.filter((e) => e.event !== "ready")
}

async function deadLetters(relay: RelayProcess): Promise<string> {
  const response = await fetch(`${relay.httpUrl}/admin/dead-letters`, {
    headers: { authorization: `Bearer ${await relay.token("ops", { role: "service" })}` },
  })
  expect(response.status).toBe(200)
  return await response.text()
}

interface Deleted {
  /** A group whose message `m_secret` (its text `secret`) was deleted. */
  readonly messageIn: string
  /** A group (its message's text `secret` too) deleted whole. */
  readonly conversation: string
  readonly secret: string
}

/** Two groups on `relay`, each with a message holding `secret`, both dead letters; one message deleted, one group deleted. */
async function deleteBoth(relay: RelayProcess, key: string): Promise<Deleted> {
  const api = apiClient(() => relay.httpUrl, key)
  const tag = Math.random().toString(36).slice(2, 8)
  const secret = `SECRET-${tag}`
  const messageIn = `g~owed-msg-${tag}`
  const conversation = `g~owed-conv-${tag}`
  for (const id of [messageIn, conversation]) {
    expect((await api("POST", "/v1/conversations", { id, participants: [{ user: "alice" }] })).status).toBe(
      201,
    )
    expect(
      (await api("POST", `/v1/conversations/${id}/messages`, { id: "m_secret", body: `${secret} in ${id}` }))
        .status,
    ).toBe(201)
  }
  // Before the deletions, the dead letters hold the text (what the reads below must no longer show).
  await until(
    () => deadLetters(relay),
    (text) => text.split(secret).length - 1 === 2,
    30_000,
  )
  expect((await api("DELETE", `/v1/conversations/${messageIn}/messages/m_secret`)).status).toBeLessThan(300)
  expect((await api("DELETE", `/v1/conversations/${conversation}`)).status).toBeLessThan(300)
  return { messageIn, conversation, secret }
}

/** What the event stream and the dead letters serve of `deleted` while the purges are owed. */
async function expectWithheld(relay: RelayProcess, key: string, deleted: Deleted): Promise<void> {
  const events = await readLog(relay, key, "conversation.deleted", deleted.conversation)
  const sent = events
    .filter((e) => e.event === "message.sent")
    .map((e) => JSON.parse(e.data) as { event: { conversationId: string }; subject: Record<string, unknown> })
    .filter((e) => [deleted.messageIn, deleted.conversation].includes(e.event.conversationId))
  // Both messages' events are there (the stream goes on), without what they said.
  expect(sent.map((e) => e.event.conversationId)).toEqual([deleted.messageIn, deleted.conversation])
  expect(sent[0]!.subject).toMatchObject({ message: { id: "m_secret", body: "", purged: true } })
  expect(sent[1]!.subject).toEqual({ purged: true })
  expect(events.filter((e) => e.data.includes(deleted.secret))).toEqual([])
  expect(await deadLetters(relay)).not.toContain(deleted.secret)
}

async function acknowledgedThenRestarted(storage: readonly string[]): Promise<void> {
  const webhook = await refusingWebhook()
  const dataDir = freshDataDir()
  const key = await createKey(dataDir, storage)
  const args = [...storage, ...HELD_PURGE, "--webhook", webhook, "--webhook-secret", "s3cret"]
  const first = await startRelayProcess({ args, dataDir })
  const deleted = await deleteBoth(first, key)

  // The deletions are acknowledged; their purges are ten minutes away.
  await expectWithheld(first, key, deleted)

  // Killed with the purges owed; the restarted relay owes them too (ten minutes after its start).
  await first.kill()
  const second = await startRelayProcess({ args, dataDir, secret: first.secret })
  await expectWithheld(second, key, deleted)

  // The stream does not stall on them: what comes after is served as it was sent.
  const api = apiClient(() => second.httpUrl, key)
  await api("POST", "/v1/conversations", { id: "g~owed-after", participants: [{ user: "alice" }] })
  await api("POST", "/v1/conversations/g~owed-after/messages", { body: "still here" })
  const after = await readLog(second, key, "message.sent", "g~owed-after")
  expect(after.some((e) => e.data.includes("still here"))).toBe(true)
}

describe("the event stream and the dead letters while a deletion's purge is owed", () => {
  it("serve a deleted message's and a deleted conversation's events without their text, before and after a SIGKILL (SQLite)", async () => {
    await acknowledgedThenRestarted([])
  }, 120_000)
})

const noPostgres = await postgresUnreachable()
describe("the same on PostgreSQL", () => {
  if (noPostgres && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
    it.skip(`skipped: PostgreSQL unreachable at ${DATABASE_URL} (${noPostgres})`, () => {})
    return
  }
  it("serve a deleted message's and a deleted conversation's events without their text, before and after a SIGKILL (PostgreSQL)", async () => {
    const scratch = await scratchSchema()
    schemas.push(scratch)
    await acknowledgedThenRestarted(["--storage", "postgres", "--database-url", scratch.url])
  }, 120_000)
})

const noCluster = noPostgres ?? (await redisUnreachable())
describe("the same in a cluster", () => {
  if (noCluster && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${noCluster})`, () => {})
    return
  }
  it("every relay serves them without their text, also once the relay that owes the purges died", async () => {
    const webhook = await refusingWebhook()
    const cluster = await startCluster(2, {
      args: [...HELD_PURGE, "--webhook", webhook, "--webhook-secret", "s3cret"],
    })
    cleanup.push(() => cluster.stop())
    const storage = ["--storage", "postgres", "--database-url", cluster.schema.url]
    const key = await createKey(freshDataDir(), storage)
    const deleted = await deleteBoth(cluster.relay(0), key)
    await expectWithheld(cluster.relay(0), key, deleted)
    await expectWithheld(cluster.relay(1), key, deleted)
    // Whichever relay ordered the conversations, one dies, then the other: the survivor, then a relay
    // started again, serve the log with the purges still owed (by a dead relay, or by the one taking
    // the conversations over, their purges ten minutes away).
    await cluster.kill(0)
    await expectWithheld(cluster.relay(1), key, deleted)
    await cluster.kill(1)
    await cluster.start(0)
    await expectWithheld(cluster.relay(0), key, deleted)
  }, 120_000)
})
