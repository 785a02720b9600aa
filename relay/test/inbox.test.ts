import { execFile } from "node:child_process"
import { promisify } from "node:util"
import {
  addParticipants,
  type ConversationId,
  createConversation,
  deleteMessage,
  editMessage,
  getInboxEntry,
  InboxTopLevel,
  listInbox,
  markRead,
  removeParticipants,
  renameConversation,
  sendMessage,
  setMuted,
  totalUnread,
  type UserId,
} from "@parley/shared"
import { afterAll, describe, expect, it } from "vitest"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { docUntil, stockProvider, synced } from "./helpers/clients.js"
import {
  type RelayProcess,
  relayEntry,
  startRelayProcess,
  stopRelayProcesses,
} from "./helpers/relay-process.js"

// Tests here run at once and share the machine with another test file: each takes longer than
// alone (up to 20 s on a loaded 2-core machine), so each gets more than the default 20 s.
const CONCURRENT_TIMEOUT_MS = 60_000

const run = promisify(execFile)
const alice = "alice" as UserId
const bob = "bob" as UserId
const carol = "carol" as UserId
const id = "g~inboxtest" as ConversationId

const providers: WebsocketProvider[] = []
// After the file, not after each test: the tests run at once, each on relay processes of its own.
afterAll(() => {
  for (const p of providers.splice(0)) p.destroy()
  return stopRelayProcesses()
})

/** Destroys the providers connected to `relay`, and only those: other tests run meanwhile. */
function disconnectAll(relay: RelayProcess): void {
  for (let i = providers.length - 1; i >= 0; i--)
    if (providers[i]!.serverUrl === relay.url) providers.splice(i, 1)[0]!.destroy()
}

async function open(relay: RelayProcess, user: string, name: string): Promise<Y.Doc> {
  const provider = stockProvider(relay.url, name, await relay.token(user))
  providers.push(provider)
  await synced(provider)
  return provider.doc
}

