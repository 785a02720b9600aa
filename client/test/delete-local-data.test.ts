import "fake-indexeddb/auto"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { type ChatClient, deleteLocalData } from "../src/index.js"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

let relay: RelayProcess
let n = 0
const name = (base: string) => `${base}${process.pid}x${n++}`

beforeAll(async () => {
  relay = await startRelay()
})
afterEach(destroyClients)
afterAll(() => relay?.stop())

/** The IndexedDB databases of `user` on this (fake) device. */
async function databasesOf(user: string): Promise<string[]> {
  const listed = await indexedDB.databases()
  return listed
    .map((database) => database.name ?? "")
    .filter((database) => database.startsWith(`parley:${user}:`))
    .sort()
}

const device = (user: string) => connectClient(relay, user, { storage: "indexeddb" })

/**
 * `user` chats with `other` on this device: a conversation with a message,
 * the inbox, the list of known conversations, cached history and a file
 * upload waiting (offline), so that every kind of database the SDK makes exists.
 */
async function chatted(user: string, other: string): Promise<ChatClient> {
  const client = await device(user)
  const chat = await client.createConversation({ participants: [other] })
  chat.send(`secret of ${user}`)
  await client.flush()
  chat.connection.stop()
  chat.send({ body: "a file", files: [new Blob([new Uint8Array([1, 2, 3])], { type: "text/plain" })] })
  await eventually(async () => expect((await databasesOf(user)).length).toBeGreaterThanOrEqual(5))
  return client
}

describe("deleting a user's local data (sign-out)", () => {
  it("leaves no database of the user who signs out, and another user's untouched", async () => {
    const [a, b, c] = [name("alice"), name("bob"), name("carol")]
    const carol = await chatted(c, b)
    await carol.destroy()
    const carols = await databasesOf(c)
    const alice = await chatted(a, b)
    expect(await databasesOf(a)).toEqual(
      expect.arrayContaining([
        `parley:${a}:directory`,
        `parley:${a}:inbox~${a}`,
        `parley:${a}:inbox-pending`,
        `parley:${a}:uploads`,
      ]),
    )

    const unsaved = await alice.destroy({ deleteLocalData: true })

    // The file waiting offline was not sent: it is told, and gone with the rest.
    expect(unsaved.length).toBeGreaterThan(0)
    expect(await databasesOf(a)).toEqual([])
    expect(await databasesOf(c)).toEqual(carols)
  })

  it("deletes them without a client, also where the browser cannot list databases", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await chatted(a, b)
    await alice.destroy()
    expect((await databasesOf(a)).length).toBeGreaterThan(0)
    const list = indexedDB.databases
    // Firefox before 126 has no indexedDB.databases(): the SDK finds its databases by what it recorded.
    ;(indexedDB as { databases?: unknown }).databases = undefined
    try {
      await deleteLocalData(a)
    } finally {
      indexedDB.databases = list
    }
    expect(await databasesOf(a)).toEqual([])
  })

  it("stops the user's other tabs, which then write nothing back", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const alice = await chatted(a, b)
    const other = await device(a)
    const told: unknown[] = []
    other.on("localDataDeleted", (event) => told.push(event))
    const id = (await alice.knownConversations())[0]!.id
    const chat = await other.conversation(id).ready()

    await alice.destroy({ deleteLocalData: true })

    await eventually(() => expect(told).toHaveLength(1))
    expect(() => other.conversation(id)).toThrow(/destroyed/)
    try {
      chat.send("written after the sign-out")
    } catch {
      // A closed conversation may refuse it: what matters is that nothing is stored.
    }
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(await databasesOf(a)).toEqual([])
  })
})
