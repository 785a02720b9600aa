import {
  createConversation,
  MessageType,
  newConversationId,
  PRESENCE_STAMP,
  Rule,
  sendMessage,
  type UserId,
} from "@parley/shared"
import * as encoding from "lib0/encoding"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { WebSocket } from "ws"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { DEFAULT_AWARENESS_LIMITS } from "../src/awareness-gate.js"
import { parseConfig } from "../src/config.js"
import { stockProvider, synced, TestClient } from "./helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId

const providers: WebsocketProvider[] = []
const clients: TestClient[] = []
let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelayProcess()
})
afterAll(() => stopRelayProcesses())
afterEach(() => {
  for (const p of providers.splice(0)) p.destroy()
  for (const c of clients.splice(0)) c.close()
})

async function client(target: RelayProcess, name: string, user: UserId): Promise<TestClient> {
  const c = new TestClient(target.url, name, await target.token(user))
  clients.push(c)
  await c.synced()
  return c
}

/** A group of alice, bob and mallory, created by alice; resolves with alice's client once it is saved. */
async function room(target: RelayProcess): Promise<{ id: string; a: TestClient }> {
  const id = newConversationId()
  const a = await client(target, id, alice)
  createConversation(a.doc, alice, { kind: "group", id, participants: [bob, mallory] })
  await a.allSaved()
  return { id, a }
}

/** An awareness frame setting `entries` as given: any client id, any clock, any state. */
function awarenessFrame(entries: readonly { id: number; clock: number; state: unknown }[]): Uint8Array {
  const update = encoding.createEncoder()
  encoding.writeVarUint(update, entries.length)
  for (const { id, clock, state } of entries) {
    encoding.writeVarUint(update, id)
    encoding.writeVarUint(update, clock)
    encoding.writeVarString(update, JSON.stringify(state))
  }
  const frame = encoding.createEncoder()
  encoding.writeVarUint(frame, MessageType.awareness)
  encoding.writeVarUint8Array(frame, encoding.toUint8Array(update))
  return encoding.toUint8Array(frame)
}

/** Sets a test client's own awareness state on the relay. */
function announce(c: TestClient, state: object | null, clock = 1): void {
  c.send(awarenessFrame([{ id: c.doc.clientID, clock, state }]))
}

/**
 * Resolves once the relay holds `n` awareness records. (A raw client's own entry is no sign: the
 * relay sends an appearing entry back above its clock, after telling the client to move its clock
 * there, which a y-protocols awareness with no local state takes as its entry's removal.)
 */
async function relayHolds(target: RelayProcess, n: number): Promise<void> {
  while ((await awarenessRecords(target)) !== n) await new Promise((r) => setTimeout(r, 20))
}

const stateAt = (observer: TestClient, clientId: number) =>
  observer.awareness.getStates().get(clientId) as Record<string, unknown> | undefined

async function awarenessRecords(target: RelayProcess): Promise<number> {
  const text = await (await fetch(`${target.httpUrl}/metrics`)).text()
  const match = /^parley_awareness_clients (\d+)/m.exec(text)
  if (!match) throw new Error("no parley_awareness_clients in /metrics")
  return Number(match[1])
}

