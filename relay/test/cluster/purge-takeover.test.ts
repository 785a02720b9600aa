import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import {
  createConversation,
  deleteMessage,
  type MessageId,
  newConversationId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import { TestClient } from "../helpers/clients.js"
import { redisUnreachable, startCluster } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"
import { until } from "../helpers/until.js"

// The cluster's form of relay/test/hooks/purge-kill.test.ts: the relay ordering a conversation is
// SIGKILLed right after a message's deletion is acknowledged, while the message's `message.sent` waits
// in the PostgreSQL outbox for a webhook's retry; the relay that takes the conversation over owes the
// purge (held back ten minutes here, so that the retry always comes due first) and must not send it.

const alice = "alice" as UserId
const HELD_LOG = "hook deliveries held until the conversation's purge is done"

const cleanup: (() => unknown)[] = []
afterAll(async () => {
  for (const step of cleanup.splice(0).reverse()) await step()
})

const missing = (await postgresUnreachable()) ?? (await redisUnreachable())

describe("a relay ordering a conversation dies right after a message's deletion", () => {
  if (missing && process.env.PARLEY_REQUIRE_SERVICES !== "1") {
    it.skip(`skipped: PostgreSQL or Redis unreachable (${missing})`, () => {})
    return
  }
  it("the relay taking it over holds the message's webhook retry until its purge, and other conversations' hooks go on", async () => {
    let failing = true
    const received: { conversation: string; type: string; body?: string }[] = []
    const server: Server = createServer((req, res) => {
      let body = ""
      req.on("data", (chunk) => {
        body += chunk
      })
      req.on("end", () => {
        const event = JSON.parse(body) as {
          event: { type: string; conversationId: string }
          subject: { message?: { body: string } }
        }
        received.push({
          conversation: event.event.conversationId,
          type: event.event.type,
          ...(event.subject?.message ? { body: event.subject.message.body } : {}),
        })
        res.statusCode = failing && event.event.type === "message.sent" ? 503 : 204
        res.end()
      })
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    cleanup.push(() => new Promise((resolve) => server.close(resolve)))
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`
    const cluster = await startCluster(2, {
      args: [
        "--webhook",
        url,
        "--webhook-secret",
        "s3cret",
        "--purge-delay-ms",
        "600000",
        "--log-level",
        "debug",
      ],
    })
    cleanup.push(() => cluster.stop())
    const sentOf = (conversation: string) =>
      received.filter((r) => r.conversation === conversation && r.type === "message.sent")

    const id = newConversationId()
    const secret = "SECRET-cluster-takeover"
    const client = new TestClient(cluster.relay(0).url, id, await cluster.token("alice"))
    cleanup.push(() => client.close())
    await client.synced()
    createConversation(client.doc, alice, { kind: "group", id, participants: ["bob" as UserId] })
    const message = "msg-secret" as MessageId
    sendMessage(client.doc, alice, { id: message, body: secret })
    await client.allSaved()
    await until(
      () => sentOf(id).length,
      (n) => n === 1,
    )
    await cluster.relay(0).waitForLog((line) => line.msg === "hook delivery failed, will retry")
    deleteMessage(client.doc, alice, message)
    await client.allSaved()
    await cluster.kill(0)
    client.close()
    failing = false

    // Relay 1 takes the conversation over (its outbox owes a delivery) once the dead owner's lease lapses.
    const survivor = cluster.relay(1)
    await Promise.race([
      survivor.waitForLog(
        (line) =>
          line.msg === HELD_LOG && line.conversationId === id && String(line.hook).startsWith("webhook:"),
      ),
      until(
        () => sentOf(id).length,
        (n) => n > 1,
        60_000,
      ),
    ])
    expect(sentOf(id).slice(1)).toEqual([])

    const other = newConversationId()
    const otherClient = new TestClient(survivor.url, other, await cluster.token("alice"))
    cleanup.push(() => otherClient.close())
    await otherClient.synced()
    createConversation(otherClient.doc, alice, { kind: "group", id: other, participants: ["bob" as UserId] })
    sendMessage(otherClient.doc, alice, { body: "hello" })
    await otherClient.allSaved()
    await until(
      () => sentOf(other).map((r) => r.body),
      (bodies) => bodies.includes("hello"),
      30_000,
    )
    expect(sentOf(id).slice(1)).toEqual([])
    expect(received.filter((r) => r.body === secret)).toHaveLength(1)
  }, 120_000)
})
