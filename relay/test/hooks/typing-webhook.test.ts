import { createServer, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import {
  type ConversationId,
  createConversation,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterAll, describe, expect, it, vi } from "vitest"
import type { HookEvent } from "../../src/hooks/events.js"
import { webhookName } from "../../src/hooks/webhook.js"
import { coreWithHooks, InProcessClient } from "./in-process.js"

const held: ServerResponse[] = []
const servers: ReturnType<typeof createServer>[] = []
afterAll(async () => {
  for (const res of held.splice(0)) res.end()
  for (const server of servers) {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  }
})

/**
 * A receiver slow to answer typing posts: it holds every `typing.started` (until the test ends) and
 * answers everything else at once, recording the message bodies it got.
 */
async function slowTypingReceiver(): Promise<{ url: string; typing: () => number; messages: string[] }> {
  let typing = 0
  const messages: string[] = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on("data", (chunk: Buffer) => chunks.push(chunk))
    req.on("end", () => {
      const event = JSON.parse(Buffer.concat(chunks).toString("utf8")) as HookEvent
      if (event.event.type === "typing.started") {
        typing++
        held.push(res)
        return
      }
      if (event.event.type === "message.sent")
        messages.push((event as HookEvent<"message.sent">).subject.message.body)
      res.statusCode = 204
      res.end()
    })
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`,
    typing: () => typing,
    messages,
  }
}

describe("typing.started webhooks", () => {
  it("take two of a webhook's connections at most, the rest dropped and counted, and never hold up another conversation's messages", async () => {
    const receiver = await slowTypingReceiver()
    const { core, metrics } = await coreWithHooks({
      webhooks: [{ url: receiver.url, secret: "s" }],
      // Typing posts are held by the receiver for as long as the test runs, not cut at the hook timeout.
      timeoutMs: 120_000,
    })
    const room = "g~typing-room" as ConversationId
    const typers = Array.from({ length: 20 }, (_, i) => `typer-${i}` as UserId)
    const owner = new InProcessClient(core, room, typers[0]!)
    await owner.connect()
    createConversation(owner.doc, typers[0]!, { kind: "group", id: room, participants: typers.slice(1) })
    await owner.settled()
    const clients = [owner]
    for (const user of typers.slice(1)) {
      const client = new InProcessClient(core, room, user)
      await client.connect()
      clients.push(client)
    }
    // Twenty users start typing: more typing posts than the webhook has connections (16).
    for (const [i, client] of clients.entries()) client.setPresence({ user: typers[i], typing: Date.now() })
    const dropped = () =>
      metrics.registry
        .getSingleMetric("parley_hook_typing_dropped_total")
        ?.get()
        .then((m) => m.values.find((v) => v.labels.target === webhookName(receiver.url))?.value ?? 0)
    await vi.waitFor(
      async () => {
        expect(receiver.typing() + ((await dropped()) ?? 0)).toBe(typers.length)
      },
      { timeout: 15_000 },
    )
    expect([receiver.typing(), await dropped()]).toEqual([2, 18])

    // Meanwhile another conversation's messages reach the webhook, its typing posts still unanswered.
    const quiet = "g~typing-quiet" as ConversationId
    const carol = new InProcessClient(core, quiet, "carol" as UserId)
    await carol.connect()
    createConversation(carol.doc, "carol" as UserId, { kind: "group", id: quiet, participants: [] })
    for (let i = 0; i < 3; i++)
      sendMessage(carol.doc, "carol" as UserId, { id: `quiet-message-${i}` as MessageId, body: `quiet ${i}` })
    await carol.settled()
    await vi.waitFor(() => expect(receiver.messages).toEqual(["quiet 0", "quiet 1", "quiet 2"]), {
      timeout: 15_000,
    })
    expect(receiver.typing()).toBe(2)
    expect(held).toHaveLength(2)
    for (const client of [...clients, carol]) client.disconnect()
    await core.close()
  }, 40_000)
})