describe("owned presence", () => {
  it("stamps every relayed state with the user who set it, whatever user the state claims", async () => {
    const { id, a } = await room(relay)
    const m = await client(relay, id, mallory)
    announce(m, { user: bob, typing: Date.now(), [PRESENCE_STAMP]: bob })
    await a.until(() => stateAt(a, m.doc.clientID) !== undefined)
    expect(stateAt(a, m.doc.clientID)).toMatchObject({ user: bob, [PRESENCE_STAMP]: mallory })
  })

  it("ignores another user's entry being set or removed, and keeps the stock re-sender open", async () => {
    const { id, a } = await room(relay)
    const b = await client(relay, id, bob)
    announce(a, { user: alice, status: "here" })
    await b.until(() => stateAt(b, a.doc.clientID) !== undefined)
    const m = await client(relay, id, mallory)
    await m.until(() => stateAt(m, a.doc.clientID) !== undefined)
    // Overwrite alice's entry with a newer clock, then remove it, then (as a barrier) set her own.
    m.send(awarenessFrame([{ id: a.doc.clientID, clock: 5, state: { user: alice, status: "gone" } }]))
    m.send(awarenessFrame([{ id: a.doc.clientID, clock: 6, state: null }]))
    announce(m, { user: mallory })
    await b.until(() => stateAt(b, m.doc.clientID) !== undefined)
    expect(stateAt(b, a.doc.clientID)).toMatchObject({ status: "here", [PRESENCE_STAMP]: alice })
    expect(m.closeEvent).toBeUndefined()

    // Mallory leaves after touching alice's id: only mallory's entry goes.
    m.close()
    await b.until(() => stateAt(b, m.doc.clientID) === undefined)
    expect(stateAt(b, a.doc.clientID)).toMatchObject({ status: "here", [PRESENCE_STAMP]: alice })
  })

  it("reserves an announced client id: another user cannot write under it, even after a restart", async () => {
    const target = await startRelayProcess()
    const { id, a } = await room(target)
    const b = await client(target, id, bob)
    announce(b, { user: bob })
    await a.until(() => stateAt(a, b.doc.clientID) !== undefined)

    const m = await client(target, id, mallory)
    m.doc.clientID = b.doc.clientID
    sendMessage(m.doc, mallory, { body: "under bob's id" })
    await m.until(() => m.errors.length > 0)
    expect(m.errors[0]).toMatchObject({ code: "FORBIDDEN", rule: Rule.clientIdOwner })
    // Nor can she take the id over in awareness.
    m.send(awarenessFrame([{ id: b.doc.clientID, clock: 9, state: { user: mallory } }]))

    // The reservation is durable: a relay killed and started on the same data still holds it.
    await target.kill()
    const again = await startRelayProcess({ dataDir: target.dataDir, secret: target.secret })
    const m2 = await client(again, id, mallory)
    m2.doc.clientID = b.doc.clientID
    sendMessage(m2.doc, mallory, { body: "under bob's id, after a restart" })
    await m2.until(() => m2.errors.length > 0)
    expect(m2.errors[0]).toMatchObject({ code: "FORBIDDEN", rule: Rule.clientIdOwner })

    // Bob's own writes under it are stored.
    const b2 = new TestClient(again.url, id, await again.token(bob))
    clients.push(b2)
    b2.doc.clientID = b.doc.clientID
    await b2.synced()
    sendMessage(b2.doc, bob, { body: "mine" })
    await b2.allSaved()
    expect(b2.errors).toEqual([])
  })

  it("limits a flood of awareness ids and frees the relay's records once the sender leaves", async () => {
    const target = await startRelayProcess({ args: ["--max-awareness-entries", "8"] })
    const { id, a } = await room(target)
    // Above the clock of the test client's own (null) local state, so that it takes the echo.
    announce(a, { user: alice }, 5)
    await relayHolds(target, 1)
    const baseline = await awarenessRecords(target)
    expect(baseline).toBe(1)

    const m = await client(target, id, mallory)
    const many = (from: number, state: (i: number) => unknown) =>
      Array.from({ length: 20_000 }, (_, i) => ({ id: from + i, clock: 1, state: state(i) }))
    // Tens of thousands of ids: removals of ids nobody set, states for fresh ids, one state too large.
    // (Frames listing more entries than the room ever held are dropped unread; one within that bound
    // meets the per-user entry limit.)
    m.send(awarenessFrame(many(1_000_000, () => null)))
    m.send(awarenessFrame(many(2_000_000, (i) => ({ user: mallory, i }))))
    m.send(awarenessFrame(many(3_000_000, (i) => ({ user: mallory, i })).slice(0, 9)))
    m.send(awarenessFrame([{ id: m.doc.clientID, clock: 1, state: { pad: "x".repeat(10_000) } }]))
    // The last frame is a barrier: once its effect shows, the flood was handled. (Its id appeared at
    // clock 1, which the relay moved to 3 and told this client so: its next clock is 4.)
    m.send(awarenessFrame([{ id: 3_000_000, clock: 4, state: { user: mallory, done: true } }]))
    await a.until(() =>
      [...a.awareness.getStates().values()].some((s) => (s as { done?: boolean }).done === true),
    )
    const mallorys = [...a.awareness.getStates().values()].filter((s) => s[PRESENCE_STAMP] === mallory)
    expect(mallorys.length).toBeLessThanOrEqual(8)
    expect(await awarenessRecords(target)).toBeLessThanOrEqual(baseline + 8)
    expect(m.closeEvent).toBeUndefined()

    m.close()
    await m.closed
    await a.until(() => [...a.awareness.getStates().values()].every((s) => s[PRESENCE_STAMP] !== mallory))
    expect(await awarenessRecords(target)).toBe(baseline)
  })

  it("drops unread a frame listing more entries than the room's awareness ever held, and still takes the sender's own state", async () => {
    const target = await startRelayProcess()
    const { id, a } = await room(target)
    announce(a, { user: alice }, 5)
    await relayHolds(target, 1)
    const m = await client(target, id, mallory)
    // 80,000 removals of ids nobody set: about a megabyte, 50 ms of CPU each if read entry by entry.
    const removals = Array.from({ length: 80_000 }, (_, i) => ({ id: 1_000_000 + i, clock: 1, state: null }))
    for (let i = 0; i < 5; i++) m.send(awarenessFrame(removals))
    announce(m, { user: mallory, typing: true })
    await a.until(() => stateAt(a, m.doc.clientID)?.typing === true)
    const text = await (await fetch(`${target.httpUrl}/metrics`)).text()
    expect(text).toContain('parley_awareness_dropped_total{reason="entries"} 400000')
    expect(m.closeEvent).toBeUndefined()
  })

  it("holds back awareness frames over a user's budget and still applies the latest state", async () => {
    const target = await startRelayProcess({
      args: ["--awareness-frames-per-second", "1", "--awareness-burst", "1"],
    })
    const { id, a } = await room(target)
    const m = await client(target, id, mallory)
    let seen = 0
    a.awareness.on("update", ({ added, updated }: { added: number[]; updated: number[] }) => {
      if ([...added, ...updated].includes(m.doc.clientID)) seen++
    })
    for (let clock = 1; clock <= 100; clock++) announce(m, { user: mallory, n: clock }, clock)
    await a.until(() => stateAt(a, m.doc.clientID)?.n === 100)
    expect(seen).toBeLessThan(50)
    expect(m.closeEvent).toBeUndefined()
  })
})

