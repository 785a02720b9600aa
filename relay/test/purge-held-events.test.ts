import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  createConversation,
  deleteConversation,
  deleteMessage,
  type MessageId,
  newConversationId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import Database from "better-sqlite3"
import { afterEach, describe, expect, it } from "vitest"
import { TestClient } from "./helpers/clients.js"
import {
  hooksApi,
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "./helpers/relay-process.js"

// What a purge removes must not reach a webhook or a hook module later from the events the relay
// already held in memory when the purge landed (a backlog behind a slow receiver, a delivery waiting
// for its retry): the stored rows are redacted, and so must be the copies waiting to be sent.

const alice = "alice" as UserId
const bob = "bob" as UserId
const WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

/**
 * Logs every `message.sent` and `message.edited` it is given (body, purged mark, attempt) to
 * `HOOK_LOG`. Its first call waits until the file `HOOK_RELEASE` exists (a slow hook module, with
 * the rest of the conversation's events queued behind it); a message whose body starts with `Fail`
 * fails its first two attempts (a delivery waiting for its retry).
 */
const RECORDER = `import { appendFileSync, existsSync } from "node:fs"
import { defineHooks } from ${JSON.stringify(hooksApi())}
const log = (line) => appendFileSync(process.env.HOOK_LOG, JSON.stringify(line) + "\\n")
let first = true
const record = async (type, id, body, purged, attempt) => {
  if (first) {
    first = false
    while (!existsSync(process.env.HOOK_RELEASE)) await new Promise((r) => setTimeout(r, 20))
  }
  log({ type, id, body, purged: purged === true, attempt })
  if (body.startsWith("Fail") && attempt <= 2) throw new Error("failing on purpose")
}
export default defineHooks({
  async onMessageSent({ subject }, { attempt }) {
    const m = subject.message ?? { id: "?", body: "" }
    await record("message.sent", m.id, m.body, m.purged ?? subject.purged, attempt)
  },
  async onMessageEdited({ subject }, { attempt }) {
    await record("message.edited", subject.messageId ?? "?", subject.body ?? "", subject.purged, attempt)
  },
})
`

interface Seen {
  readonly type: string
  readonly body: string
}

/** A webhook receiver that holds every request until {@link release} (a receiver that is slow). */
async function heldReceiver(): Promise<{
  url: string
  seen: Seen[]
  bodies: () => string
  release: () => void
}> {
  const seen: Seen[] = []
  const raw: string[] = []
  let released = false
  const waiting: (() => void)[] = []
  const server: Server = createServer((req, res) => {
    let body = ""
    req.on("data", (chunk) => {
      body += chunk
    })
    req.on("end", () => {
      raw.push(body)
      const event = JSON.parse(body) as { event: { type: string }; subject: { message?: { body?: string } } }
      seen.push({ type: event.event.type, body: event.subject.message?.body ?? "" })
      const answer = () => res.end()
      if (released) answer()
      else waiting.push(answer)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  servers.push(server)
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`,
    seen,
    bodies: () => raw.join("\n"),
    release: () => {
      released = true
      for (const answer of waiting.splice(0)) answer()
    },
  }
}

const servers: Server[] = []
const clients: TestClient[] = []
const dirs: string[] = []
afterEach(async () => {
  for (const c of clients.splice(0)) c.close()
  await stopRelayProcesses()
  for (const s of servers.splice(0)) {
    s.closeAllConnections()
    await new Promise((resolve) => s.close(resolve))
  }
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

async function until(check: () => boolean, what: string, ms = 20_000): Promise<void> {
  for (const deadline = Date.now() + ms; !check(); ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/** Whether any table of the relay's database still holds `text` (read while it runs). */
function stored(dataDir: string, text: string): boolean {
  const db = new Database(join(dataDir, "parley.sqlite"), { readonly: true })
  try {
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as {
      name: string
    }[]
    return tables.some(({ name }) =>
      (db.prepare(`SELECT * FROM "${name}"`).all() as Record<string, unknown>[]).some((row) =>
        Object.values(row).some(
          (v) =>
            (typeof v === "string" && v.includes(text)) ||
            (v instanceof Uint8Array && Buffer.from(v).toString("latin1").includes(text)),
        ),
      ),
    )
  } finally {
    db.close()
  }
}

interface Setup {
  readonly relay: RelayProcess
  readonly receiver: Awaited<ReturnType<typeof heldReceiver>>
  readonly hookLog: () => { type: string; id: string; body: string; purged: boolean; attempt: number }[]
  readonly releaseHook: () => void
}

/** A relay with a held webhook receiver and the recorder hook module. */
async function relayWithSlowTargets(): Promise<Setup> {
  const hooks = mkdtempSync(join(tmpdir(), "parley-purge-held-"))
  dirs.push(hooks)
  writeFileSync(join(hooks, "recorder.mjs"), RECORDER)
  const log = join(hooks, "seen.jsonl")
  const release = join(hooks, "release")
  const receiver = await heldReceiver()
  const relay = await startRelayProcess({
    args: ["--hooks", hooks, "--webhook", receiver.url, "--webhook-secret", WEBHOOK_SECRET],
    hooksUseHooksApi: true,
    env: { HOOK_LOG: log, HOOK_RELEASE: release },
  })
  const { readFileSync } = await import("node:fs")
  return {
    relay,
    receiver,
    hookLog: () =>
      existsSync(log)
        ? readFileSync(log, "utf8")
            .split("\n")
            .filter(Boolean)
            .map((line) => JSON.parse(line))
        : [],
    releaseHook: () => writeFileSync(release, ""),
  }
}

/** Alice's group with bob, holding one message per body (ids `message-0`, `message-1`, …), all stored. */
async function groupWith(relay: RelayProcess, bodies: readonly string[]): Promise<TestClient> {
  const id = newConversationId()
  const client = new TestClient(relay.url, id, await relay.token(alice))
  clients.push(client)
  await client.synced()
  createConversation(client.doc, alice, { kind: "group", id, participants: [bob], title: "Otter-Title" })
  for (const [n, body] of bodies.entries())
    sendMessage(client.doc, alice, { id: `message-${n}` as MessageId, body })
  await client.allSaved()
  return client
}

describe("events held in memory when a purge lands", () => {
  it("a deleted message's text reaches no webhook or hook module after its purge, though its events were queued before", async () => {
    const { relay, receiver, hookLog, releaseHook } = await relayWithSlowTargets()
    const bodies = ["Keep-0", "Keep-1", "Otter-Gone-2", "Otter-Gone-3", "Keep-4", "Otter-Gone-5"]
    const client = await groupWith(relay, bodies)
    // Both targets are busy with the conversation's first event; its messages wait behind it.
    await until(() => receiver.seen.length >= 1, "the webhook's first request")
    for (const n of [2, 3, 5]) deleteMessage(client.doc, alice, `message-${n}` as MessageId)
    await client.allSaved()
    await until(() => !stored(relay.dataDir, "Otter-Gone-"), "the purge of the stored events")
    receiver.release()
    releaseHook()
    await until(
      () => receiver.seen.filter((s) => s.type === "message.deleted").length === 3,
      "the webhook's message.deleted events",
    )
    await until(
      () => hookLog().filter((e) => e.type === "message.sent").length === bodies.length,
      "the hook's calls",
    )
    // Delivered all the same (the receiver's and the hook's own order), as purged messages.
    expect(receiver.seen.filter((s) => s.type === "message.sent").map((s) => s.body)).toEqual([
      "Keep-0",
      "Keep-1",
      "",
      "",
      "Keep-4",
      "",
    ])
    expect(receiver.bodies()).not.toContain("Otter-Gone-")
    const sent = hookLog().filter((e) => e.type === "message.sent")
    expect(sent.map((e) => [e.id, e.body, e.purged])).toEqual([
      ["message-0", "Keep-0", false],
      ["message-1", "Keep-1", false],
      ["message-2", "", true],
      ["message-3", "", true],
      ["message-4", "Keep-4", false],
      ["message-5", "", true],
    ])
  })

  it("a delivery waiting for its retry when its message is deleted is retried without the text", async () => {
    const { relay, hookLog, receiver, releaseHook } = await relayWithSlowTargets()
    receiver.release()
    releaseHook()
    const client = await groupWith(relay, ["Keep-0", "Fail-Otter-1", "Keep-2"])
    // The hook failed the message's first attempt with its text (sent before the deletion): the
    // delivery waits for its retry, a second away, with the conversation's next message behind it.
    await until(
      () => hookLog().some((e) => e.id === "message-1" && e.attempt === 1),
      "the first failed attempt",
    )
    deleteMessage(client.doc, alice, "message-1" as MessageId)
    await client.allSaved()
    await until(() => !stored(relay.dataDir, "Fail-Otter-"), "the purge of the stored events")
    const before = hookLog().length
    await until(
      () => hookLog().some((e) => e.type === "message.sent" && e.id === "message-2"),
      "the delivery of the message after it",
    )
    expect(hookLog().find((e) => e.id === "message-1")).toMatchObject({
      body: "Fail-Otter-1",
      attempt: 1,
      purged: false,
    })
    // Retries after the purge carry no text (attempts 1 and 2 fail, 1 s apart: the third comes 2 s later).
    const later = hookLog()
      .slice(before)
      .filter((e) => e.id === "message-1")
    expect(later.length).toBeGreaterThan(0)
    for (const retry of later) expect(retry).toMatchObject({ body: "", purged: true })
    expect(hookLog().map((e) => e.body)).toEqual(expect.arrayContaining(["Keep-0", "Keep-2"]))
  })

  it("a deleted conversation's title and messages reach no webhook or hook module after its purge", async () => {
    const { relay, receiver, hookLog, releaseHook } = await relayWithSlowTargets()
    const client = await groupWith(relay, ["Otter-Conv-0", "Otter-Conv-1", "Otter-Conv-2", "Otter-Conv-3"])
    await until(() => receiver.seen.length >= 1, "the webhook's first request")
    const held = receiver.bodies()
    deleteConversation(client.doc, alice)
    await client.allSaved()
    await until(
      () => !stored(relay.dataDir, "Otter-Conv-") && !stored(relay.dataDir, "Otter-Title"),
      "the purge of the stored events",
    )
    const before = receiver.seen.length
    receiver.release()
    releaseHook()
    await until(() => receiver.seen.some((s) => s.type === "conversation.deleted"), "conversation.deleted")
    await until(() => hookLog().length === 4, "the hook's calls")
    // Only the request already held when the purge landed carries what it was sent with.
    const after = receiver.bodies().slice(held.length)
    expect(receiver.seen.length).toBeGreaterThan(before)
    expect(after).not.toMatch(/Otter-Conv-|Otter-Title/)
    // The hook's first call was running (waiting) with its event when the purge landed: only it.
    expect(hookLog().map((e) => [e.body, e.purged])).toEqual([
      ["Otter-Conv-0", false],
      ["", true],
      ["", true],
      ["", true],
    ])
  })

  it("a user erased while their messages wait for a slow webhook: none of their text is sent afterwards", async () => {
    const { relay, receiver, releaseHook } = await relayWithSlowTargets()
    releaseHook()
    const id = newConversationId()
    const a = new TestClient(relay.url, id, await relay.token(alice))
    clients.push(a)
    await a.synced()
    createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
    await a.allSaved()
    const b = new TestClient(relay.url, id, await relay.token(bob))
    clients.push(b)
    await b.synced()
    for (let n = 0; n < 4; n++) {
      sendMessage(a.doc, alice, { body: `Alice-Stays-${n}` })
      sendMessage(b.doc, bob, { body: `Bob-Ibex-${n}` })
    }
    await a.allSaved()
    await b.allSaved()
    await until(() => receiver.seen.length >= 1, "the webhook's first request")
    const held = receiver.bodies()
    const erased = await fetch(`${relay.httpUrl}/admin/users/bob/content`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${await relay.token("ops", { role: "service" })}` },
    })
    expect(erased.status).toBe(200)
    await until(() => !stored(relay.dataDir, "Bob-Ibex-"), "the purge of the stored events")
    receiver.release()
    await until(
      () => receiver.seen.filter((s) => s.type === "message.deleted").length === 4,
      "message.deleted",
    )
    const after = receiver.bodies().slice(held.length)
    expect(after).not.toContain("Bob-Ibex-")
    // Alice's messages are untouched.
    expect(receiver.bodies().match(/Alice-Stays-\d/g)?.length).toBe(4)
  })
})
