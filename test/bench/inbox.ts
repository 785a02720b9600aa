/**
 * Cost of keeping inboxes current: one conversation of N participants (default
 * 50), M messages sent one after another through the relay's update path, on
 * durable SQLite storage, with and without the inbox target. Prints figures;
 * asserts nothing.
 *
 *   npm run bench:inbox [-- --participants 50 --messages 200]
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { startRelay } from "@parley/relay"
import { type ConversationId, createConversation, sendMessage, type UserId } from "@parley/shared"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const PARTICIPANTS = arg("participants", 50)
const MESSAGES = arg("messages", 200)
const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!

async function run(inbox: boolean) {
  const dataDir = mkdtempSync(join(tmpdir(), "parley-bench-inbox-"))
  const relay = await startRelay({ port: 0, dataDir, inbox, log: "silent", dev: true })
  const users = Array.from({ length: PARTICIPANTS }, (_, i) => `user${i}` as UserId)
  const id = "g~inboxbench" as ConversationId
  await relay.core.write(id, { kind: "user", user: users[0]! }, (doc) =>
    createConversation(doc, users[0]!, { kind: "group", id, participants: users.slice(1) }),
  )
  await relay.hooks?.idle()
  const saved: number[] = []
  const settled: number[] = []
  const cpuStart = process.cpuUsage()
  const wallStart = performance.now()
  for (let i = 0; i < MESSAGES; i++) {
    const author = users[i % users.length]!
    const t0 = performance.now()
    await relay.core.write(id, { kind: "user", user: author }, (doc) => {
      sendMessage(doc, author, { body: `message ${i} of the inbox benchmark` })
    })
    saved.push(performance.now() - t0)
    await relay.hooks?.idle()
    settled.push(performance.now() - t0)
  }
  const wallMs = performance.now() - wallStart
  const cpu = process.cpuUsage(cpuStart)
  await relay.close()
  rmSync(dataDir, { recursive: true, force: true })
  saved.sort((a, b) => a - b)
  settled.sort((a, b) => a - b)
  return {
    inbox,
    savedP50Ms: +percentile(saved, 0.5).toFixed(2),
    inboxesCurrentP50Ms: +percentile(settled, 0.5).toFixed(2),
    inboxesCurrentP95Ms: +percentile(settled, 0.95).toFixed(2),
    cpuMsPerMessage: +((cpu.user + cpu.system) / 1000 / MESSAGES).toFixed(2),
    wallMsPerMessage: +(wallMs / MESSAGES).toFixed(2),
  }
}

const without = await run(false)
const withInbox = await run(true)
console.log(
  `Inbox upkeep: ${PARTICIPANTS} participants, ${MESSAGES} messages, SQLite (node ${process.version})`,
)
console.table([without, withInbox])
console.log(
  `inbox upkeep per message: ${(withInbox.cpuMsPerMessage - without.cpuMsPerMessage).toFixed(2)} ms CPU, ` +
    `${(withInbox.wallMsPerMessage - without.wallMsPerMessage).toFixed(2)} ms wall (${PARTICIPANTS} inbox entries rewritten each)`,
)
