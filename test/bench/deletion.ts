/**
 * What deleting one message costs the relay in a room of M members (default
 * 10 and 1,000), none of them connected: the relay's CPU (this process) from
 * the deletion's write until the hooks are idle, the purge included (log
 * compaction, stored hook events redacted, WAL truncated, the inboxes that
 * stored the message's preview rewritten). SQLite in a temp directory, the
 * relay in process. Then a stream: `--stream` deletions (default 50) one
 * after another, each written once the one before is saved (a user deleting
 * as fast as the relay answers), and the CPU per deletion of the whole stream
 * until the hooks are idle. Then a batch: `--batch` messages (default 100)
 * deleted in one change (a device's offline sync), and the CPU until the
 * hooks are idle. Prints figures; asserts nothing.
 *
 *   npm run bench:deletion [-- --members 10,1000 --deletions 5 --batch 100]
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { startRelay } from "@parley/relay"
import {
  addParticipants,
  type ConversationId,
  createConversation,
  deleteMessage,
  inboxDocumentName,
  listMessages,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { median } from "./stats.js"

const { values: flags } = parseArgs({
  options: {
    members: { type: "string", default: "10,1000" },
    deletions: { type: "string", default: "5" },
    stream: { type: "string", default: "50" },
    batch: { type: "string", default: "100" },
  },
})

for (const members of flags.members.split(",").map(Number)) {
  const dataDir = mkdtempSync(join(tmpdir(), "parley-bench-deletion-"))
  const relay = await startRelay({
    port: 0,
    dataDir,
    inbox: true,
    log: "silent",
    dev: true,
    // Members' inboxes, written by the creation, are stored and dropped a second after (as in a room
    // whose members are not online); later messages reach no stored inbox.
    limits: { userParticipantsPerMinute: 0, idleUnloadMs: 1_000 },
  })
  try {
    const users = Array.from({ length: members }, (_, i) => `member${i}` as UserId)
    const author = { kind: "user", user: users[0]! } as const
    const id = "g~deletion" as ConversationId
    await relay.core.write(id, author, (doc) => {
      createConversation(doc, users[0]!, { kind: "group", id, participants: [], title: "Everyone" })
      addParticipants(doc, users[0]!, users.slice(1))
    })
    // The members' inboxes are written by the hooks pipeline after the creation is saved, then dropped.
    const loadedInboxes = () => users.filter((user) => relay.core.isLoaded(inboxDocumentName(user))).length
    const pause = () => new Promise((resolve) => setTimeout(resolve, 100))
    for (let waited = 0; loadedInboxes() < users.length && waited < 100; waited++) await pause()
    await relay.hooks?.idle()
    while (loadedInboxes() > 0) await pause()
    // A deletion's purge runs 100 ms after it (shared with the deletions meanwhile), its hooks after that.
    const settled = async () => {
      await relay.hooks?.idle()
      await new Promise((resolve) => setTimeout(resolve, 300))
      await relay.hooks?.idle()
    }
    const deletions = Number(flags.deletions)
    const stream = Number(flags.stream)
    const batch = Number(flags.batch)
    for (let i = 0; i < deletions + stream + batch + 10; i++)
      await relay.core.write(id, author, (doc) => void sendMessage(doc, users[0]!, { body: `message ${i}` }))
    await relay.hooks?.idle()
    const all = await relay.core.read(id, (doc) =>
      listMessages(doc, { last: deletions + stream + batch }).map((m) => m.id),
    )
    const batched = all.slice(0, batch)
    const streamed = all.slice(batch, batch + stream)
    const ids = all.slice(batch + stream)
    const cpu: number[] = []
    for (const message of ids) {
      const start = process.cpuUsage()
      await relay.core.write(id, author, (doc) => deleteMessage(doc, users[0]!, message))
      await settled()
      const used = process.cpuUsage(start)
      cpu.push((used.user + used.system) / 1000)
    }
    const start = process.cpuUsage()
    for (const message of streamed)
      await relay.core.write(id, author, (doc) => deleteMessage(doc, users[0]!, message))
    await settled()
    const used = process.cpuUsage(start)
    const batchStart = process.cpuUsage()
    await relay.core.write(id, author, (doc) => {
      for (const message of batched) deleteMessage(doc, users[0]!, message)
    })
    await settled()
    const batchUsed = process.cpuUsage(batchStart)
    console.log(
      `${members} members: one message deleted, relay CPU median ${median(cpu).toFixed(1)} ms (${cpu.map((c) => c.toFixed(1)).join(", ")}); ` +
        `${stream} deleted one after another: ${((used.user + used.system) / 1000 / stream).toFixed(1)} ms each; ` +
        `${batch} deleted in one change: ${((batchUsed.user + batchUsed.system) / 1000).toFixed(1)} ms`,
    )
  } finally {
    await relay.close()
    rmSync(dataDir, { recursive: true, force: true })
  }
}
process.exit(0)
