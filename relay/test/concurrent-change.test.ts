import {
  addParticipants,
  changeRole,
  createConversation,
  encodeView,
  newConversationId,
  Rule,
  removeParticipants,
  typesOf,
  type UserId,
} from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { TestClient } from "./helpers/clients.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

const owner = "owner" as UserId
const mallory = "mallory" as UserId
const carol = "carol" as UserId

const clients: TestClient[] = []
let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelayProcess()
})
afterAll(() => stopRelayProcesses())
afterEach(() => {
  for (const c of clients.splice(0)) c.close()
})

async function join(user: UserId, id: string, doc?: Y.Doc): Promise<TestClient> {
  const client = new TestClient(relay.url, id, await relay.token(user), doc ? { doc } : {})
  clients.push(client)
  await client.synced()
  return client
}

/** A group of the owner, mallory (an admin) and carol, saved. */
async function withAdmin(): Promise<{ id: string; owners: TestClient }> {
  const id = newConversationId()
  const owners = await join(owner, id)
  createConversation(owners.doc, owner, { kind: "group", id, participants: [mallory, carol] })
  changeRole(owners.doc, owner, mallory, "admin")
  await owners.allSaved()
  return { id, owners }
}

/** Mallory, connected, makes herself a member again. */
async function demoteHerself(id: string): Promise<TestClient> {
  const malloryClient = await join(mallory, id)
  changeRole(malloryClient.doc, mallory, mallory, "member")
  await malloryClient.allSaved()
  return malloryClient
}

describe("an owner's removal of an admin who changed her own role meanwhile (a relay process)", () => {
  it("is refused as a concurrent change, not acknowledged and lost: she stops receiving once the owner removes her again", async () => {
    const id = newConversationId()
    const owners = await join(owner, id)
    createConversation(owners.doc, owner, { kind: "group", id, participants: [mallory, carol] })
    changeRole(owners.doc, owner, mallory, "admin")
    await owners.allSaved()
    // The owner's other device, offline from here on: it has mallory as an admin.
    const offline = new Y.Doc()
    Y.applyUpdate(offline, Y.encodeStateAsUpdate(owners.doc))
    const malloryClient = await join(mallory, id)
    changeRole(malloryClient.doc, mallory, mallory, "member")
    await malloryClient.allSaved()
    removeParticipants(offline, owner, [mallory])
    // Back online: its sync carries the removal of the record mallory's change replaced (before: "saved",
    // mallory stayed a participant and kept receiving the conversation).
    const device = await join(owner, id, offline)
    await device.until(() => device.errors.length > 0)
    expect(device.errors[0]).toMatchObject({ code: "FORBIDDEN", rule: Rule.concurrentChange })
    const reader = await join(carol, id)
    expect(typesOf(reader.doc).participants.get(mallory)?.role).toBe("member")
    // The owner decides again on what the record holds now: removed for good.
    removeParticipants(owners.doc, owner, [mallory])
    await owners.allSaved()
    await reader.until(() => !typesOf(reader.doc).participants.has(mallory))
    await malloryClient.closed
    // Adding her back is an ordinary change again.
    addParticipants(owners.doc, owner, [mallory])
    await owners.allSaved()
  })

  it("is refused when the owner's link had not brought her change yet, however long ago the relay applied it (before: saved and lost)", async () => {
    const { id, owners } = await withAdmin()
    // The owner's downlink stalls (a congested mobile link): what the relay sends her waits unread.
    owners.ws.pause()
    await demoteHerself(id)
    // Well past the 3 s after which the relay once counted the demotion as seen by every connection.
    await new Promise((resolve) => setTimeout(resolve, 3500))
    removeParticipants(owners.doc, owner, [mallory])
    owners.ws.resume()
    await owners.until(() => owners.errors.length > 0)
    expect(owners.errors[0]).toMatchObject({ code: "FORBIDDEN", rule: Rule.concurrentChange })
    const reader = await join(carol, id)
    expect(typesOf(reader.doc).participants.get(mallory)?.role).toBe("member")
  })

  it("takes a whole delete set re-sent after the replica's view, and judges it without one as a removal", async () => {
    const { id } = await withAdmin()
    const carols = await join(carol, id)
    await demoteHerself(id)
    // Carol's replica got the demotion live (her sync request's state vector predates it).
    await carols.until(() => typesOf(carols.doc).participants.get(mallory)?.role === "member")
    // What the SDK re-sends: everything, the delete set naming the admin record the demotion replaced.
    const whole = Y.encodeStateAsUpdate(carols.doc)
    carols.sendUpdate(whole)
    await carols.until(() => carols.errors.length > 0)
    expect(carols.errors[0]).toMatchObject({ code: "FORBIDDEN", rule: Rule.concurrentChange })
    const saves = carols.saves.length
    carols.send(encodeView(Y.encodeStateVector(carols.doc)))
    carols.sendUpdate(whole)
    await carols.until(() => carols.saves.length > saves || carols.errors.length > 1)
    expect(carols.errors).toHaveLength(1)
  })
})
