/**
 * Does a slow hook slow down chat? Message latency between two clients (alice
 * sends, bob's replica has it) on a relay process without hooks, then on one
 * whose hook takes one second per event (an awaited sleep, like a slow push
 * gateway); a hook that returns at once separates the cost of having hooks
 * (deriving events, the durable outbox) from the cost of a slow one. Prints
 * figures; asserts nothing.
 *
 *   node --import tsx test/bench/hook-latency.ts [--messages 50]
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { pathToFileURL } from "node:url"
import { TestClient } from "../../relay/test/helpers/clients.js"
import { startRelayProcess, stopRelayProcesses } from "../../relay/test/helpers/relay-process.js"
import {
  type ConversationId,
  createConversation,
  getMessage,
  type MessageId,
  sendMessage,
  type UserId,
} from "../../shared/src/index.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const MESSAGES = arg("messages", 50)
const api = pathToFileURL(resolve(import.meta.dirname, "../../relay/src/hooks/index.ts")).href
const SLOW_HOOK = `import { defineHooks } from ${JSON.stringify(api)}
const sleep = () => new Promise((r) => setTimeout(r, 1000))
export default defineHooks({ onMessageSent: sleep, onDocumentUpdated: sleep })
`

interface Figures {
  readonly label: string
  readonly messages: number
  readonly p50: number
  readonly p95: number
  readonly max: number
  readonly mean: number
}

function summarize(label: string, samples: number[]): Figures {
  const sorted = [...samples].sort((a, b) => a - b)
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!
  const round = (n: number) => Math.round(n * 100) / 100
  return {
    label,
    messages: sorted.length,
    p50: round(at(0.5)),
    p95: round(at(0.95)),
    max: round(sorted.at(-1)!),
    mean: round(sorted.reduce((a, b) => a + b, 0) / sorted.length),
  }
}

async function measure(label: string, args: string[]): Promise<Figures> {
  const relay = await startRelayProcess({ args })
  const id = `g~latency-${Date.now()}` as ConversationId
  const alice = new TestClient(relay.url, id, await relay.token("alice"))
  await alice.opened
  await alice.synced()
  createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: ["bob" as UserId] })
  await alice.allSaved()
  const bob = new TestClient(relay.url, id, await relay.token("bob"))
  await bob.opened
  await bob.synced()
  const samples: number[] = []
  // A few unmeasured messages first: module loading and JIT warm-up.
  for (let n = -5; n < MESSAGES; n++) {
    const messageId = `lat-${String(n + 10).padStart(6, "0")}` as MessageId
    const started = performance.now()
    sendMessage(alice.doc, "alice" as UserId, { id: messageId, body: `message ${n}` })
    await bob.until(() => getMessage(bob.doc, messageId)?.seq !== undefined)
    if (n >= 0) samples.push(performance.now() - started)
  }
  alice.close()
  bob.close()
  await stopRelayProcesses()
  return summarize(label, samples)
}

const INSTANT_HOOK = `import { defineHooks } from ${JSON.stringify(api)}
export default defineHooks({ onMessageSent() {}, onDocumentUpdated() {} })
`
const slow = mkdtempSync(join(tmpdir(), "parley-slow-hook-"))
writeFileSync(join(slow, "slow.mjs"), SLOW_HOOK)
const instant = mkdtempSync(join(tmpdir(), "parley-instant-hook-"))
writeFileSync(join(instant, "instant.mjs"), INSTANT_HOOK)
try {
  const results = [
    await measure("no hooks", []),
    await measure("hook returning at once", ["--hooks", instant]),
    await measure("hook taking 1 s per event", ["--hooks", slow]),
  ]
  console.log("Message latency alice → bob (ms), sequenced message visible on bob's replica:")
  console.table(results)
  mkdirSync("bench-results", { recursive: true })
  writeFileSync(`bench-results/hook-latency-${Date.now()}.json`, JSON.stringify(results, null, 2))
} finally {
  rmSync(slow, { recursive: true, force: true })
  rmSync(instant, { recursive: true, force: true })
}