describe("stock y-websocket clients", () => {
  it("see each other's presence, stamped, in a room where each re-sends what it receives, and stay open", async () => {
    const id = newConversationId()
    const users = [alice, bob, mallory]
    const docs = users.map(() => new Y.Doc())
    const opened: WebsocketProvider[] = []
    for (const [i, user] of users.entries()) {
      const p = stockProvider(relay.url, id, await relay.token(user), docs[i])
      providers.push(p)
      opened.push(p)
      await synced(p)
      if (i === 0) createConversation(p.doc, alice, { kind: "group", id, participants: [bob, mallory] })
    }
    const closes: number[] = []
    for (const p of opened)
      p.on("connection-close", (event: { code: number } | null) => closes.push(event?.code ?? 0))
    for (const [i, p] of opened.entries()) p.awareness.setLocalStateField("name", users[i])
    const seesAll = (p: WebsocketProvider) =>
      opened.every((other, j) => {
        if (other === p) return true
        const state = p.awareness.getStates().get(other.awareness.clientID)
        return state?.name === users[j] && state?.[PRESENCE_STAMP] === users[j]
      })
    await Promise.all(
      opened.map(
        (p) =>
          new Promise<void>((resolve) => {
            if (seesAll(p)) return resolve()
            const check = () => {
              if (!seesAll(p)) return
              p.awareness.off("change", check)
              resolve()
            }
            p.awareness.on("change", check)
          }),
      ),
    )
    // A round of changes, each re-sent by every other provider, closes nobody.
    for (const [i, p] of opened.entries()) p.awareness.setLocalStateField("name", `${users[i]}!`)
    await new Promise<void>((resolve) => {
      const check = () => {
        const done = opened.every((p) =>
          opened.every(
            (other, j) =>
              other === p || p.awareness.getStates().get(other.awareness.clientID)?.name === `${users[j]}!`,
          ),
        )
        if (done) resolve()
        else setTimeout(check, 20)
      }
      check()
    })
    expect(closes).toEqual([])
    for (const p of opened) expect((p.ws as WebSocket | null)?.readyState).toBe(WebSocket.OPEN)
  })
})

