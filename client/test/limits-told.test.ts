import { ErrorCode, type ParleyError } from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import type { Conversation } from "../src/index.js"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  // Two new client ids per user and conversation, then one a day: a bot starting a fresh client per job
  // meets it at its third job (246 jobs at the defaults, an outside probe).
  relay = await startRelay({
    args: ["--dev", "--max-update-client-ids", "2", "--client-ids-per-user-per-day", "1"],
  })
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(destroyClients)

describe("a per-user limit that holds the device's work", () => {
  it("is told once as an error event, the message kept pending, rather than nothing at all", async () => {
    const owner = await connectClient(relay, "limits-owner")
    const room = await owner.createConversation({ participants: ["limits-bot"], title: "jobs" })
    await owner.flush()
    // Each job a fresh client (a new client id each): the first go through, then the allowance is spent.
    let errors: ParleyError[] = []
    let held: { chat: Conversation; id: string } | undefined
    for (let job = 1; job <= 6 && !held; job++) {
      const bot = await connectClient(relay, "limits-bot")
      const chat = await bot.conversation(room.id).ready()
      errors = []
      chat.on("error", ({ error }) => errors.push(error))
      const sent = chat.send(`job ${job}`)
      await eventually(() => expect(chat.status(sent.id) === "sent" || errors.length > 0).toBe(true))
      if (errors.length > 0) held = { chat, id: sent.id }
      else await bot.destroy()
    }
    expect(held).toBeDefined()
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatchObject({ code: ErrorCode.RATE_LIMITED, rule: "client-id-growth" })
    expect(held!.chat.status(held!.id)).toBe("pending")
    // Retried with backoff meanwhile, but told once.
    await new Promise((resolve) => setTimeout(resolve, 1_500))
    expect(errors).toHaveLength(1)
  })
})
