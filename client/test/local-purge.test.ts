import "fake-indexeddb/auto"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import type { ChatClient } from "../src/index.js"
import { connectClient, destroyClients, eventually, type RelayProcess, startRelay } from "./support.js"

let relay: RelayProcess
let n = 0
const name = (base: string) => `${base}${process.pid}x${n++}`

beforeAll(async () => {
  // Small segments folded into directory pages soon: a deleted conversation's history is cached sealed.
  relay = await startRelay({
    args: [
      "--dev",
      "--history-segment-size",
      "10",
      "--history-keep-live",
      "5",
      "--history-keep-summaries",
      "2",
      "--history-fold-size",
      "2",
    ],
  })
})
afterEach(destroyClients)
afterAll(() => relay?.stop())

/** Bytes and strings read as text, so that a marker stored in a Yjs update or a segment is found. */
const asText = (value: unknown): string =>
  JSON.stringify(value, (_key, v: unknown) =>
    ArrayBuffer.isView(v)
      ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("latin1")
      : v instanceof ArrayBuffer
        ? Buffer.from(v).toString("latin1")
        : v,
  ) ?? ""

/** Where each marker is found in every object store of every IndexedDB database of `user` (`database/store`). */
async function stored(user: string, markers: readonly string[]): Promise<Record<string, string[]>> {
  const found: Record<string, string[]> = {}
  for (const { name: database } of await indexedDB.databases()) {
    if (!database?.startsWith(`parley:${user}:`)) continue
    const db = await new Promise<IDBDatabase>((resolve, reject) => {
      const request = indexedDB.open(database)
      request.onsuccess = () => resolve(request.result)
      request.onerror = () => reject(request.error)
    })
    for (const store of db.objectStoreNames) {
      const text = await new Promise<string>((resolve, reject) => {
        const objects = db.transaction(store).objectStore(store)
        const keys = objects.getAllKeys()
        const values = objects.getAll()
        values.onsuccess = () => resolve(asText(keys.result) + asText(values.result))
        values.onerror = () => reject(values.error)
      })
      for (const marker of markers)
        if (text.includes(marker)) found[marker] = [...(found[marker] ?? []), `${database}/${store}`]
    }
    db.close()
  }
  return found
}

const device = (relay: RelayProcess, user: string) => connectClient(relay, user, { storage: "indexeddb" })

/** A conversation of `owner`'s with `other`, holding `bodies` (sent in order), and its id. */
async function conversationWith(
  owner: ChatClient,
  other: string,
  bodies: readonly string[],
  title?: string,
): Promise<string> {
  const chat = await owner.createConversation({
    participants: [other],
    ...(title !== undefined ? { title } : {}),
  })
  for (const body of bodies) chat.send(body)
  await owner.flush()
  return chat.id
}

