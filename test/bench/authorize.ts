/**
 * Benchmark of the relay's per-update authorization check (relay/src/policy):
 * microseconds per `checkUpdate` for a new message, an edit, a delete, a
 * reaction and a marker move, on a 100,000-message conversation and on a
 * 100-message one, to show the cost follows the update, not the conversation.
 * Prints figures; asserts nothing about time.
 *
 *   npm run bench:authorize [-- --messages 100000 --ops 500]
 */
import { mkdirSync, writeFileSync } from "node:fs"
import * as Y from "yjs"
import { checkUpdate } from "../../relay/src/policy/check-update.js"
import { ClientBindings } from "../../relay/src/policy/client-bindings.js"
import {
  assignSequenceNumbers,
  type ConversationId,
  createConversation,
  deleteMessage,
  editMessage,
  type MessageId,
  markRead,
  messageIndex,
  nextFromDocument,
  react,
  sendMessage,
  type UserId,
} from "../../shared/src/index.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const LARGE = arg("messages", 100_000)
const OPS = arg("ops", 500)
const PER_SESSION = 500
const users = Array.from({ length: 20 }, (_, i) => `user${i}` as UserId)

/** The relay's replica of a conversation with `n` messages, built as in bench:model. */
function conversation(n: number): { relay: Y.Doc; ids: MessageId[] } {
  const relay = new Y.Doc()
  createConversation(relay, users[0]!, {
    kind: "group",
    id: "g~bench" as ConversationId,
    participants: users,
  })
  const base = Y.encodeStateAsUpdate(relay)
  const ids: MessageId[] = []
  for (let s = 0; s * PER_SESSION < n; s++) {
    const device = new Y.Doc()
    Y.applyUpdate(device, base)
    const before = Y.encodeStateVector(device)
    const count = Math.min(PER_SESSION, n - s * PER_SESSION)
    const sent: MessageId[] = []
    for (let i = 0; i < count; i++) {
      const k = s * PER_SESSION + i
      sent.push(
        sendMessage(device, users[k % users.length]!, { body: `Message ${k}: a typical short chat line.` })
          .id,
      )
    }
    Y.applyUpdate(relay, Y.encodeStateAsUpdate(device, before))
    for (const id of sent) assignSequenceNumbers(relay, nextFromDocument(relay), [id])
    ids.push(...sent)
  }
  return { relay, ids }
}

type Op = "message" | "edit" | "delete" | "reaction" | "marker"

/**
 * Runs `OPS` operations of one kind on a device in sync with the relay; each
 * update is checked (timed) and then applied to the relay, as the update path does.
 */
function measure(
  relay: Y.Doc,
  ids: readonly MessageId[],
  op: Op,
  ops: number,
): { median: number; mean: number } {
  const device = new Y.Doc()
  Y.applyUpdate(device, Y.encodeStateAsUpdate(relay))
  const bindings = new ClientBindings()
  const updates: Uint8Array[] = []
  device.on("update", (u: Uint8Array) => updates.push(u))
  const times: number[] = []
  const first: number[] = []
  let marker = Math.min(10, ids.length)
  // Each kind targets its own messages, spread over the whole conversation, oldest to newest.
  const phase = { message: 0, edit: 0.1, delete: 0.3, reaction: 0.6, marker: 0 }[op]
  for (let i = 0; i < ops; i++) {
    const k = Math.floor(((i + phase) / ops) * ids.length)
    const id = ids[k]!
    const author = users[k % users.length]!
    let actor = author
    updates.length = 0
    // One replica stands for every user's device: each user writes under their own client id.
    const clientOf = (user: UserId) => 1_000 + users.indexOf(user) + 100 * KINDS.indexOf(op)
    device.clientID = clientOf(
      op === "message" || op === "marker"
        ? users[i % users.length]!
        : op === "reaction"
          ? users[(k + 1) % users.length]!
          : author,
    )
    switch (op) {
      case "message":
        actor = users[i % users.length]!
        sendMessage(device, actor, { body: `A new message ${i}` })
        break
      case "edit":
        editMessage(device, author, id, `edited ${i}`)
        break
      case "delete":
        deleteMessage(device, author, id)
        break
      case "reaction":
        actor = users[(k + 1) % users.length]!
        react(device, actor, id, "👍")
        break
      case "marker":
        actor = users[i % users.length]!
        marker = Math.min(ids.length, marker + 1 + (i % 3))
        if (!markRead(device, actor, marker)) continue
        break
    }
    if (updates.length === 0) continue
    const update = updates.length === 1 ? updates[0]! : Y.mergeUpdates(updates)
    const input = { doc: relay, update, principal: { kind: "user", user: actor } as const, bindings }
    let t = performance.now()
    const result = checkUpdate(input)
    first.push((performance.now() - t) * 1000)
    // The check is pure: repeating it shows its own cost, without the collector's pauses
    // that the large heap (not the check) brings.
    let best = Number.POSITIVE_INFINITY
    for (let r = 0; r < 5; r++) {
      t = performance.now()
      checkUpdate(input)
      best = Math.min(best, (performance.now() - t) * 1000)
    }
    times.push(best)
    if (!result.allowed) throw new Error(`benchmark update refused: ${result.rule} ${result.reason}`)
    bindings.bind(result.newBindings ?? [])
    Y.applyUpdate(relay, update)
  }
  times.sort((a, b) => a - b)
  const mean = first.reduce((a, b) => a + b, 0) / first.length
  return { median: times[Math.floor(times.length / 2)]!, mean }
}

const KINDS = ["message", "edit", "delete", "reaction", "marker"] as const
// Warm up the JIT on a small conversation first, so that the first kind measured is not penalised.
for (const op of KINDS) {
  const warm = conversation(2_000)
  measure(warm.relay, warm.ids, op, 200)
}
const rows: Record<string, Record<string, number>> = {}
for (const n of [LARGE, 100]) {
  const built = performance.now()
  const { relay, ids } = conversation(n)
  const buildMs = performance.now() - built
  messageIndex(relay) // built once per loaded document; the relay's sequencing has built it already
  const row: Record<string, number> = {}
  const ops = Math.min(OPS, Math.floor(n / 5))
  for (const op of KINDS) {
    const { median, mean } = measure(relay, ids, op, ops)
    row[`${op} µs median`] = +median.toFixed(1)
    row[`${op} µs mean`] = +mean.toFixed(1)
  }
  row["checks per kind"] = ops
  row["build s"] = +(buildMs / 1000).toFixed(1)
  rows[`${n} messages`] = row
}

console.log(`Parley update authorization: ${OPS} checks per kind (node ${process.version})`)
console.table(
  Object.fromEntries(
    KINDS.map((op) => [
      op,
      Object.fromEntries(
        Object.entries(rows).flatMap(([size, row]) => [
          [`${size}: µs/check (median of best of 5)`, row[`${op} µs median`]],
          [`${size}: µs mean, first run`, row[`${op} µs mean`]],
        ]),
      ),
    ]),
  ),
)
for (const [size, row] of Object.entries(rows))
  console.log(`${size}: ${row["checks per kind"]} checks per kind, built in ${row["build s"]} s`)
mkdirSync("bench-results", { recursive: true })
writeFileSync(
  `bench-results/authorize-${Date.now()}.json`,
  JSON.stringify({ ops: OPS, results: rows }, null, 2),
)
