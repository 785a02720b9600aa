import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import {
  type ConversationId,
  createConversation,
  listMessages,
  type MessageId,
  ParleyError,
  sendMessage,
  type UserId,
} from "@parley/shared"
import pino from "pino"
import { afterAll, describe, expect, it } from "vitest"
import type { HookContext } from "../../src/hooks/define.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { HookWorker } from "../../src/hooks/worker-host.js"
import type { PushNotification } from "../../src/push/notification.js"
import { TestClient } from "../helpers/clients.js"
import { deadLetters, linesOf, untilSeen } from "../helpers/hook-process.js"
import {
  hooksApi,
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../helpers/relay-process.js"

// The relay processes here load the modules with `hooksUseHooksApi`: the relay compiled for the
// test run, which starts in about half the time of the bin's tsx loader.
const api = JSON.stringify(hooksApi())
const dirs: string[] = []
// After the file, not after each test: the tests run at once (relays and hook folders of their own).
afterAll(async () => {
  await stopRelayProcesses()
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

function hooksDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), "parley-hook-worker-"))
  dirs.push(dir)
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text)
  return dir
}

/** A module that appends `{ hook, message, attempt }` to `$HOOK_LOG` for each message it gets. */
const RECORDING = `import { appendFileSync } from "node:fs"
import { defineHooks } from ${api}
export default defineHooks({
  onMessageSent({ subject }, { hook, attempt }) {
    appendFileSync(process.env.HOOK_LOG, JSON.stringify({ hook, message: subject.message.id, attempt }) + "\\n")
  },
})
`

async function open(relay: RelayProcess, id: ConversationId, user: string): Promise<TestClient> {
  const client = new TestClient(relay.url, id, await relay.token(user))
  await client.opened
  await client.synced()
  return client
}