describe("local copies of deleted content", () => {
  it("removes a message deleted while the device is online from its IndexedDB, keeping unsent work elsewhere", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const bob = await connectClient(relay, b)
    const secret = `SECRETMSG${n}`
    const c = await conversationWith(bob, a, [secret, "keep me"])
    const e = await conversationWith(bob, a, ["hello"])
    const alice = await device(relay, a)
    const chat = await alice.conversation(c).ready()
    await eventually(() => expect(chat.messages().map((m) => m.body)).toEqual([secret, "keep me"]))
    // Work of another conversation not sent yet: its connection held back.
    const other = await alice.conversation(e).ready()
    other.connection.stop()
    const pending = other.send(`PENDINGE${n}`)
    expect(await stored(a, [secret])).toHaveProperty(secret)

    const bobsChat = bob.conversation(c)
    bobsChat.deleteMessage(bobsChat.messages()[0]!.id)
    await eventually(() => expect(chat.messages()[0]?.deleted).toBeDefined())
    await eventually(async () => expect(await stored(a, [secret])).toEqual({}), 10_000)
    await alice.destroy()
    const left = await stored(a, [secret, "keep me", pending.body])
    expect(left[secret]).toBeUndefined()
    expect(left["keep me"]).toBeDefined()
    expect(left[pending.body]).toBeDefined()

    // The unsent message goes out from what was kept.
    await device(relay, a)
    const bobsOther = await bob.conversation(e).ready()
    await eventually(() => expect(bobsOther.messages().map((m) => m.body)).toContain(pending.body))
  })

  it("removes a message the user deletes offline from IndexedDB, keeping the work not sent yet", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const bob = await connectClient(relay, b)
    const c = await conversationWith(bob, a, ["hi"])
    const alice = await device(relay, a)
    const chat = await alice.conversation(c).ready()
    const own = chat.send(`OWNSECRET${n}`)
    await alice.flush()
    chat.connection.stop()
    const pending = chat.send(`PENDINGC${n}`)
    chat.deleteMessage(own.id)
    // The relay's inbox entry shows it until the deletion reaches the relay: everything else drops it now.
    const elsewhere = async () =>
      Object.values(await stored(a, [own.body]))
        .flat()
        .filter((place) => !place.startsWith(`parley:${a}:inbox~`))
    await eventually(async () => expect(await elsewhere()).toEqual([]), 10_000)
    await alice.destroy()
    expect(await elsewhere()).toEqual([])
    expect(await stored(a, [pending.body])).toHaveProperty(pending.body)

    // Both go out from what was kept (the deletion and the message), and the inbox drops the preview.
    const again = await device(relay, a)
    const bobsChat = await bob.conversation(c).ready()
    await eventually(() => {
      expect(bobsChat.messages().map((m) => m.body)).toContain(pending.body)
      expect(bobsChat.message(own.id)?.deleted).toBeDefined()
    })
    await eventually(async () => expect(await stored(a, [own.body])).toEqual({}), 10_000)
    await again.destroy()
    expect(await stored(a, [own.body])).toEqual({})
  })

  it("removes a conversation deleted while the device is online from its IndexedDB without the app opening it", async () => {
    const [a, b] = [name("alice"), name("bob")]
    const bob = await connectClient(relay, b)
    const title = `SECRETTITLE${n}`
    const bodies = Array.from({ length: 45 }, (_, i) => `SECRETCONV${n}m${i}`)
    const d = await conversationWith(bob, a, bodies, title)
    const e = await conversationWith(bob, a, ["hello"])

    // A first session reads the whole conversation (its sealed history cached) and writes elsewhere offline.
    const first = await device(relay, a)
    const chat = await first.conversation(d).ready()
    await eventually(() => expect(chat.messages().at(-1)?.body).toBe(bodies.at(-1)))
    while (chat.hasOlder) await chat.loadOlder(50)
    const other = await first.conversation(e).ready()
    other.connection.stop()
    const pending = other.send(`PENDINGE${n}`)
    await first.destroy()
    const before = await stored(a, [title, bodies[0]!, bodies.at(-1)!])
    expect(Object.keys(before)).toHaveLength(3)
    expect(before[bodies[0]!]!.join()).toContain(`parley:${a}:history`)

    // The next session never opens it; the deletion reaches it through the inbox.
    const second = await device(relay, a)
    const errors: unknown[] = []
    second.on("error", ({ error }) => errors.push(error))
    await eventually(() => expect(second.inbox.items.map((i) => i.conversationId)).toContain(d))
    ;(await bob.conversation(d).ready()).delete()
    await eventually(() => expect(second.inbox.items.find((i) => i.conversationId === d)?.deleted).toBe(true))
    const markers = [title, ...bodies]
    await eventually(async () => expect(await stored(a, markers)).toEqual({}), 10_000)
    await second.destroy()
    expect(await stored(a, markers)).toEqual({})
    expect(await stored(a, [pending.body])).toHaveProperty(pending.body)
    expect(errors).toEqual([])

    // Opened again later, it syncs as any deleted conversation.
    const third = await device(relay, a)
    const again = await third.conversation(d).ready()
    await eventually(() => expect(again.info?.deletedAt).toBeDefined())
    expect(again.messages()).toEqual([])
    const bobsOther = await bob.conversation(e).ready()
    await eventually(() => expect(bobsOther.messages().map((m) => m.body)).toContain(pending.body))
  })
})
