/**
 * Where `SqliteEventLog.record` spends its time for the hook events of one
 * frame of 2,000 short messages (the value cap): the events derived as the
 * relay derives them (from the change events of the frame applied and
 * numbered on the bench conversation), then, per run, CPU of: their stored
 * JSON (`storedEventSerializer`, as `record` makes it), the INSERTs with
 * those payloads (a bare multi-row statement as `record` uses, in a
 * transaction), and `record` itself in a transaction, each on a fresh SQLite
 * file. Prints medians; asserts nothing.
 *
 *   node --conditions=parley-source --import tsx test/bench/event-log-record.ts [--runs 15 --messages 2000]
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { parseArgs } from "node:util"
import {
  assignSequenceNumbers,
  type ChangeEvent,
  type ConversationId,
  newConversationId,
  nextFromDocument,
  observeChanges,
  sendMessage,
} from "@parley/shared"
import Database from "better-sqlite3"
import * as Y from "yjs"
import { deriveHookEvents, loggedForm } from "../../relay/src/hooks/events.js"
import { storedEventSerializer } from "../../relay/src/hooks/member-lists.js"
import { SqliteEventLog } from "../../relay/src/hooks/sqlite-event-log.js"
import { alice, seedConversation } from "../../relay/test/helpers/frame-shapes.js"
import { cpuMs as cpu, median, timed } from "./stats.js"

const { values: flags } = parseArgs({
  options: { runs: { type: "string", default: "15" }, messages: { type: "string", default: "2000" } },
})
const id: ConversationId = newConversationId()
const doc = new Y.Doc()
Y.applyUpdate(doc, seedConversation(id, 1_000).stored)
const changes: ChangeEvent[] = []
const stop = observeChanges(doc, (events) => changes.push(...events))
doc.transact(() => {
  for (let i = 0; i < Number(flags.messages); i++)
    sendMessage(doc, alice, { body: `quick ${i}: a typical short chat line` })
})
assignSequenceNumbers(doc, nextFromDocument(doc))
stop()
const derive = () =>
  deriveHookEvents({
    conversationId: id,
    doc,
    actor: { kind: "user", user: alice } as never,
    changes,
    positions: [1],
    now: Date.now(),
  })
const times: Record<string, number[]> = {
  derive: [],
  loggedForm: [],
  json: [],
  inserts: [],
  "inserts, no members index": [],
  "inserts, no index": [],
  record: [],
}
for (let run = 0; run < Number(flags.runs); run++) {
  derive()
  const [events, deriving] = timed(derive)
  times.derive!.push(deriving)
  const [kept, logging] = timed(() => events.map(loggedForm))
  times.loggedForm!.push(logging)
  const payloads: string[] = []
  const refs: (string | null)[] = []
  times.json!.push(
    cpu(() => {
      const json = storedEventSerializer()
      for (const e of kept) {
        const stored = json(e)
        payloads.push(stored.payload)
        refs.push(stored.members?.ref ?? null)
      }
    }),
  )
  // Each on a fresh database (the table's size changes what an insert costs).
  const fresh = (work: (db: Database.Database, log: SqliteEventLog) => number) => {
    const dir = mkdtempSync(join(tmpdir(), "parley-record-"))
    const db = new Database(join(dir, "log.db"))
    db.pragma("journal_mode = WAL")
    try {
      return work(db, new SqliteEventLog(db))
    } finally {
      db.close()
      rmSync(dir, { recursive: true, force: true })
    }
  }
  // A bare multi-row INSERT of the same rows, after dropping `indexes`.
  const inserts = (db: Database.Database, drop: string[]) => {
    for (const index of drop) db.exec(`DROP INDEX ${index}`)
    const insert = db.prepare(
      `INSERT INTO event_log (conversation, type, at, payload, members) VALUES ${Array.from({ length: 100 }, () => "(?, ?, ?, ?, ?)").join(", ")}`,
    )
    return cpu(() =>
      db.transaction(() => {
        for (let start = 0; start + 100 <= kept.length; start += 100) {
          const args: unknown[] = []
          for (let i = start; i < start + 100; i++) {
            const e = kept[i]!
            args.push(e.event.conversationId, e.event.type, e.event.time, payloads[i], refs[i])
          }
          insert.run(...args)
        }
      })(),
    )
  }
  times.inserts!.push(fresh((db) => inserts(db, [])))
  times["inserts, no members index"]!.push(fresh((db) => inserts(db, ["event_log_by_members"])))
  times["inserts, no index"]!.push(
    fresh((db) => inserts(db, ["event_log_by_members", "event_log_by_conversation", "event_log_by_time"])),
  )
  times.record!.push(fresh((db, log) => cpu(() => db.transaction(() => log.record(events))())))
}
console.log(
  `${Number(flags.messages)} messages, ${derive().length} events, median CPU ms of ${flags.runs} runs: ` +
    Object.entries(times)
      .map(([k, v]) => `${k} ${median(v).toFixed(1)}`)
      .join(", "),
)