// Each test waits for hook timeouts (seconds) and worker restarts, on a relay of its own: they run
// at once. Sharing the machine with one another and with another test file, each takes longer
// than alone, within the 90 s each has.
describe.concurrent("hook modules in a worker thread", () => {
  it("a handler that never returns stalls neither the relay nor the other modules: its event is dead-lettered, the worker restarted", async () => {
    const log = join(mkdtempSync(join(tmpdir(), "parley-hook-log-")), "deliveries.jsonl")
    dirs.push(resolve(log, ".."))
    const hooks = hooksDir({
      "a-loop.mjs": `import { appendFileSync } from "node:fs"
import { defineHooks } from ${api}
export default defineHooks({
  onMessageSent({ subject }) {
    if (subject.message.body !== "loop") return
    appendFileSync(process.env.HOOK_LOG, JSON.stringify({ hook: "loop", message: subject.message.id }) + "\\n")
    while (true) {}
  },
})
`,
      "b-good.mjs": RECORDING,
    })
    const relay = await startRelayProcess({
      // The default 8 attempts: a call that blocks the worker twice is dead-lettered all the same. A
      // timeout well past the 2 s a handler may run without yielding, so that on a loaded machine (a
      // retry waiting for the restarted worker's modules) the block is still what stops it.
      args: ["--hooks", hooks, "--hook-timeout-ms", "8000"],
      env: { HOOK_LOG: log },
      hooksUseHooksApi: true,
    })
    const stuck = "g~stuck" as ConversationId
    const alice = await open(relay, stuck, "alice")
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id: stuck, participants: [] })
    sendMessage(alice.doc, "alice" as UserId, { id: "loop-0001" as MessageId, body: "loop" })
    await alice.allSaved()
    await untilSeen(
      () => linesOf(log).filter((l) => l.hook === "loop").length,
      (n) => n >= 1,
      "the looping handler to start",
    )

    // While the worker spins: two users chat, each sees the other's messages, and /healthz answers.
    const chat = "g~chat" as ConversationId
    const a = await open(relay, chat, "alice")
    createConversation(a.doc, "alice" as UserId, { kind: "group", id: chat, participants: ["bob" as UserId] })
    await a.allSaved()
    const b = await open(relay, chat, "bob")
    for (let n = 1; n <= 3; n++) {
      sendMessage(a.doc, "alice" as UserId, { id: `chat-a-${n}` as MessageId, body: `from alice ${n}` })
      await b.until(() => listMessages(b.doc, { last: 10 }).some((m) => m.id === `chat-a-${n}`))
      sendMessage(b.doc, "bob" as UserId, { id: `chat-b-${n}` as MessageId, body: `from bob ${n}` })
      await a.until(() => listMessages(a.doc, { last: 10 }).some((m) => m.id === `chat-b-${n}`))
    }
    const health = await fetch(`${relay.httpUrl}/healthz`)
    expect(health.status).toBe(200)

    // Stopped 2 s into its loop (not at its 8 s timeout), and its second attempt looped too: the event is
    // dead-lettered, not tried six times more, with an error that says what happened.
    const dead = await untilSeen(
      () => deadLetters(relay),
      (letters) => letters.length > 0,
      "the looping event's dead letter",
    )
    expect(dead.map((d) => [d.type, d.target, d.attempts, d.lastError])).toEqual([
      [
        "message.sent",
        "hook:a-loop.mjs",
        2,
        "hook ran 2000 ms without yielding, blocking every hook call; its worker was restarted (2 times for this event: dead-lettered instead of retried; replay it once the handler is fixed)",
      ],
    ])
    expect(linesOf(log).filter((l) => l.hook === "loop")).toHaveLength(2)
    await relay.waitForLog((l) => l.msg === "hook worker restarted: modules loaded again")
    // The well-behaved module got every message, its calls cut short by a restart retried.
    const expected = ["loop-0001", "chat-a-1", "chat-a-2", "chat-a-3", "chat-b-1", "chat-b-2", "chat-b-3"]
    const good = await untilSeen(
      () =>
        new Set(
          linesOf(log)
            .filter((l) => l.hook === "b-good.mjs")
            .map((l) => l.message),
        ),
      (seen) => expected.every((m) => seen.has(m)),
      "every message at the well-behaved module",
    )
    expect([...good].sort()).toEqual([...expected].sort())
    // And after the restart, a new message reaches it at once (the new worker serves).
    sendMessage(a.doc, "alice" as UserId, { id: "chat-after" as MessageId, body: "after the restart" })
    await untilSeen(
      () => linesOf(log).some((l) => l.hook === "b-good.mjs" && l.message === "chat-after"),
      Boolean,
      "a message after the restart",
    )
    a.close()
    b.close()
    alice.close()
  }, 90_000)

  it("a handler that loops after an await, and one that allocates without bound, cost a worker, not the relay", async () => {
    const log = join(mkdtempSync(join(tmpdir(), "parley-hook-log-")), "deliveries.jsonl")
    dirs.push(resolve(log, ".."))
    const hooks = hooksDir({
      "a-bad.mjs": `import { defineHooks } from ${api}
export default defineHooks({
  async onMessageSent({ subject }) {
    if (subject.message.body === "spin") {
      await new Promise((r) => setTimeout(r, 5))
      while (true) {}
    }
    if (subject.message.body === "hog") {
      const hoard = []
      for (;;) hoard.push(new Array(100_000).fill(hoard.length))
    }
  },
})
`,
      "b-good.mjs": RECORDING,
    })
    const relay = await startRelayProcess({
      // The default hook timeout (10 s): the loop after the await is caught by the 2 s guard, not by it.
      args: ["--hooks", hooks, "--hook-attempts", "2", "--hook-memory-mb", "64"],
      env: { HOOK_LOG: log },
      hooksUseHooksApi: true,
    })
    const id = "g~bad" as ConversationId
    const alice = await open(relay, id, "alice")
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: [] })
    sendMessage(alice.doc, "alice" as UserId, { id: "spin-0001" as MessageId, body: "spin" })
    sendMessage(alice.doc, "alice" as UserId, { id: "hog-0001" as MessageId, body: "hog" })
    sendMessage(alice.doc, "alice" as UserId, { id: "fine-0001" as MessageId, body: "fine" })
    await alice.allSaved()
    const dead = await untilSeen(
      () => deadLetters(relay),
      (letters) => letters.length >= 2,
      "both bad events' dead letters",
    )
    expect(dead.map((d) => [d.target, d.lastError])).toEqual([
      [
        "hook:a-bad.mjs",
        "hook ran 2000 ms without yielding, blocking every hook call; its worker was restarted (2 times for this event: dead-lettered instead of retried; replay it once the handler is fixed)",
      ],
      [
        "hook:a-bad.mjs",
        // Its heap limit, or (allocating slowly on a loaded machine) 2 s without yielding: a worker either
        // way, and at its second the call is dead-lettered (a crash counts as a block does).
        expect.stringMatching(
          /^(the hook worker ran out of memory \(its heap limit is 64 MB, --hook-memory-mb\)|hook ran 2000 ms without yielding, blocking every hook call); its worker was restarted \(2 times for this event: dead-lettered instead of retried; replay it once the handler is fixed\)$/,
        ),
      ],
    ])
    expect((await fetch(`${relay.httpUrl}/healthz`)).status).toBe(200)
    await untilSeen(
      () => new Set(linesOf(log).map((l) => l.message)),
      (seen) => ["spin-0001", "hog-0001", "fine-0001"].every((m) => seen.has(m)),
      "every message at the well-behaved module",
    )
    // The relay process itself never restarted.
    expect(relay.child.exitCode).toBeNull()
    alice.close()
  }, 90_000)

  it("a handler looping after an await amid a backlog: only its call is blamed and dead-lettered, every other module's event delivered at its first attempt", async () => {
    const log = join(mkdtempSync(join(tmpdir(), "parley-hook-log-")), "deliveries.jsonl")
    dirs.push(resolve(log, ".."))
    const hooks = hooksDir({
      "a-spin.mjs": `import { appendFileSync } from "node:fs"
import { defineHooks } from ${api}
export default defineHooks({
  async onMessageSent({ subject }, { hook, attempt }) {
    if (subject.message.body !== "spin") return
    appendFileSync(process.env.HOOK_LOG, JSON.stringify({ hook, message: subject.message.id, attempt }) + "\\n")
    await null
    while (true) {}
  },
})
`,
      // Correct, but slow: its calls are still running (waiting for a timer) when the other loops.
      "b-slow.mjs": `import { appendFileSync } from "node:fs"
import { setTimeout } from "node:timers/promises"
import { defineHooks } from ${api}
export default defineHooks({
  async onMessageSent({ subject }, { hook, attempt }) {
    await setTimeout(200)
    appendFileSync(process.env.HOOK_LOG, JSON.stringify({ hook, message: subject.message.id, attempt }) + "\\n")
  },
})
`,
      "c-good.mjs": RECORDING,
    })
    const relay = await startRelayProcess({
      // The default hook timeout (10 s): the loop after the await is caught by the 2 s guard, not by it.
      args: ["--hooks", hooks],
      env: { HOOK_LOG: log },
      hooksUseHooksApi: true,
    })
    // A backlog: four conversations with five messages each, and right behind them the looping one.
    const expected: string[] = []
    const clients: TestClient[] = []
    for (let c = 0; c < 4; c++) {
      const id = `g~busy-${c}` as ConversationId
      const client = await open(relay, id, "alice")
      clients.push(client)
      createConversation(client.doc, "alice" as UserId, { kind: "group", id, participants: [] })
      await client.allSaved()
    }
    const spinning = await open(relay, "g~spin" as ConversationId, "alice")
    createConversation(spinning.doc, "alice" as UserId, {
      kind: "group",
      id: "g~spin" as ConversationId,
      participants: [],
    })
    await spinning.allSaved()
    for (const [c, client] of clients.entries())
      for (let n = 0; n < 5; n++) {
        const id = `busy-${c}-${n}`
        expected.push(id)
        sendMessage(client.doc, "alice" as UserId, { id: id as MessageId, body: `message ${n}` })
      }
    sendMessage(spinning.doc, "alice" as UserId, { id: "spin-0001" as MessageId, body: "spin" })
    expected.push("spin-0001")
    await Promise.all([...clients, spinning].map((client) => client.allSaved()))

    const dead = await untilSeen(
      () => deadLetters(relay),
      (letters) => letters.length > 0,
      "the looping call's dead letter",
    )
    // Blamed at each of its blocks (not re-run uncounted while others took the blame), and only it.
    expect(dead.map((d) => [d.target, d.attempts, d.lastError])).toEqual([
      [
        "hook:a-spin.mjs",
        2,
        "hook ran 2000 ms without yielding, blocking every hook call; its worker was restarted (2 times for this event: dead-lettered instead of retried; replay it once the handler is fixed)",
      ],
    ])
    expect(linesOf(log).filter((l) => l.hook === "a-spin.mjs")).toEqual([
      { hook: "a-spin.mjs", message: "spin-0001", attempt: 1 },
      { hook: "a-spin.mjs", message: "spin-0001", attempt: 2 },
    ])
    // Every message reached both correct modules, the calls cut short by a restart delivered again
    // without counting an attempt.
    for (const hook of ["b-slow.mjs", "c-good.mjs"]) {
      const seen = await untilSeen(
        () => linesOf(log).filter((l) => l.hook === hook),
        (lines) => expected.every((m) => lines.some((l) => l.message === m)),
        `every message at ${hook}`,
      )
      expect(seen.filter((l) => l.attempt !== 1)).toEqual([])
    }
    expect(await deadLetters(relay)).toHaveLength(1)
    for (const client of [...clients, spinning]) client.close()
  }, 90_000)

  it("code a handler left running after it returned charges nobody: a correct module's events are delivered at their first attempt", async () => {
    const log = join(mkdtempSync(join(tmpdir(), "parley-hook-log-")), "deliveries.jsonl")
    dirs.push(resolve(log, ".."))
    const hooks = hooksDir({
      // Returns at once, leaving a timer that loops for a while (an outside probe's LATETIMER).
      "a-late.mjs": `import { defineHooks } from ${api}
export default defineHooks({
  onMessageSent({ subject }) {
    if (subject.message.body !== "late") return
    setTimeout(() => { const end = Date.now() + 4000; while (Date.now() < end) {} }, 100)
  },
})
`,
      // Correct, and still running (waiting) when the timer loops.
      "b-slow.mjs": `import { appendFileSync } from "node:fs"
import { setTimeout } from "node:timers/promises"
import { defineHooks } from ${api}
export default defineHooks({
  async onMessageSent({ subject }, { hook, attempt }) {
    await setTimeout(300)
    appendFileSync(process.env.HOOK_LOG, JSON.stringify({ hook, message: subject.message.id, attempt }) + "\\n")
  },
})
`,
    })
    const relay = await startRelayProcess({
      args: ["--hooks", hooks, "--hook-timeout-ms", "1500"],
      env: { HOOK_LOG: log },
      hooksUseHooksApi: true,
    })
    const id = "g~late" as ConversationId
    const client = await open(relay, id, "alice")
    createConversation(client.doc, "alice" as UserId, { kind: "group", id, participants: [] })
    await client.allSaved()
    const expected: string[] = []
    for (let n = 0; n < 3; n++) {
      const messageId = `late-000${n}`
      expected.push(messageId)
      sendMessage(client.doc, "alice" as UserId, {
        id: messageId as MessageId,
        body: n === 0 ? "late" : `m${n}`,
      })
    }
    await client.allSaved()
    const seen = await untilSeen(
      () => linesOf(log).filter((l) => l.hook === "b-slow.mjs"),
      (lines) => expected.every((m) => lines.some((l) => l.message === m)),
      "every message at b-slow.mjs",
    )
    // Before: b-slow's call, awaiting when the timer looped, was charged (and dead-lettered at its second).
    expect(seen.filter((l) => l.attempt !== 1)).toEqual([])
    expect(await deadLetters(relay)).toEqual([])
    client.close()
  }, 90_000)

  it("a handler signalling the relay's own process throws instead of killing the relay", async () => {
    const hooks = hooksDir({
      "killer.mjs": `import { defineHooks } from ${api}
export default defineHooks({
  onMessageSent() {
    process.kill(process.pid, "SIGKILL")
  },
})
`,
    })
    const relay = await startRelayProcess({
      args: ["--hooks", hooks, "--hook-attempts", "1"],
      hooksUseHooksApi: true,
    })
    const id = "g~killer" as ConversationId
    const alice = await open(relay, id, "alice")
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: [] })
    sendMessage(alice.doc, "alice" as UserId, { body: "hello" })
    await alice.allSaved()
    const [dead] = await untilSeen(
      () => deadLetters(relay),
      (letters) => letters.length >= 1,
      "the killer's dead letter",
    )
    expect(dead!.lastError).toContain(
      "process.kill() of the relay's own process is not available to hook modules",
    )
    expect(relay.child.exitCode).toBeNull()
    expect((await fetch(`${relay.httpUrl}/healthz`)).status).toBe(200)
    alice.close()
  }, 60_000)

  it("a handler's writes through its context work, logged with the relay's bindings, and are not repeated by a retry after a restart", async () => {
    const hooks = hooksDir({
      "echo.mjs": `import { defineHooks } from ${api}
export default defineHooks({
  async onMessageSent(event, { conversations, inboxes, attempt, log, isOwnWrite }) {
    if (isOwnWrite(event)) return
    const sent = await conversations.send(event.event.conversationId, "bot", { body: "echo: " + event.subject.message.body })
    const { participants } = await conversations.get(event.event.conversationId)
    const { totalUnread } = await inboxes.summary("alice")
    log.info({ sent: sent.id, attempt, members: participants.length, totalUnread }, "echoed")
    // The first attempt wrote, then blocks its worker: the retry writes again, under the same id.
    if (attempt === 1) while (true) {}
  },
})
`,
    })
    const relay = await startRelayProcess({
      args: ["--hooks", hooks, "--hook-timeout-ms", "1500"],
      hooksUseHooksApi: true,
    })
    const id = "g~echo" as ConversationId
    const alice = await open(relay, id, "alice")
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: ["bot" as UserId] })
    sendMessage(alice.doc, "alice" as UserId, { id: "echo-0001" as MessageId, body: "hello" })
    await alice.allSaved()
    const second = await relay.waitForLog((l) => l.msg === "echoed" && l.attempt === 2)
    const first = await relay.waitForLog((l) => l.msg === "echoed" && l.attempt === 1)
    expect(second.sent).toBe(first.sent)
    expect(second).toMatchObject({
      members: 2,
      totalUnread: expect.any(Number),
      component: "hooks",
      hook: "echo.mjs",
      eventType: "message.sent",
      conversationId: id,
    })
    await alice.until(() => listMessages(alice.doc, { last: 10 }).some((m) => m.author === "bot"))
    const echoes = listMessages(alice.doc, { last: 10 }).filter((m) => m.author === "bot")
    expect(echoes.map((m) => [m.id, m.body])).toEqual([[first.sent, "echo: hello"]])
    expect(await deadLetters(relay)).toEqual([])
    alice.close()
  }, 90_000)

  it("a handler's huge log line reaches the relay's log cut to 16 KiB, with its level, and the relay keeps serving", async () => {
    const hooks = hooksDir({
      "chatty.mjs": `import { defineHooks } from ${api}
export default defineHooks({
  onMessageSent(event, { log }) {
    log.warn({ dump: "x".repeat(5_000_000) }, "dumped")
    log.info({ id: event.subject.message.id }, "after the dump")
  },
})
`,
    })
    const relay = await startRelayProcess({ args: ["--hooks", hooks], hooksUseHooksApi: true })
    const id = "g~chatty" as ConversationId
    const alice = await open(relay, id, "alice")
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: [] })
    sendMessage(alice.doc, "alice" as UserId, { id: "chatty-0001" as MessageId, body: "hello" })
    await alice.allSaved()
    const cut = await relay.waitForLog((l) => typeof l.msg === "string" && l.msg.includes("was cut"))
    expect(cut).toMatchObject({ level: 40, hook: "chatty.mjs" })
    expect(String(cut.start)).toMatch(/^\{"level":40/)
    expect(JSON.stringify(cut).length).toBeLessThan(20_000)
    await relay.waitForLog((l) => l.msg === "after the dump" && l.id === "chatty-0001")
    alice.close()
  }, 60_000)

  /**
   * A relay whose hook module writes `line` (an expression of `i`) 20,000 times for one message, yielding
   * every 100 (so that no worker guard fires), and the client that sent it.
   */
  async function flooding(name: string, line: string) {
    const hooks = hooksDir({
      [`${name}.mjs`]: `import { defineHooks } from ${api}
import fs from "node:fs"
import { writeSync } from "node:fs"
import { setImmediate } from "node:timers/promises"
export default defineHooks({
  async onMessageSent(event, { log }) {
    for (let i = 0; i < 20000; i++) {
      ${line}
      if (i % 100 === 0) await setImmediate()
    }
  },
})
`,
    })
    const relay = await startRelayProcess({ args: ["--hooks", hooks], hooksUseHooksApi: true })
    const id = `g~${name}` as ConversationId
    const alice = await open(relay, id, "alice")
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: [] })
    sendMessage(alice.doc, "alice" as UserId, { body: "hello" })
    await alice.allSaved()
    return { relay, alice }
  }

  it("a handler logging in a loop reaches the relay's log at a bounded rate, the rest counted, and the relay keeps serving", async () => {
    const { relay, alice } = await flooding("flood", `log.info({ i, pad: "y".repeat(2000) }, "flood")`)
    const dropped = await relay.waitForLog(
      (l) => typeof l.msg === "string" && l.msg.includes("lines were dropped"),
    )
    expect(dropped).toMatchObject({ level: 40 })
    // Before: all 20,000 lines crossed to the main thread and were parsed there.
    expect(relay.lines.filter((l) => l.includes('"flood"')).length).toBeLessThan(2_000)
    const started = Date.now()
    expect((await fetch(`${relay.httpUrl}/healthz`)).status).toBe(200)
    expect(Date.now() - started).toBeLessThan(1_000)
    alice.close()
  }, 60_000)

  it("a handler printing in a loop (console.log) reaches the relay's log as lines under the same budget", async () => {
    const { relay, alice } = await flooding("printer", `console.log("printed", i, "z".repeat(2000))`)
    const printed = await relay.waitForLog(
      (l) => typeof l.output === "string" && l.output.startsWith("printed"),
    )
    expect(printed).toMatchObject({ level: 30, msg: "hook module stdout" })
    await relay.waitForLog((l) => typeof l.msg === "string" && l.msg.includes("lines were dropped"))
    // Before: Node copied all 20,000 lines (40 MB) to the relay's stdout as they came.
    expect(relay.lines.filter((l) => l.includes("printed")).length).toBeLessThan(2_000)
    alice.close()
  }, 60_000)

  it("a handler writing to the file descriptors 1 and 2 or through process._rawDebug reaches the relay's log as JSON lines under the same budget", async () => {
    const { relay, alice } = await flooding(
      "descriptors",
      `fs.writeSync(1, "spam-fd1 " + i + "\\n"); writeSync(2, Buffer.from("spam-fd2 " + i + "\\n")); fs.write(1, "spam-write " + i + "\\n", () => {}); process._rawDebug("spam-raw", i)`,
    )
    await relay.waitForLog((l) => typeof l.output === "string" && l.output.startsWith("spam-raw"))
    await relay.waitForLog((l) => typeof l.msg === "string" && l.msg.includes("lines were dropped"))
    // Let the loop run out (20,000 rounds, 200 a second's turn of the worker at most).
    await new Promise((r) => setTimeout(r, 1_500))
    const spam = relay.lines.filter((l) => l.includes("spam-"))
    // Before: 80,000 raw lines on the relay's stdout and stderr, none of them JSON.
    expect(spam.length).toBeGreaterThan(0)
    expect(spam.length).toBeLessThan(2_000)
    for (const line of spam)
      expect(JSON.parse(line)).toMatchObject({ msg: expect.stringMatching(/^hook module std(out|err)$/) })
    expect(JSON.parse(spam.find((l) => l.includes("spam-fd1"))!)).toMatchObject({
      level: 30,
      output: "spam-fd1 0",
    })
    expect(relay.stderr()).not.toContain("spam-")
    alice.close()
  }, 60_000)

  it("a handler's context operations refuse bad or unclonable arguments with INVALID_ARGUMENT naming them", async () => {
    const hooks = hooksDir({
      "prober.mjs": `import { defineHooks } from ${api}
export default defineHooks({
  async onMessageSent(event, { conversations, inboxes, log, isOwnWrite }) {
    if (isOwnWrite(event)) return
    const id = event.event.conversationId
    const tries = {
      nulls: () => conversations.send(null, null, null),
      noInput: () => conversations.send(id, "alice", null),
      toJSON: () => conversations.send(id, "alice", { body: "x", metadata: { a: { toJSON() { return 1 } } } }),
      toStringUser: () => conversations.send(id, { toString() { return "alice" } }, { body: "x" }),
      badUser: () => inboxes.summary("../x"),
      badId: () => conversations.get("../../etc"),
    }
    const results = {}
    for (const [name, attempt] of Object.entries(tries))
      try {
        await attempt()
        results[name] = "ok"
      } catch (e) {
        results[name] = e.code + " " + e.message
      }
    log.info({ results }, "probed")
  },
})
`,
    })
    const relay = await startRelayProcess({ args: ["--hooks", hooks], hooksUseHooksApi: true })
    const id = "g~probe" as ConversationId
    const alice = await open(relay, id, "alice")
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: [] })
    sendMessage(alice.doc, "alice" as UserId, { body: "hello" })
    await alice.allSaved()
    const { results } = (await relay.waitForLog((l) => l.msg === "probed")) as {
      results: Record<string, string>
    }
    expect(results).toEqual({
      nulls: "INVALID_ARGUMENT invalid conversation id: null",
      noInput: "INVALID_ARGUMENT conversations.send: input must be an object",
      toJSON: expect.stringMatching(
        /^INVALID_ARGUMENT conversations\.send: argument 3 cannot reach the relay \(.*\): pass plain data$/,
      ),
      toStringUser: expect.stringMatching(
        /^INVALID_ARGUMENT conversations\.send: argument 2 cannot reach the relay/,
      ),
      badUser: 'INVALID_ARGUMENT invalid user id: "../x"',
      badId: 'INVALID_ARGUMENT invalid conversation id: "../../etc"',
    })
    alice.close()
  }, 60_000)

  it("a module that fails to load in the worker refuses the start with exit code 2, naming its file", async () => {
    const hooks = hooksDir({
      "ok.mjs": RECORDING,
      "broken.mjs": "export default defineHooks({ onMessageSent( }\n",
    })
    const relay = startRelayProcess({ args: ["--hooks", hooks], hooksUseHooksApi: true })
    await expect(relay).rejects.toThrow(/exited \(code 2[\s\S]*broken\.mjs failed to load/)
  }, 60_000)

  it("loads a TypeScript module in a package that says CommonJS (as `npm init` writes it), and says how to fix a .js one", async () => {
    const commonjs = JSON.stringify({ name: "app", type: "commonjs" })
    const typescript = hooksDir({
      "package.json": commonjs,
      "bot.ts": `import { defineHooks } from ${api}\nconst typed: number = 1\nexport default defineHooks({ onMessageSent() { void typed } })\n`,
    })
    const relay = await startRelayProcess({ args: ["--hooks", typescript], hooksUseHooksApi: true })
    expect((await fetch(`${relay.httpUrl}/healthz`)).status).toBe(200)
    await relay.kill()
    const javascript = hooksDir({
      "package.json": commonjs,
      "plain.js": `import { defineHooks } from ${api}\nexport default defineHooks({})\n`,
    })
    await expect(
      startRelayProcess({ args: ["--hooks", javascript], hooksUseHooksApi: true }),
    ).rejects.toThrow(/plain\.js failed to load[\s\S]*needs "type": "module" in its package\.json/)
  }, 60_000)
})

