import {
  addParticipants,
  changeRole,
  createConversation,
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
})