/** Resolves once `check()` holds, polling; rejects after `ms` with `what`. */
function until(check: () => boolean, ms: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const started = Date.now()
    const poll = () => {
      if (check()) return resolve()
      if (Date.now() - started > ms) return reject(new Error(`${what}: not within ${ms} ms`))
      setTimeout(poll, 20)
    }
    poll()
  })
}

/** Whether `observer` shows `other`'s state with the field `name` set to `name`. */
const shows = (observer: WebsocketProvider, other: WebsocketProvider, name: string) =>
  observer.awareness.getStates().get(other.awareness.clientID)?.name === name

/** Stock providers of alice and bob in a new group, each showing the other's presence. */
async function stockPair(target: RelayProcess): Promise<[WebsocketProvider, WebsocketProvider]> {
  const id = newConversationId()
  const a = stockProvider(target.url, id, await target.token(alice))
  providers.push(a)
  await synced(a)
  createConversation(a.doc, alice, { kind: "group", id, participants: [bob] })
  const b = stockProvider(target.url, id, await target.token(bob))
  providers.push(b)
  await synced(b)
  a.awareness.setLocalStateField("name", "alice")
  b.awareness.setLocalStateField("name", "bob")
  await until(() => shows(a, b, "bob") && shows(b, a, "alice"), 5_000, "the pair see each other")
  return [a, b]
}

// A y-protocols client re-announces its state every 15 s, and a peer ignores an entry whose clock is
// not above the one it holds: after a reconnect, the leaver's old clock is below the removal every
// peer saw, and the leaver holds the others one clock above theirs (it removed them itself).
describe("stock y-websocket clients reconnecting", () => {
  it("see each other again at once after one of them reconnects, not at the next renewal", async () => {
    const [a, b] = await stockPair(relay)
    a.disconnect()
    await until(() => !b.awareness.getStates().has(a.awareness.clientID), 5_000, "bob sees alice leave")
    a.connect()
    await until(() => shows(b, a, "alice"), 3_000, "bob sees alice again")
    await until(() => shows(a, b, "bob"), 3_000, "alice sees bob again")
    // What either changes next still reaches the other.
    a.awareness.setLocalStateField("name", "alice 2")
    b.awareness.setLocalStateField("name", "bob 2")
    await until(() => shows(b, a, "alice 2") && shows(a, b, "bob 2"), 3_000, "later changes arrive")
  })

  it("see each other again at once after the relay restarts", async () => {
    const first = await startRelayProcess()
    const [a, b] = await stockPair(first)
    await first.kill()
    await until(
      () => a.awareness.getStates().size === 1 && b.awareness.getStates().size === 1,
      5_000,
      "both see the other gone",
    )
    const again = await startRelayProcess({
      dataDir: first.dataDir,
      secret: first.secret,
      args: ["--port", String(first.port)],
    })
    expect(again.port).toBe(first.port)
    await until(() => shows(b, a, "alice") && shows(a, b, "bob"), 6_000, "the pair see each other again")
  })
})

describe("awareness limits configuration", () => {
  it("takes each limit from its flag or PARLEY_* variable, with documented defaults", () => {
    const defaults = parseConfig(["--dev"], {})
    expect(defaults).toMatchObject({ limits: DEFAULT_AWARENESS_LIMITS })
    const env = {
      PARLEY_MAX_AWARENESS_ENTRIES: "3",
      PARLEY_MAX_AWARENESS_STATE_BYTES: "512",
      PARLEY_AWARENESS_FRAMES_PER_SECOND: "4",
      PARLEY_AWARENESS_BURST: "6",
      PARLEY_AWARENESS_CLAIMS_PER_MINUTE: "2",
    }
    expect(parseConfig(["--dev", "--awareness-burst", "7"], env)).toMatchObject({
      limits: {
        maxAwarenessEntries: 3,
        maxAwarenessStateBytes: 512,
        awarenessFramesPerSecond: 4,
        awarenessBurst: 7,
        awarenessClaimsPerMinute: 2,
      },
    })
  })
})
