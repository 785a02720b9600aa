import {
  type ConversationId,
  createConversation,
  listMessages,
  type MessageId,
  newConversationId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import pg from "pg"
import { afterAll, describe, expect, it } from "vitest"
import { MEMBER_LIST_LOCK } from "../../src/hooks/member-lists.js"
import { TestClient } from "../helpers/clients.js"
import { DATABASE_URL, postgresUnreachable, type ScratchSchema, scratchSchema } from "../helpers/postgres.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { until } from "../helpers/until.js"

// An outside tester found that on PostgreSQL a busy conversation stopped taking writes for 10–20 s
// each time its compaction came due: the compaction waited, inside the conversation's queue, until
// the hooks' outbox had recorded every earlier change, and the outbox had fallen behind. Here the
// recording is held outright (the test takes the event log's advisory lock, which every record of
// events waits for) while the conversation's compaction comes due: its writes must still be saved,
// and nothing may be folded past what the outbox recorded.

const alice = "alice" as UserId
const COMPACT_AFTER = 10
const schemas: ScratchSchema[] = []
afterAll(async () => {
  await stopRelayProcesses()
  for (const schema of schemas.splice(0)) await schema.drop()
})

/** Runs `sql` once on the scratch schema. */
async function query<R extends pg.QueryResultRow>(
  url: string,
  sql: string,
  values: unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<R>(sql, values)).rows
  } finally {
    await client.end()
  }
}

interface Marks {
  /** The conversation's last stored log position. */
  readonly stored: number
  /** Through which position the hooks' outbox recorded its events (its watermark). */
  readonly recorded: number
  /** Through which position the log is folded into the snapshot (0: none). */
  readonly folded: number
  /** `message.sent` events in the event log. */
  readonly logged: number
}

async function marks(url: string, id: ConversationId): Promise<Marks> {
  const [row] = await query<{
    stored: string
    recorded: string | null
    folded: string | null
    logged: string
  }>(
    url,
    `SELECT (SELECT last_position FROM parley_documents WHERE doc = $1) AS stored,
            (SELECT through FROM parley_hook_watermarks WHERE document = $1) AS recorded,
            (SELECT through FROM parley_snapshots WHERE doc = $1) AS folded,
            (SELECT count(*) FROM parley_event_log WHERE conversation = $1 AND type = 'message.sent') AS logged`,
    [id],
  )
  return {
    stored: Number(row!.stored),
    recorded: Number(row!.recorded ?? 0),
    folded: Number(row!.folded ?? 0),
    logged: Number(row!.logged),
  }
}

/** Resolves with "saved" once the relay acknowledged all of `client`'s writes, or "unacknowledged" after `ms`. */
function savedWithin(client: TestClient, ms: number): Promise<"saved" | "unacknowledged"> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    client.allSaved().then(() => "saved" as const),
    new Promise<"unacknowledged">((resolve) => {
      timer = setTimeout(() => resolve("unacknowledged"), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

const unreachable = await postgresUnreachable()
describe("a conversation whose compaction comes due while the hooks' recording is held (PostgreSQL)", () => {
  if (unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
    it.skip(`skipped: PostgreSQL unreachable at ${DATABASE_URL} (${unreachable})`, () => {})
    return
  }

  it("goes on saving its messages, and folds its log only through what the outbox recorded (before: writes stopped until the outbox caught up)", async () => {
    const scratch = await scratchSchema()
    schemas.push(scratch)
    const args = [
      "--storage",
      "postgres",
      "--database-url",
      scratch.url,
      "--compact-after-updates",
      String(COMPACT_AFTER),
      "--history-segment-size",
      "0",
    ]
    const relay: RelayProcess = await startRelayProcess({ args })
    const id = newConversationId()
    const client = new TestClient(relay.url, id, await relay.token("alice"))
    await client.opened
    await client.synced()
    createConversation(client.doc, alice, { kind: "group", id, participants: ["bob" as UserId] })
    sendMessage(client.doc, alice, { id: "msg-before" as MessageId, body: "before" })
    await client.allSaved()
    const before = await until(
      () => marks(scratch.url, id),
      (m) => m.logged === 1 && m.recorded >= m.stored,
    )

    // Every record of events now waits for the event log's lock, which this session holds.
    const holder = new pg.Client({ connectionString: scratch.url })
    await holder.connect()
    await holder.query("SELECT pg_advisory_lock($1, hashtext(current_schema()))", [MEMBER_LIST_LOCK])
    let held = true
    try {
      // Three times the compaction threshold, each message acknowledged before the next is sent.
      const sent = 3 * COMPACT_AFTER
      for (let i = 0; i < sent; i++) {
        sendMessage(client.doc, alice, { id: `msg-held-${i}` as MessageId, body: `held ${i}` })
        // Generous: a saved message takes milliseconds; the old relay never answered while the lock was held.
        expect(await savedWithin(client, 20_000), `message ${i} sent while the recording is held`).toBe(
          "saved",
        )
      }
      const during = await marks(scratch.url, id)
      // The recording was held indeed: none of these messages' events is logged yet.
      expect(during.logged).toBe(1)
      expect(during.stored).toBeGreaterThanOrEqual(before.stored + sent)
      // Nothing whose events are unrecorded was folded away: a crash now would derive them from the log.
      expect(during.folded).toBeLessThanOrEqual(during.recorded)
      expect(during.recorded).toBe(before.recorded)
    } finally {
      if (held) await holder.query("SELECT pg_advisory_unlock_all()")
      held = false
      await holder.end()
    }

    // Once the recording goes on, every message's event is logged, and the compaction that came due
    // meanwhile folds the log (through positions now recorded only).
    const after = await until(
      () => marks(scratch.url, id),
      (m) => m.logged === 1 + 3 * COMPACT_AFTER && m.recorded >= m.stored && m.folded > before.stored,
      30_000,
    )
    expect(after.folded).toBeLessThanOrEqual(after.recorded)
    client.close()

    // What is stored (the snapshot and the log after it) loads as everything the client wrote.
    await relay.kill()
    const restarted = await startRelayProcess({ args, dataDir: relay.dataDir, secret: relay.secret })
    const reader = new TestClient(restarted.url, id, await restarted.token("alice"))
    await reader.opened
    await reader.synced()
    const messages = listMessages(reader.doc, { last: 1_000 })
    expect(messages.map((m) => m.id)).toEqual([
      "msg-before",
      ...Array.from({ length: 3 * COMPACT_AFTER }, (_, i) => `msg-held-${i}`),
    ])
    expect(messages.map((m) => m.seq)).toEqual(messages.map((_, i) => i + 1))
    reader.close()
    await restarted.kill()
  }, 120_000)
})
