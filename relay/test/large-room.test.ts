import {
  addParticipants,
  createConversation,
  newConversationId,
  PRESENCE_STAMP,
  type UserId,
} from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import type { WebSocket } from "ws"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { stockProvider, synced } from "./helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

/** Members of the room (`PARLEY_LARGE_ROOM_MEMBERS` to try more; all run in this one process). */
const MEMBERS = Number(process.env.PARLEY_LARGE_ROOM_MEMBERS ?? 200)

const providers: WebsocketProvider[] = []
let relay: RelayProcess
beforeAll(async () => {
  // One owner adds every member at once; the per-user rate of additions is not what is tested.
  relay = await startRelayProcess({ args: ["--user-participants-per-minute", "0"] })
})
afterAll(() => stopRelayProcesses())
afterEach(() => {
  for (const p of providers.splice(0)) p.destroy()
})

/** Resolves once `check()` holds, polling. */
async function until(check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error("timed out")
    await new Promise((r) => setTimeout(r, 50))
  }
}

describe("a large room of stock y-websocket clients", () => {
  it(`keeps all ${MEMBERS} members connected and shows each their presence, in few frames per socket`, async () => {
    const id = newConversationId()
    const users = Array.from({ length: MEMBERS }, (_, i) => `member-${i}` as UserId)
    const closes: number[] = []
    const open = async (user: UserId) => {
      const p = stockProvider(relay.url, id, await relay.token(user), new Y.Doc())
      p.on("connection-close", (event: { code: number } | null) => closes.push(event?.code ?? 0))
      providers.push(p)
      return p
    }
    const owner = await open(users[0]!)
    await synced(owner)
    createConversation(owner.doc, users[0]!, { kind: "group", id, participants: [] })
    addParticipants(owner.doc, users[0]!, users.slice(1))
    const opened = [owner, ...(await Promise.all(users.slice(1).map(open)))]
    await Promise.all(opened.map(synced))

    // Frames one member receives while everyone announces themselves.
    let framesToOne = 0
    ;(opened[1]!.ws as WebSocket | null)?.addEventListener("message", () => framesToOne++)
    for (const [i, p] of opened.entries()) p.awareness.setLocalStateField("name", users[i])
    const seesEveryone = (p: WebsocketProvider) =>
      opened.every((other, j) => {
        const state = p.awareness.getStates().get(other.awareness.clientID)
        return state?.name === users[j] && (other === p || state?.[PRESENCE_STAMP] === users[j])
      })
    await until(() => opened.every(seesEveryone), 60_000)

    expect(closes).toEqual([])
    // Without coalescing each member gets one frame per other member's announcement.
    expect(framesToOne).toBeLessThan(MEMBERS / 4)
  }, 120_000)
})

describe("a stock client's echoes", () => {
  it("do not count against its socket's awareness budget", async () => {
    const strict = await startRelayProcess({
      args: ["--socket-awareness-per-second", "1", "--socket-awareness-burst", "5"],
    })
    const id = newConversationId()
    const users = Array.from({ length: 12 }, (_, i) => `echo-${i}` as UserId)
    const closes: number[] = []
    const open = async (user: UserId) => {
      const p = stockProvider(strict.url, id, await strict.token(user), new Y.Doc())
      p.on("connection-close", (event: { code: number } | null) => closes.push(event?.code ?? 0))
      providers.push(p)
      await synced(p)
      return p
    }
    const owner = await open(users[0]!)
    createConversation(owner.doc, users[0]!, { kind: "group", id, participants: users.slice(1) })
    const opened = [owner]
    for (const user of users.slice(1)) opened.push(await open(user))
    // Each member announces once (within its budget); each provider re-sends the 11 others' announcements.
    for (const [i, p] of opened.entries()) {
      p.awareness.setLocalStateField("name", users[i])
      await new Promise((r) => setTimeout(r, 30))
    }
    await until(
      () =>
        opened.every((p) =>
          opened.every((o, j) => p.awareness.getStates().get(o.awareness.clientID)?.name === users[j]),
        ),
      20_000,
    )
    expect(closes).toEqual([])
  }, 60_000)
})
