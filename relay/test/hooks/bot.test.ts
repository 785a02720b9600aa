import { resolve } from "node:path"
import {
  addParticipants,
  type ConversationId,
  createConversation,
  listMessages,
  type MessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { describe, expect, it } from "vitest"
import { defineHooks } from "../../src/hooks/define.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { loadHooks } from "../../src/hooks/loader.js"
import { HOOK_CHAIN_LIMIT } from "../../src/hooks/runtime.js"
import { coreWithHooks, InProcessClient } from "./in-process.js"

const alice = "alice" as UserId
const id = "g~bot" as ConversationId
const examples = resolve(import.meta.dirname, "../../examples/hooks")

describe("a bot writing through the hook context", () => {
  it("answers /echo once, through the update path, as a bot event it does not answer itself", async () => {
    const echo = (await loadHooks(examples)).find((h) => h.name === "echo-bot.ts")!
    const seen: HookEvent<"message.sent">[] = []
    const watcher = defineHooks({
      onMessageSent: (event) => {
        seen.push(event)
      },
    })
    const { core, runtime } = await coreWithHooks({
      hooks: [echo, { name: "watcher.ts", path: "watcher.ts", hooks: watcher }],
    })
    const a = new InProcessClient(core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [] })
    addParticipants(a.doc, alice, ["echo-bot" as UserId])
    sendMessage(a.doc, alice, { id: "ask-00001" as MessageId, body: "/echo hello there" })
    sendMessage(a.doc, alice, { id: "chat-0001" as MessageId, body: "no command here" })
    await a.settled()
    await runtime.idle()
    // Both of alice's messages were handled; the bot's reply is in alice's replica (broadcast) and sequenced.
    await a.settled()
    const messages = listMessages(a.doc, { last: 10 })
    expect(messages.map((m) => [m.author, m.body, m.seq])).toEqual([
      ["alice", "/echo hello there", 1],
      ["alice", "no command here", 2],
      ["echo-bot", "hello there", 3],
    ])
    expect(messages[2]!.replyTo).toBe("ask-00001")
    const reply = seen.find((e) => e.subject.message.author === "echo-bot")!
    expect(reply.event.actor).toEqual({ kind: "bot", user: "echo-bot", hook: "echo-bot.ts" })
    expect(seen).toHaveLength(3)
  })

  it("refuses a bot write its user is not allowed to make, and retries it", async () => {
    let attempts = 0
    const bot = defineHooks({
      async onMessageSent(event, { conversations, isOwnWrite }) {
        if (isOwnWrite(event)) return
        attempts++
        await conversations.send(event.conversation.id, "outsider" as UserId, { body: "let me in" })
      },
    })
    const { core, runtime } = await coreWithHooks({ hooks: [{ name: "bot.ts", path: "bot.ts", hooks: bot }] })
    const a = new InProcessClient(core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, { kind: "group", id, participants: [] })
    sendMessage(a.doc, alice, { body: "hi" })
    await a.settled()
    await runtime.idle()
    expect(attempts).toBe(3)
    const [dead] = await runtime.deadLetters()
    expect(dead).toMatchObject({ target: "hook:bot.ts", attempts: 3 })
    expect(dead!.lastError).toContain("participants")
    expect(listMessages(a.doc, { last: 10 }).map((m) => m.author)).toEqual(["alice"])
  })

  it("stops two bots answering each other after a chain of HOOK_CHAIN_LIMIT writes, dead-letters the next, and still answers people", async () => {
    // Neither tests isOwnWrite: each answers every message the other writes.
    const answering = (me: string) =>
      defineHooks({
        async onMessageSent(event, { conversations }) {
          if (event.subject.message.author === me) return
          await conversations.send(event.conversation.id, me as UserId, {
            body: `${me} heard ${event.subject.message.author}`,
          })
        },
      })
    const { core, runtime } = await coreWithHooks({
      hooks: [
        { name: "ping.ts", path: "ping.ts", hooks: answering("ping") },
        { name: "pong.ts", path: "pong.ts", hooks: answering("pong") },
      ],
    })
    const a = new InProcessClient(core, id, alice)
    await a.connect()
    createConversation(a.doc, alice, {
      kind: "group",
      id,
      participants: ["ping" as UserId, "pong" as UserId],
    })
    sendMessage(a.doc, alice, { body: "hello bots" })
    await a.settled()
    await runtime.idle()
    await a.settled()
    const authors = () => listMessages(a.doc, { last: 100 }).map((m) => m.author)
    // alice's message, each bot's answer to her, then their exchange: each chain ends at the limit.
    const bots = authors().filter((author) => author !== "alice")
    expect(bots).toHaveLength(2 * HOOK_CHAIN_LIMIT)
    const dead = await runtime.deadLetters()
    expect(dead.length).toBeGreaterThan(0)
    expect(dead.every((d) => d.lastError.includes("hook-chain") && d.attempts === 1)).toBe(true)

    // The conversation's later events still reach both bots: alice is answered again.
    sendMessage(a.doc, alice, { body: "still there?" })
    await a.settled()
    await runtime.idle()
    await a.settled()
    const after = listMessages(a.doc, { last: 200 })
    const asked = after.findIndex((m) => m.body === "still there?")
    expect(after.slice(asked + 1).map((m) => m.body)).toEqual(
      expect.arrayContaining(["ping heard alice", "pong heard alice"]),
    )
  })
})
