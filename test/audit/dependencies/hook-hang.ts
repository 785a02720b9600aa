// A hook handler that never settles (awaits forever), one that throws, one that returns garbage.
//
//   node --conditions=parley-source --import tsx test/audit/dependencies/hook-hang.ts
//
// One relay (SQLite) with --hook-timeout-ms 500 --hook-attempts 3. Module `hang.mjs` never settles
// for a message whose body starts with "hang"; `throw.mjs` throws for "throw"; `garbage.mjs`
// returns odd values (a thenable that never calls back, a rejected non-Error). Checks: the stuck
// delivery is retried and dead-lettered (listed by /admin/dead-letters), later events of the same
// conversation are then delivered in order, another conversation is never held up, and chat is
// served throughout.
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createConversation, newConversationId, newMessageId, sendMessage, type UserId } from "@parley/shared"
import { TestClient } from "../../../relay/test/helpers/clients.js"
import { startRelayProcess } from "../../../relay/test/helpers/relay-process.js"
import { atExit, check, logSummary, RELAY_DIST, run, sleep } from "./lib.js"

const DIST_INDEX = new URL("../../../relay/dist/index.js", import.meta.url).href

run(async () => {
  const hooks = mkdtempSync(join(tmpdir(), "audit4-hang-hooks-"))
  atExit(() => rmSync(hooks, { recursive: true, force: true }))
  const log = join(hooks, "delivered.jsonl")
  appendFileSync(log, "")
  const module = (name: string, body: string) =>
    writeFileSync(
      join(hooks, name),
      `import { appendFileSync } from "node:fs"
import { defineHooks } from ${JSON.stringify(DIST_INDEX)}
export default defineHooks({
  onMessageSent({ event, subject }) {
    const text = subject.message.body
    ${body}
    appendFileSync(${JSON.stringify(log)}, JSON.stringify({ hook: ${JSON.stringify(name)}, conversation: event.conversationId, text }) + "\\n")
  },
})
`,
    )
  module("hang.mjs", `if (text.startsWith("hang")) return new Promise(() => {})`)
  module("throw.mjs", `if (text.startsWith("throw")) throw new Error("handler bug")`)
  module(
    "garbage.mjs",
    `if (text.startsWith("garbage")) return { then() {} }
    if (text.startsWith("reject")) return Promise.reject(42)`,
  )
  const relay = await startRelayProcess({
    script: RELAY_DIST,
    args: ["--hooks", hooks, "--hook-timeout-ms", "500", "--hook-attempts", "3"],
  })
  atExit(() => relay.kill())
  const open = async (user: string) => {
    const id = newConversationId()
    const client = new TestClient(relay.url, id, await relay.token(user))
    atExit(() => client.close())
    await client.synced()
    createConversation(client.doc, user as UserId, { kind: "group", id, participants: ["bob" as UserId] })
    await client.allSaved()
    return {
      id,
      client,
      say: async (text: string) => {
        sendMessage(client.doc, user as UserId, { id: newMessageId(), body: text })
        await client.allSaved()
      },
    }
  }
  const stuck = await open("alice")
  const other = await open("carol")
  const t0 = Date.now()
  await stuck.say("hang 1")
  await stuck.say("after hang")
  await stuck.say("throw 1")
  await stuck.say("garbage 1")
  await stuck.say("reject 1")
  await stuck.say("last")
  await other.say("other conversation")
  const delivered = () =>
    readFileSync(log, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { hook: string; conversation: string; text: string })
  // The other conversation is not held up by the stuck one.
  await sleep(300)
  check(
    delivered().some((d) => d.hook === "hang.mjs" && d.text === "other conversation"),
    "another conversation's event reaches the stuck hook at once",
    delivered(),
  )
  // Retries: 0.5 s timeout, 1 s and 2 s backoff, 3 attempts: about 4.5 s, then dead-lettered.
  const done = (hook: string) => delivered().some((d) => d.hook === hook && d.text === "last")
  for (let t = 0; t < 80 && !(done("hang.mjs") && done("garbage.mjs")); t++) await sleep(250)
  const hangOrder = delivered()
    .filter((d) => d.hook === "hang.mjs" && d.conversation === stuck.id)
    .map((d) => d.text)
  console.log(`hang.mjs delivered, in order: ${JSON.stringify(hangOrder)} after ${Date.now() - t0} ms`)
  check(
    JSON.stringify(hangOrder) === JSON.stringify(["after hang", "throw 1", "garbage 1", "reject 1", "last"]),
    "after the stuck event is dead-lettered, the conversation's later events follow in order",
    hangOrder,
  )
  const service = await relay.token("ops", { role: "service" })
  const dead = (await (
    await fetch(`${relay.httpUrl}/admin/dead-letters`, { headers: { authorization: `Bearer ${service}` } })
  ).json()) as {
    deadLetters?: { target: string; lastError?: string; attempts: number }[]
  }
  const letters = (dead.deadLetters ??
    (dead as unknown as { target: string; lastError?: string; attempts: number }[])) as {
    target: string
    lastError?: string
    attempts: number
  }[]
  console.log("dead letters:", JSON.stringify(letters.map((d) => [d.target, d.attempts, d.lastError])))
  for (const hook of ["hang.mjs", "throw.mjs", "garbage.mjs"])
    check(
      letters.some((d) => d.target === `hook:${hook}`),
      `${hook}'s failing delivery is a dead letter`,
    )
  check(
    letters.filter((d) => d.target === "hook:garbage.mjs").length === 2,
    "garbage.mjs: the stuck thenable and the rejected 42 both dead-lettered",
  )
  check(relay.child.exitCode === null, "the relay is still running")
  const t1 = Date.now()
  await other.say("still served")
  check(Date.now() - t1 < 2000, "chat is served", Date.now() - t1)
  console.log("relay warnings/errors:", logSummary(relay.lines))
})
