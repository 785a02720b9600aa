import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createServer, type IncomingHttpHeaders, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  type ConversationId,
  createConversation,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { verifyWebhook, webhookName } from "../../src/hooks/webhook.js"
import { TestClient } from "../helpers/clients.js"
import { hooksApi, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"

const api = hooksApi()
const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
const cleanup: (() => void)[] = []
afterEach(async () => {
  await stopRelayProcesses()
  for (const f of cleanup.splice(0)) f()
})

async function receiver() {
  const received: { headers: IncomingHttpHeaders; body: string }[] = []
  const state = { status: 400 }
  const server: Server = createServer((req, res) => {
    let body = ""
    req.on("data", (c) => {
      body += c
    })
    req.on("end", () => {
      received.push({ headers: req.headers, body })
      res.statusCode = state.status
      res.end()
    })
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  cleanup.push(() => server.close())
  // The receiver's credential in its URL, as many take it (Slack's /services/…, a ?token=).
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/services/T0/B0/Receiver-Secret-7?token=Query-Secret-9`,
    received,
    state,
  }
}

async function until<T>(probe: () => Promise<T>, ok: (value: T) => boolean): Promise<T> {
  for (;;) {
    const value = await probe()
    if (ok(value)) return value
    await new Promise((r) => setTimeout(r, 25))
  }
}

describe("dead letters of a running relay", () => {
  it("are listed and replayed over /admin/dead-letters with a service token only", async () => {
    const hooks = mkdtempSync(join(tmpdir(), "parley-hooks-admin-"))
    cleanup.push(() => rmSync(hooks, { recursive: true, force: true }))
    writeFileSync(
      join(hooks, "failing.mjs"),
      `import { defineHooks } from ${JSON.stringify(api)}\nexport default defineHooks({ onMessageSent() { throw new Error("push gateway down") } })\n`,
    )
    const hook = await receiver()
    const relay = await startRelayProcess({
      hooksUseHooksApi: true,
      args: ["--hooks", hooks, "--hook-attempts", "1", "--webhook", hook.url],
      env: { PARLEY_WEBHOOK_SECRET: SECRET },
    })
    const id = "g~admin" as ConversationId
    const alice = new TestClient(relay.url, id, await relay.token("alice"))
    await alice.opened
    await alice.synced()
    createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: [] })
    sendMessage(alice.doc, "alice" as UserId, { id: "admin-001" as MessageId, body: "hi" })
    await alice.allSaved()

    const service = await relay.token("ops", { role: "service" })
    const list = async (token?: string) => {
      const response = await fetch(`${relay.httpUrl}/admin/dead-letters`, {
        headers: token ? { authorization: `Bearer ${token}` } : {},
      })
      return {
        status: response.status,
        body: (await response.json()) as { deadLetters?: Record<string, unknown>[] },
      }
    }
    expect((await list()).status).toBe(401)
    expect((await list(await relay.token("alice"))).status).toBe(403)
    // The webhook got conversation.created and message.sent, answered 400 (final), and the hook threw once.
    const listed = await until(
      () => list(service),
      (r) => (r.body.deadLetters?.length ?? 0) === 3,
    )
    expect(listed.body.deadLetters!.map((d) => [d.type, d.target, d.lastError])).toEqual([
      ["conversation.created", webhookName(hook.url), `${webhookName(hook.url)} answered 400`],
      ["message.sent", `hook:failing.mjs`, "push gateway down"],
      ["message.sent", webhookName(hook.url), `${webhookName(hook.url)} answered 400`],
    ])
    expect(webhookName(hook.url)).toMatch(/^webhook:http:\/\/127\.0\.0\.1:\d+#[0-9a-f]{8}$/)
    const metrics = await (await fetch(`${relay.httpUrl}/metrics`)).text()
    expect(metrics).toContain('parley_hook_dead_letters_total{target="hook:failing.mjs"} 1')
    // /metrics is open by default, and logs travel: neither shows the receiver's credential (before, both did).
    expect(`${metrics}\n${relay.lines.join("\n")}`).not.toMatch(/Receiver-Secret|Query-Secret/)

    // The receiver is fixed: replay its dead letters; it gets the same ids, signed.
    hook.state.status = 204
    const deadIds = listed.body
      .deadLetters!.filter((d) => d.target === webhookName(hook.url))
      .map((d) => d.eventId)
    const replay = await fetch(`${relay.httpUrl}/admin/dead-letters/replay`, {
      method: "POST",
      headers: { authorization: `Bearer ${service}` },
      body: JSON.stringify({ target: webhookName(hook.url) }),
    })
    expect(replay.status).toBe(200)
    expect(((await replay.json()) as { replayed: unknown[] }).replayed).toHaveLength(2)
    await until(
      async () => hook.received.length,
      (n) => n === 4,
    )
    const after = await list(service)
    expect(after.body.deadLetters![0]!.target).toBe("hook:failing.mjs")
    const delivered = hook.received.slice(-2)
    expect(delivered.map((r) => r.headers["webhook-id"])).toEqual(deadIds)
    for (const r of delivered)
      expect(verifyWebhook(SECRET, r.headers, r.body).event.id).toBe(r.headers["webhook-id"])
  })
})
