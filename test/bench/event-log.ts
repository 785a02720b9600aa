/**
 * Cost of the durable event log behind `GET /v1/events`: outbox enqueues (which
 * record every event in the log, with one audience row per participant) of
 * a message's two events (message.sent, document.updated) in a conversation
 * of P participants, one 2,000-message batch, reads by user, one deleted
 * message's events redacted (a purge), and a prune. On
 * SQLite in a temp directory, and on PostgreSQL when DATABASE_URL (or the
 * local default) answers. Prints figures; asserts nothing.
 *
 *   npm run bench:event-log [-- --participants 50 --messages 2000]
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type Backend, type HookEvent, PostgresBackend, SqliteBackend } from "@parley/relay"
import type { ConversationId, UserId } from "@parley/shared"
import pg from "pg"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const PARTICIPANTS = arg("participants", 50)
const MESSAGES = arg("messages", 2000)
const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test"

const users = Array.from({ length: PARTICIPANTS }, (_, i) => `user${i}` as UserId)
const conversation = {
  id: "g~bench" as ConversationId,
  kind: "group" as const,
  title: "bench",
  metadata: {},
  createdBy: users[0]!,
  createdAt: 1,
  participants: users.map((user) => ({ user, role: "member" as const, joinedAt: 1 })),
}
function messageEvents(n: number): HookEvent[] {
  const message = {
    id: `msg${String(n).padStart(8, "0")}`,
    author: users[n % users.length]!,
    body: `message number ${n} with a little text in it`,
    type: "text",
    createdAt: Date.now(),
    priority: "normal",
    attachments: [],
    metadata: {},
    reactions: {},
    seq: n + 1,
  }
  const header = {
    time: Date.now(),
    conversationId: conversation.id,
    actor: { kind: "user", user: message.author },
  }
  return [
    { event: { ...header, id: `evt_s${n}`, type: "message.sent" }, subject: { message }, conversation },
    {
      event: { ...header, id: `evt_d${n}`, type: "document.updated" },
      subject: { changes: [{ type: "message.sent", message }], positions: [n] },
      conversation,
    },
  ] as unknown as HookEvent[]
}

async function measure(name: string, backend: Backend): Promise<void> {
  const each: number[] = []
  for (let n = 0; n < MESSAGES; n++) {
    const t0 = performance.now()
    await backend.outbox.enqueue({
      document: conversation.id,
      events: messageEvents(n).map((event) => ({ event, targets: ["inbox"] })),
      through: n,
    })
    each.push(performance.now() - t0)
  }
  each.sort((a, b) => a - b)
  const batch = Array.from({ length: MESSAGES }, (_, n) => messageEvents(MESSAGES + n)[0]!)
  let t0 = performance.now()
  await backend.outbox.enqueue({
    document: conversation.id,
    events: batch.map((event) => ({ event, targets: ["inbox"] })),
  })
  const bigBatch = performance.now() - t0
  t0 = performance.now()
  let after = "0"
  let read = 0
  for (;;) {
    const page = await backend.events.read({ after, user: users[1]!, limit: 1000 })
    if (page.length === 0) break
    read += page.length
    after = page.at(-1)!.id
  }
  const readAll = performance.now() - t0
  t0 = performance.now()
  for (let i = 0; i < 100; i++) await backend.events.read({ after, user: users[1]!, limit: 100 })
  const caughtUp = (performance.now() - t0) / 100
  // One deleted message's events redacted (what a deletion costs the log), median of 20, each a different message.
  const redactions: number[] = []
  for (let i = 0; i < 20 && backend.purge; i++) {
    const id = `msg${String(i * 97).padStart(8, "0")}`
    t0 = performance.now()
    await backend.purge.redactEvents(conversation.id, conversation.id, {
      kind: "messages",
      ids: new Set([id]),
    })
    redactions.push(performance.now() - t0)
  }
  redactions.sort((a, b) => a - b)
  const redact = redactions.length > 0 ? `${redactions[redactions.length >> 1]!.toFixed(2)} ms` : "-"
  t0 = performance.now()
  const pruned = await backend.events.prune({ maxAgeMs: Number.MAX_SAFE_INTEGER, maxEvents: 0 })
  const prune = performance.now() - t0
  const p = (q: number) => each[Math.min(each.length - 1, Math.floor(each.length * q))]!.toFixed(2)
  console.log(
    `${name}: ${PARTICIPANTS} participants; enqueue of one message's 2 events p50 ${p(0.5)} ms, p99 ${p(0.99)} ms; ` +
      `one batch of ${MESSAGES} message.sent ${bigBatch.toFixed(0)} ms; ` +
      `read all ${read} by user in pages of 1000 ${readAll.toFixed(0)} ms; caught-up read ${caughtUp.toFixed(2)} ms; ` +
      `one deleted message's events redacted (of ${3 * MESSAGES} logged) ${redact}; prune of ${pruned} ${prune.toFixed(0)} ms`,
  )
}

const dir = mkdtempSync(join(tmpdir(), "parley-bench-events-"))
try {
  const sqlite = new SqliteBackend(dir)
  await measure("sqlite", sqlite)
  await sqlite.close()
} finally {
  rmSync(dir, { recursive: true, force: true })
}

const schema = `parley_bench_events_${process.pid}`
const admin = new pg.Client({ connectionString: DATABASE_URL, connectionTimeoutMillis: 2000 })
try {
  await admin.connect()
} catch (error) {
  console.log(`postgres: skipped, ${DATABASE_URL} unreachable (${(error as Error).message})`)
  process.exit(0)
}
await admin.query(`CREATE SCHEMA ${schema}`)
try {
  const url = new URL(DATABASE_URL)
  url.searchParams.set("options", `-c search_path=${schema}`)
  const postgres = await PostgresBackend.open(url.toString())
  await measure("postgres", postgres)
  await postgres.close()
} finally {
  await admin.query(`DROP SCHEMA ${schema} CASCADE`)
  await admin.end()
}
