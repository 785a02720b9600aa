import "fake-indexeddb/auto"
import { ErrorCode, type ParleyError, UserLimit } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

const relays: RelayProcess[] = []
afterEach(async () => {
  await destroyClients()
  for (const relay of relays.splice(0)) await relay.stop()
})

describe("a user at the relay's limit of open conversations", () => {
  it("opens as many as the limit says, is told when one more is refused, and gets it once another closes", async () => {
    const relay = await startRelay({ args: ["--dev", "--max-documents-per-user", "2"] })
    relays.push(relay)
    const bob = await connectClient(relay, "bob-limit")
    const ids: string[] = []
    for (let i = 0; i < 3; i++) {
      const chat = await bob.createConversation({ participants: ["amy-limit"], title: `chat ${i}` })
      const sent = chat.send(`hello ${i}`)
      await eventually(() => expect(chat.status(sent.id)).toBe("sent"))
      ids.push(chat.id)
      await chat.close()
    }

    const amy = await connectClient(relay, "amy-limit")
    const errors: { error: ParleyError; conversationId?: string }[] = []
    amy.on("error", (event) => errors.push(event))
    // The SDK's inbox is open too: it is not one of the two.
    const first = await amy.conversation(ids[0]!).ready()
    const second = await amy.conversation(ids[1]!).ready()
    expect(second.messages().map((m) => m.body)).toEqual(["hello 1"])

    const third = amy.conversation(ids[2]!)
    await expect(third.ready()).rejects.toMatchObject({
      code: ErrorCode.RATE_LIMITED,
      rule: UserLimit.documents,
    })
    expect(errors).toEqual([
      expect.objectContaining({
        conversationId: ids[2],
        error: expect.objectContaining({ code: ErrorCode.RATE_LIMITED, rule: UserLimit.documents }),
      }),
    ])

    await first.close()
    await eventually(() => expect(third.state.state).toBe("ready"))
    expect(third.messages().map((m) => m.body)).toEqual(["hello 2"])
    // Told once for the run of refusals, not once per retry.
    expect(errors).toHaveLength(1)
  })
})
