import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { resolve } from "node:path"
import {
  type ConversationId,
  createConversation,
  type InboxEntry,
  type MessageId,
  markRead,
  sendMessage,
  setMuted,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { loadHooks } from "../../src/hooks/loader.js"
import { coreWithHooks, InProcessClient } from "./in-process.js"

const examples = resolve(import.meta.dirname, "../../examples/hooks")
let server: Server | undefined
afterEach(async () => {
  const open = server
  server = undefined
  if (open) await new Promise((r) => open.close(r))
})

const otherEntry: InboxEntry = {
  conversationId: "g~other" as ConversationId,
  kind: "group",
  title: "Other",
  participants: { count: 2, first: ["bob" as UserId, "dave" as UserId] },
  unread: 0,
  readUpTo: 0,
  lastActivityAt: 1,
}

interface Push {
  id: string
  to: string
  body: string
  badge: number
}

describe("the push-notification example", () => {
  it("notifies every recipient but the author, with their unread count, and skips muted users unless urgent", async () => {
    const pushes: Push[] = []
    server = createServer((req, res) => {
      let body = ""
      req.on("data", (c) => {
        body += c
      })
      req.on("end", () => {
        pushes.push(JSON.parse(body) as Push)
        res.end()
      })
    })
    await new Promise<void>((r) => server!.listen(0, "127.0.0.1", r))
    process.env.PUSH_GATEWAY_URL = `http://127.0.0.1:${(server.address() as AddressInfo).port}/push`
    const push = (await loadHooks(examples)).find((h) => h.name === "push-notifications.ts")!
    const { core, runtime } = await coreWithHooks({ hooks: [push] })
    const id = "g~push" as ConversationId
    const [alice, bob, carol] = ["alice", "bob", "carol"] as UserId[]
    const a = new InProcessClient(core, id, alice!)
    await a.connect()
    createConversation(a.doc, alice!, {
      kind: "group",
      id,
      title: "Trip",
      participants: [bob!, carol!],
    })
    // Carol muted the trip in her inbox; bob has 4 unread messages elsewhere.
    await core.write(`inbox~${carol}`, { kind: "user", user: carol! }, (inbox) => setMuted(inbox, id, true))
    const other = new InProcessClient(core, "g~other", alice!)
    await other.connect()
    createConversation(other.doc, alice!, {
      kind: "group",
      id: "g~other" as ConversationId,
      participants: [bob!],
    })
    for (let i = 0; i < 4; i++) sendMessage(other.doc, alice!, { body: `elsewhere ${i}` })
    await other.settled()
    // Membership is what an inbox records (the relay's inbox upkeep is not running here); counts are derived.
    await core.write(`inbox~${bob}`, { kind: "relay" }, (inbox) =>
      writeInboxEntry(inbox, "g~other" as ConversationId, otherEntry),
    )
    await runtime.idle()
    pushes.length = 0
    // The badge is the unread count when the notification goes out.
    for (const [n, body] of [
      [1, "first"],
      [2, "second"],
    ] as const) {
      sendMessage(a.doc, alice!, { id: `push-000${n}` as MessageId, body })
      await a.settled()
      await runtime.idle()
    }
    expect(pushes.map((p) => [p.to, p.body, p.badge])).toEqual([
      ["bob", "alice: first", 5],
      ["bob", "alice: second", 6],
    ])
    pushes.length = 0
    const b = new InProcessClient(core, id, bob!)
    await b.connect()
    markRead(b.doc, bob!)
    sendMessage(b.doc, bob!, { id: "push-0003" as MessageId, body: "on my way", priority: "emergency" })
    await b.settled()
    await runtime.idle()
    expect(pushes.map((p) => [p.to, p.body, p.badge])).toEqual([
      ["alice", "bob: on my way", 1],
      ["carol", "bob: on my way", 3],
    ])
    expect(new Set(pushes.map((p) => p.id)).size).toBe(2)
  })
})