describe.concurrent("relay-maintained inboxes", { timeout: CONCURRENT_TIMEOUT_MS }, () => {
  it("lists a conversation a user was added to, live, on a device that never opened it, and follows its messages", async () => {
    const relay = await startRelayProcess()
    const bobInbox = await open(relay, "bob", "inbox~bob")
    const conversation = await open(relay, "alice", id)
    createConversation(conversation, alice, { kind: "group", id, participants: [bob], title: "Launch" })
    await docUntil(bobInbox, () => getInboxEntry(bobInbox, id) !== undefined)
    expect(getInboxEntry(bobInbox, id)).toMatchObject({
      title: "Launch",
      unread: 0,
      participants: { count: 2 },
    })

    const ids = ["one", "two", "three"].map((body) => sendMessage(conversation, alice, { body }).id)
    await docUntil(bobInbox, () => getInboxEntry(bobInbox, id)?.unread === 3)
    expect(getInboxEntry(bobInbox, id)?.lastMessage).toMatchObject({ author: alice, text: "three", seq: 3 })

    editMessage(conversation, alice, ids[2]!, "three, edited")
    await docUntil(bobInbox, () => getInboxEntry(bobInbox, id)?.lastMessage?.text === "three, edited")
    deleteMessage(conversation, alice, ids[2]!)
    await docUntil(bobInbox, () => getInboxEntry(bobInbox, id)?.lastMessage?.deleted === true)
    expect(getInboxEntry(bobInbox, id)?.unread).toBe(2)
    renameConversation(conversation, alice, "Launch day")
    await docUntil(bobInbox, () => getInboxEntry(bobInbox, id)?.title === "Launch day")

    // Bob reads on another device: his count follows; alice's own inbox never counts her messages.
    const bobsPhone = await open(relay, "bob", id)
    markRead(bobsPhone, bob)
    await docUntil(bobInbox, () => getInboxEntry(bobInbox, id)?.unread === 0)
    expect(getInboxEntry(bobInbox, id)?.readUpTo).toBe(3)
    const aliceInbox = await open(relay, "alice", "inbox~alice")
    await docUntil(aliceInbox, () => getInboxEntry(aliceInbox, id)?.title === "Launch day")
    expect(totalUnread(aliceInbox)).toBe(0)

    // Removed users lose the entry; added ones get it.
    const carolInbox = await open(relay, "carol", "inbox~carol")
    addParticipants(conversation, alice, [carol])
    await docUntil(carolInbox, () => getInboxEntry(carolInbox, id)?.unread === 2)
    removeParticipants(conversation, alice, [bob])
    await docUntil(bobInbox, () => getInboxEntry(bobInbox, id) === undefined)
    await docUntil(carolInbox, () => getInboxEntry(carolInbox, id)?.participants.count === 2)
  })

  it("lets a user mute conversations, derives again any entry they write, and removes one the relay never listed", async () => {
    const relay = await startRelayProcess()
    const conversation = await open(relay, "alice", id)
    createConversation(conversation, alice, { kind: "group", id, participants: [bob] })
    const bobInbox = await open(relay, "bob", "inbox~bob")
    await docUntil(bobInbox, () => getInboxEntry(bobInbox, id) !== undefined)
    setMuted(bobInbox, id, true)
    const again = await open(relay, "bob", "inbox~bob")
    await docUntil(again, () => getInboxEntry(again, id)?.muted === true)

    // Entries are derived: one the user writes (a forged one, or one lost by a crashed relay) is derived again at once.
    const forger = await open(relay, "bob", "inbox~bob")
    const entries = forger.getMap(InboxTopLevel.entries)
    entries.set(id, { ...getInboxEntry(forger, id)!, title: "forged", unread: 99 } as never)
    await docUntil(forger, () => getInboxEntry(forger, id)?.unread === 0)
    expect(getInboxEntry(forger, id)?.title).toBe("")
    const check = await open(relay, "bob", "inbox~bob")
    expect(getInboxEntry(check, id)?.muted).toBe(true)
    // Nothing but entries and mute flags.
    const vandal = stockProvider(relay.url, "inbox~bob", await relay.token("bob"))
    providers.push(vandal)
    await synced(vandal)
    const closed = new Promise<number>((resolve) =>
      vandal.once("connection-close", (e: CloseEvent | null) => resolve(e?.code ?? 0)),
    )
    vandal.doc.getMap(InboxTopLevel.muted).set(id, "yes" as never)
    expect(await closed).toBe(4403)
    vandal.shouldConnect = false
    // An entry under a key the relay never listed is taken and removed again, loading nothing (deriving
    // it would load its conversation: a key of the user's choosing would load any of them). Refused
    // before, which locked out a device holding an entry whose key a crashed relay had lost.
    const inventor = await open(relay, "bob", "inbox~bob")
    inventor.getMap(InboxTopLevel.entries).set("g~forged", { title: "fake" } as never)
    await docUntil(inventor, () => !inventor.getMap(InboxTopLevel.entries).has("g~forged"))
    const after = await open(relay, "bob", "inbox~bob")
    expect(after.getMap(InboxTopLevel.entries).has("g~forged")).toBe(false)
    // Someone else's inbox cannot even be opened.
    const snoop = stockProvider(relay.url, "inbox~bob", await relay.token("carol"))
    providers.push(snoop)
    const refused = await new Promise<number>((resolve) =>
      snoop.once("connection-close", (e: CloseEvent | null) => resolve(e?.code ?? 0)),
    )
    expect(refused).toBe(4403)
  })

  it("derives the inbox of a member who was offline for every message when they connect, equal to a rebuild", async () => {
    const relay = await startRelayProcess()
    const conversation = await open(relay, "alice", id)
    createConversation(conversation, alice, { kind: "group", id, participants: [bob, carol], title: "Plans" })
    const bobInbox = await open(relay, "bob", "inbox~bob")
    for (let i = 0; i < 5; i++) sendMessage(conversation, alice, { body: `m${i}` })
    await docUntil(bobInbox, () => getInboxEntry(bobInbox, id)?.lastMessage?.text === "m4")
    // Carol never connected: she is shown the conversation as it is now, counted against her marker.
    const carolInbox = await open(relay, "carol", "inbox~carol")
    await docUntil(carolInbox, () => getInboxEntry(carolInbox, id)?.unread === 5)
    expect(getInboxEntry(carolInbox, id)).toMatchObject({
      title: "Plans",
      lastMessage: { text: "m4", seq: 5 },
    })
    const before = { bob: listInbox(bobInbox), carol: listInbox(carolInbox) }
    disconnectAll(relay)
    relay.child.kill("SIGTERM")
    await relay.exited
    // What connected users were shown is stored when their inbox unloads, so bob's and carol's entries
    // need no rewrite. Alice's own was stored by the inbox target when it recorded the creation, as the
    // conversation was when the delivery read it: stale (rewritten) if that was before her messages,
    // current if the delivery came after them (a loaded machine).
    const { stdout } = await run(process.execPath, [
      relayEntry(),
      "rebuild-inboxes",
      "--data-dir",
      relay.dataDir,
    ])
    const report = JSON.parse(stdout.trim())
    expect(report).toMatchObject({ conversations: 1, removed: 0, damaged: 0 })
    expect(report.written).toBeLessThanOrEqual(1)
    const restarted = await startRelayProcess({ dataDir: relay.dataDir, secret: relay.secret })
    expect(listInbox(await open(restarted, "bob", "inbox~bob"))).toEqual(before.bob)
    expect(listInbox(await open(restarted, "carol", "inbox~carol"))).toEqual(before.carol)
    // Two relay starts and the rebuild command: 5–16 s alone, more on a loaded machine.
  }, 60_000)

  it("takes back, from a device, entries a killed relay showed but never stored, and derives them again", async () => {
    const relay = await startRelayProcess()
    const conversation = await open(relay, "alice", id)
    createConversation(conversation, alice, { kind: "group", id, participants: [bob] })
    const bobInbox = await open(relay, "bob", "inbox~bob")
    for (let i = 0; i < 3; i++) sendMessage(conversation, alice, { body: `m${i}` })
    await docUntil(bobInbox, () => getInboxEntry(bobInbox, id)?.unread === 3)
    await relay.kill()
    const restarted = await startRelayProcess({ dataDir: relay.dataDir, secret: relay.secret })
    // The same device reconnects with what it holds, including what the relay lost.
    const device = new Y.Doc()
    Y.applyUpdate(device, Y.encodeStateAsUpdate(bobInbox))
    const provider = stockProvider(restarted.url, "inbox~bob", await restarted.token("bob"), device)
    providers.push(provider)
    const closes: number[] = []
    provider.on("connection-close", (e: CloseEvent | null) => closes.push(e?.code ?? 0))
    await synced(provider)
    const alice2 = await open(restarted, "alice", id)
    sendMessage(alice2, alice, { body: "after" })
    await docUntil(device, () => getInboxEntry(device, id)?.lastMessage?.text === "after")
    expect(getInboxEntry(device, id)?.unread).toBe(4)
    expect(closes).toEqual([])
  })
})