describe("HookWorker", () => {
  it("refuses a push notification handler's huge or odd return value in the worker, naming the bound, and ignores an event handler's", async () => {
    const dir = hooksDir({
      "big.mjs": `import { defineHooks } from ${api}
export default defineHooks({
  onMessageSent() {
    return "z".repeat(50 * 1024 * 1024)
  },
  onPushNotification(notification) {
    if (notification.title === "huge") return "y".repeat(50 * 1024 * 1024)
    if (notification.title === "long") return { ...notification, body: "b".repeat(5000) }
    if (notification.title === "number") return 42
    // Small as JSON when checked, huge when cloned: a getter answering anew, a Map JSON leaves out.
    let reads = 0
    if (notification.title === "getter")
      return { ...notification, get body() { return reads++ ? "g".repeat(50 * 1024 * 1024) : "short" } }
    if (notification.title === "map") return { ...notification, extra: new Map([[1, "m".repeat(50 * 1024 * 1024)]]) }
    return { ...notification, title: "rewritten" }
  },
})
`,
    })
    const silent = pino({ level: "silent" })
    const worker = await HookWorker.start({ dir, log: silent, timeoutMs: 10_000 })
    try {
      const notification = {
        title: "huge",
        body: "hello",
        sender: { id: "alice", name: "Alice" },
        conversationId: "g~big",
        messageId: "m1",
        badge: 1,
        priority: "normal",
        urgency: "normal",
      } as unknown as PushNotification
      const event = { event: { id: "evt_1", type: "message.sent" } } as unknown as HookEvent<"message.sent">
      const push = (title: string) =>
        worker.push(
          0,
          { ...notification, title },
          {
            hook: "big.mjs",
            recipient: "bob" as UserId,
            event,
            log: silent,
            signal: new AbortController().signal,
          },
        )
      const bound = "it may return only undefined, false or a notification of at most 4 KiB as JSON"
      await expect(push("huge")).rejects.toThrow(
        `onPushNotification returned a string of ${50 * 1024 * 1024} characters: ${bound}`,
      )
      await expect(push("long")).rejects.toThrow(
        /^onPushNotification returned a notification of \d+ bytes as JSON: it may return only/,
      )
      await expect(push("number")).rejects.toThrow(`onPushNotification returned a number: ${bound}`)
      await expect(push("fine")).resolves.toMatchObject({ title: "rewritten", body: "hello" })
      // What was checked is what comes back (before: 50 MB cloned to the relay's main thread, which hung).
      await expect(push("getter")).resolves.toMatchObject({ title: "getter", body: "short" })
      expect(await push("map")).toEqual({ ...notification, title: "map", extra: {} })
      // An event handler's return value means nothing: never posted, the call succeeds.
      await expect(
        worker.call(0, "onMessageSent", event, { attempt: 1, signal: new AbortController().signal }, {
          log: silent,
        } as unknown as HookContext),
      ).resolves.toBeUndefined()
    } finally {
      await worker.stop()
    }
  })

  it("refuses a module whose top-level code never returns, naming it, once the load limit has passed", async () => {
    const dir = hooksDir({ "spin.mjs": "while (true) {}\n" })
    const error = await HookWorker.start({
      dir,
      log: pino({ level: "silent" }),
      timeoutMs: 1_000,
      loadTimeoutMs: 300,
      graceMs: 100,
    }).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(ParleyError)
    expect((error as ParleyError).message).toBe(
      `hook script ${join(dir, "spin.mjs")} failed to load: it did not finish loading within 300 ms (a top-level await that never settles, or code that never returns?)`,
    )
  })
})
