import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  listMessages,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import { storedEventLog } from "../helpers/event-log.js"
import {
  hooksApi,
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../helpers/relay-process.js"
import { readLines } from "./recorder.js"

// The relay processes here load it with `hooksUseHooksApi`: the relay compiled for the test run.
const api = hooksApi()

/**
 * Answers every message it did not write itself as `helper-bot`, without a
 * message id, and logs each attempt's outcome to `HOOK_LOG`. With
 * `HOOK_FAIL_ATTEMPTS=N` it throws after its writes on the first N attempts
 * (a handler whose writes landed but whose acknowledgement did not); with
 * `HOOK_HANG=1` it never finishes after its writes (so that a test can kill the relay).
 */
const REPLY_BOT = `import { appendFileSync } from "node:fs"
import { defineHooks } from ${JSON.stringify(api)}
const failures = Number(process.env.HOOK_FAIL_ATTEMPTS ?? "0")
const log = (line) => appendFileSync(process.env.HOOK_LOG, JSON.stringify(line) + "\\n")
export default defineHooks({
  async onMessageSent(event, { conversations, isOwnWrite, attempt }) {
    if (isOwnWrite(event)) return
    const message = event.subject.message
    try {
      await conversations.send(event.conversation.id, "helper-bot", { body: "re: " + message.body, replyTo: message.id })
      if (process.env.HOOK_MORE === "1") {
        await conversations.send(event.conversation.id, "helper-bot", { body: "and another thing" })
        await conversations.react(event.conversation.id, "helper-bot", message.id, "👀")
        const side = await conversations.create("helper-bot", { kind: "group", participants: [message.author], title: "side" })
        await conversations.send(side.id, "helper-bot", { body: "in private" })
        await conversations.rename(side.id, "helper-bot", "side, answered")
      }
    } catch (error) {
      log({ message: message.id, attempt, ok: false, error: String(error) })
      throw error
    }
    if (process.env.HOOK_HANG === "1") await new Promise(() => {})
    if (attempt <= failures) {
      log({ message: message.id, attempt, ok: false, error: "failing on purpose" })
      throw new Error("failing on purpose, after writing")
    }
    log({ message: message.id, attempt, ok: true })
  },
})
`

interface Outcome {
  message: string
  attempt: number
  ok: boolean
  error?: string
}

// Tests here run at once and share the machine with another test file: each takes longer than
// alone (up to 20 s on a loaded 2-core machine), so each gets more than the default 20 s.
const CONCURRENT_TIMEOUT_MS = 60_000

const dirs: string[] = []
// After the file, not after each test: the tests run at once (relays and hook folders of their own).
afterAll(async () => {
  await stopRelayProcesses()
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

const id = "g~helpdesk" as ConversationId
const alice = "alice" as UserId

async function until(check: () => boolean, what: string, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

async function relayWithBot(
  env: NodeJS.ProcessEnv = {},
  on?: RelayProcess,
): Promise<{ relay: RelayProcess; outcomes: () => Outcome[] }> {
  const hooks = mkdtempSync(join(tmpdir(), "parley-hooks-idempotent-"))
  dirs.push(hooks)
  writeFileSync(join(hooks, "reply-bot.mjs"), REPLY_BOT)
  const log = join(hooks, "outcomes.jsonl")
  const relay = await startRelayProcess({
    args: ["--hooks", hooks, "--hook-attempts", "4", "--hook-timeout-ms", "600000"],
    hooksUseHooksApi: true,
    env: { HOOK_LOG: log, ...env },
    ...(on ? { dataDir: on.dataDir, secret: on.secret } : {}),
  })
  return { relay, outcomes: () => readLines(log) as unknown as Outcome[] }
}

/** Alice's conversation with the bot, after she sent `bodies`. */
async function aliceAsks(relay: RelayProcess, bodies: readonly string[]): Promise<TestClient> {
  const client = new TestClient(relay.url, id, await relay.token("alice"))
  await client.opened
  await client.synced()
  createConversation(client.doc, alice, { kind: "group", id, participants: ["helper-bot" as UserId] })
  for (const [n, body] of bodies.entries())
    sendMessage(client.doc, alice, { id: `question-${n}` as MessageId, body })
  await client.allSaved()
  return client
}

const settledFor = (outcomes: Outcome[], messages: readonly string[], attempts: number) =>
  messages.every((m) => {
    const mine = outcomes.filter((o) => o.message === m)
    return mine.some((o) => o.ok) || mine.length >= attempts
  })

describe.concurrent("hook writes across retries", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  it("posts one reply per message when a handler sends without a message id", async () => {
    const { relay, outcomes } = await relayWithBot()
    const client = await aliceAsks(relay, ["hello", "are you there?"])
    await until(() => settledFor(outcomes(), ["question-0", "question-1"], 4), "the bot to finish")
    await until(() => listMessages(client.doc, { last: 50 }).length >= 4, "the replies")
    // Give a wrongly retried handler time to post again before counting.
    await new Promise((r) => setTimeout(r, 300))
    const replies = listMessages(client.doc, { last: 50 }).filter((m) => m.author === "helper-bot")
    expect(replies.map((m) => [m.body, m.replyTo])).toEqual([
      ["re: hello", "question-0"],
      ["re: are you there?", "question-1"],
    ])
    // The first attempt succeeded: nothing was retried.
    expect(outcomes().map((o) => [o.message, o.attempt, o.ok])).toEqual([
      ["question-0", 1, true],
      ["question-1", 1, true],
    ])
    client.close()
  }, 60_000)

  it("writes each of a handler's writes once when the handler fails after them and is retried", async () => {
    const { relay, outcomes } = await relayWithBot({ HOOK_FAIL_ATTEMPTS: "2", HOOK_MORE: "1" })
    const client = await aliceAsks(relay, ["hello"])
    await until(() => outcomes().some((o) => o.ok), "the third attempt to succeed").catch((error) => {
      throw new Error(`${error.message}: ${JSON.stringify(outcomes())}`)
    })
    expect(outcomes().map((o) => [o.attempt, o.ok])).toEqual([
      [1, false],
      [2, false],
      [3, true],
    ])
    await until(() => listMessages(client.doc, { last: 50 }).length >= 3, "the replies")
    await new Promise((r) => setTimeout(r, 300))
    expect(
      listMessages(client.doc, { last: 50 }).map((m) => [m.author, m.body, Object.keys(m.reactions)]),
    ).toEqual([
      ["alice", "hello", ["👀"]],
      ["helper-bot", "re: hello", []],
      ["helper-bot", "and another thing", []],
    ])
    // The event log holds every write once: one side conversation, one message in it, one rename, one reaction.
    const log = storedEventLog(relay.dataDir)
    const byBot = log.filter((e) => e.event.event.actor.kind === "bot").map((e) => e.event.event.type)
    const count = (type: string) => byBot.filter((t) => t === type).length
    expect(count("conversation.created")).toBe(1)
    expect(count("message.sent")).toBe(3)
    expect(count("reaction.added")).toBe(1)
    expect(count("conversation.updated")).toBe(1)
    client.close()
  }, 60_000)

  it("writes each of a handler's writes once when the relay dies after them and delivers the event again", async () => {
    const { relay: first } = await relayWithBot({ HOOK_HANG: "1", HOOK_MORE: "1" })
    const client = await aliceAsks(first, ["hello"])
    // The handler wrote everything, then hangs: its delivery is never acknowledged.
    await until(
      () => storedEventLog(first.dataDir).some((e) => e.event.event.type === "conversation.updated"),
      "the handler's last write",
    )
    client.close()
    await first.kill()
    const { relay: second, outcomes } = await relayWithBot({ HOOK_MORE: "1" }, first)
    await until(() => outcomes().some((o) => o.ok), "the redelivery to succeed")
    const byBot = storedEventLog(second.dataDir)
      .filter((e) => e.event.event.actor.kind === "bot")
      .map((e) => e.event.event.type)
    const count = (type: string) => byBot.filter((t) => t === type).length
    expect([count("message.sent"), count("conversation.created"), count("reaction.added")]).toEqual([3, 1, 1])
    expect(count("conversation.updated")).toBe(1)
  }, 60_000)
})
