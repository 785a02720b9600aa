/**
 * Cost of the HTTP API: a relay process on durable SQLite, one API key, sends
 * through `POST /v1/conversations/{id}/messages` (with an Idempotency-Key, as a
 * backend would): one after another in one conversation, then from C
 * concurrent clients in C conversations. Prints figures; asserts nothing.
 *
 *   npm run bench:api [-- --messages 300 --clients 20]
 */
import { runKeysCli } from "../../relay/src/api/keys-cli.js"
import { freshDataDir } from "../../relay/test/api/helpers.js"
import { startRelayProcess, stopRelayProcesses } from "../../relay/test/helpers/relay-process.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const MESSAGES = arg("messages", 300)
const CLIENTS = arg("clients", 20)
const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!

const dataDir = freshDataDir()
const lines: string[] = []
await runKeysCli(
  ["create", "bench", "--scopes", "conversations:write,messages:write", "--data-dir", dataDir],
  (l) => lines.push(l),
  {},
)
const key = (JSON.parse(lines[0]!) as { key: string }).key
// Limits raised: this measures the relay, not its per-key rate limit.
const relay = await startRelayProcess({
  dataDir,
  args: ["--api-requests-per-second", "100000", "--api-request-burst", "100000"],
})
const headers = { authorization: `Bearer ${key}`, "content-type": "application/json" }
const post = async (path: string, body: unknown, extra: Record<string, string> = {}) => {
  const response = await fetch(`${relay.httpUrl}${path}`, {
    method: "POST",
    headers: { ...headers, ...extra },
    body: JSON.stringify(body),
  })
  await response.text()
  if (response.status >= 300) throw new Error(`${path}: ${response.status}`)
}

await post("/v1/conversations", { id: "g~bench-seq", participants: [{ user: "alice" }] })
const latencies: number[] = []
const began = performance.now()
for (let i = 0; i < MESSAGES; i++) {
  const t = performance.now()
  await post(
    "/v1/conversations/g~bench-seq/messages",
    { body: `message ${i}` },
    { "idempotency-key": `seq-${i}` },
  )
  latencies.push(performance.now() - t)
}
const sequentialMs = performance.now() - began
latencies.sort((a, b) => a - b)

for (let c = 0; c < CLIENTS; c++) await post("/v1/conversations", { id: `g~bench-${c}`, participants: [] })
const perClient = Math.max(1, Math.floor(MESSAGES / CLIENTS))
const parallelBegan = performance.now()
await Promise.all(
  Array.from({ length: CLIENTS }, async (_, c) => {
    for (let i = 0; i < perClient; i++)
      await post(
        `/v1/conversations/g~bench-${c}/messages`,
        { body: `m${i}` },
        { "idempotency-key": `p-${c}-${i}` },
      )
  }),
)
const parallelMs = performance.now() - parallelBegan

console.log(`HTTP API sends, relay process on SQLite (synchronous=FULL), Node ${process.version}`)
console.log(
  `  sequential, one conversation: ${MESSAGES} sends in ${sequentialMs.toFixed(0)} ms = ${((MESSAGES / sequentialMs) * 1000).toFixed(0)}/s; ` +
    `latency p50 ${percentile(latencies, 0.5).toFixed(1)} ms, p95 ${percentile(latencies, 0.95).toFixed(1)} ms, max ${latencies.at(-1)!.toFixed(1)} ms`,
)
console.log(
  `  ${CLIENTS} concurrent clients, one conversation each: ${CLIENTS * perClient} sends in ${parallelMs.toFixed(0)} ms = ${(((CLIENTS * perClient) / parallelMs) * 1000).toFixed(0)}/s`,
)
await stopRelayProcesses()
