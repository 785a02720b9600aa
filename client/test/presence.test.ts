import "fake-indexeddb/auto"
import { MessageType, PRESENCE_STAMP, sendMessage, type UserId } from "@parley/shared"
import * as encoding from "lib0/encoding"
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest"
import { TestClient } from "../../relay/test/helpers/clients.js"
import type { ChatClient } from "../src/index.js"
import {
  connectClient,
  destroyClients,
  devToken,
  eventually,
  type RelayProcess,
  SAVED,
  startRelay,
} from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(async () => {
  await relay?.stop()
})
const raw: TestClient[] = []
afterEach(async () => {
  for (const c of raw.splice(0)) c.close()
  await destroyClients()
})

async function rawClient(name: string, user: string): Promise<TestClient> {
  const c = new TestClient(relay.url, name, await devToken(relay, user))
  raw.push(c)
  await c.synced()
  return c
}

/** An awareness frame setting one state under any client id. */
function awarenessFrame(clientId: number, clock: number, state: unknown): Uint8Array {
  const update = encoding.createEncoder()
  encoding.writeVarUint(update, 1)
  encoding.writeVarUint(update, clientId)
  encoding.writeVarUint(update, clock)
  encoding.writeVarString(update, JSON.stringify(state))
  const frame = encoding.createEncoder()
  encoding.writeVarUint(frame, MessageType.awareness)
  encoding.writeVarUint8Array(frame, encoding.toUint8Array(update))
  return encoding.toUint8Array(frame)
}

/** Errors nobody caught, and what the SDK logged as failing, while `run` runs. */
async function watchFailures(run: () => Promise<void>): Promise<unknown[]> {
  const failures: unknown[] = []
  const record = (error: unknown) => failures.push(error)
  process.on("uncaughtException", record)
  process.on("unhandledRejection", record)
  const logged = vi.spyOn(console, "error").mockImplementation((...args) => failures.push(args))
  try {
    await run()
  } finally {
    process.off("uncaughtException", record)
    process.off("unhandledRejection", record)
    logged.mockRestore()
  }
  return failures
}

describe("presence in the SDK", () => {
  it("shows who is typing by the relay's stamp: mallory claiming to be bob shows as mallory", async () => {
    const alice = await connectClient(relay, "alice")
    const chat = await alice.createConversation({ participants: ["bob", "mallory"] })
    await eventually(() => expect(chat.connection.status).toBe("online"))
    const mallory = await rawClient(chat.id, "mallory")
    const seen: (readonly UserId[])[] = []
    chat.on("typing", ({ users }) => seen.push(users))
    const forged = { user: "bob", typing: Date.now(), [PRESENCE_STAMP]: "bob" }
    mallory.send(awarenessFrame(mallory.doc.clientID, 5, forged))
    await eventually(() => expect(chat.typingUsers).toEqual(["mallory"]))
    expect(seen.flat()).not.toContain("bob")
  })
})

/** Alice's group with bob and mallory, and bob back offline with a replica of it under a fresh client id. */
async function bobOffline(): Promise<{
  chatOfAlice: Awaited<ReturnType<ChatClient["createConversation"]>>
  bob: ChatClient
}> {
  const alice = await connectClient(relay, "alice")
  const chatOfAlice = await alice.createConversation({ participants: ["bob", "mallory"] })
  await eventually(() => expect(chatOfAlice.connection.status).toBe("online"))
  const first = await connectClient(relay, "bob", { storage: "indexeddb" })
  await first.conversation(chatOfAlice.id).ready()
  await first.destroy()
  // A new session: a new document, whose client id the relay has never seen.
  const bob = await connectClient(relay, "bob", { storage: "indexeddb", connect: false })
  await bob.conversation(chatOfAlice.id).ready()
  return { chatOfAlice, bob }
}

describe("a client id someone else wrote under first", () => {
  for (const [shape, squats] of [
    ["more structs than the owner's pending work (the owner's replica receives them)", 6],
    ["fewer structs than the owner's pending work (the relay refuses the owner's update)", 1],
  ] as const) {
    it(`moves to a new id and stores the pending messages once: ${shape}`, async () => {
      const { chatOfAlice, bob } = await bobOffline()
      const chat = await bob.conversation(chatOfAlice.id).ready()
      const pending = ["one", "two", "three"].map((body) => chat.send(body))
      const stolen = chat.doc.clientID

      // Mallory learnt the id (out of band: the relay never shows it before bob announces it).
      const mallory = await rawClient(chatOfAlice.id, "mallory")
      mallory.doc.clientID = stolen
      for (let i = 0; i < squats; i++) sendMessage(mallory.doc, "mallory" as UserId, { body: `squat ${i}` })
      await mallory.allSaved()

      const failures = await watchFailures(async () => {
        bob.connect()
        await eventually(() =>
          expect(
            chatOfAlice
              .messages({ last: 50 })
              .map((m) => m.body)
              .filter((b) => !b.startsWith("squat")),
          ).toEqual(["one", "two", "three"]),
        )
        await eventually(() => {
          for (const m of pending) expect(SAVED).toContain(chat.status(m.id))
        })
        expect(chat.doc.clientID).not.toBe(stolen)
        expect(() => bob.disconnect()).not.toThrow()
        bob.connect()
        await eventually(() => expect(chat.connection.status).toBe("online"))
        await bob.destroy()
      })
      expect(failures).toEqual([])
      expect(chatOfAlice.messages({ last: 50 }).filter((m) => m.body.startsWith("squat"))).toHaveLength(
        squats,
      )
    })
  }
})
