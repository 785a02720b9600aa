import { createConversation, listMessages, MessageType, type UserId } from "@parley/shared"
import * as decoding from "lib0/decoding"
import { describe, expect, it } from "vitest"
import * as Y from "yjs"
import { createLogger } from "../src/log.js"
import { RelayMetrics } from "../src/metrics.js"
import { AuthorizationPolicy } from "../src/policy/authorization-policy.js"
import { MemoryClientBindingStore } from "../src/policy/client-bindings.js"
import { RelayCore } from "../src/relay-core.js"
import { MemoryStorage } from "../src/storage/memory.js"
import { FakeSession, until, updateFrame } from "./helpers/core-session.js"
import { gappedWrites } from "./helpers/gapped-writes.js"

const alice = "alice" as UserId

/** How many sync requests (sync step 1) the relay sent `session`. */
const syncRequests = (session: FakeSession): number =>
  session.frames.filter((frame) => {
    const d = decoding.createDecoder(frame)
    return decoding.readVarUint(d) === MessageType.sync && decoding.readVarUint(d) === 0
  }).length

/**
 * A device's update that follows one of its own the relay never stored (refused
 * while storage failed, or lost with a relay that had not acknowledged it): the
 * device still has that change, so the refusal is retryable, and sending its
 * pending work again stores both. (It was FORBIDDEN, and the SDK rebuilt its
 * replica after every storage outage.)
 */
describe("an update that follows changes of its client the relay does not have", () => {
  it("is refused as retryable (UNAVAILABLE), and the pending work sent again whole is stored", async () => {
    const core = new RelayCore({
      storage: new MemoryStorage(),
      log: createLogger("silent"),
      metrics: new RelayMetrics({ defaultMetrics: false }),
      extensions: [new AuthorizationPolicy(new MemoryClientBindingStore())],
    })
    try {
      const id = "g~gapped"
      const session = new FakeSession({ kind: "user", user: alice })
      const connection = await core.connect(id, session)
      const device = new Y.Doc()
      createConversation(device, alice, { kind: "group", id: id as never, participants: [] })
      connection.receive(updateFrame(Y.encodeStateAsUpdate(device)))
      await until(() => session.parley().length === 1)
      // The relay never got the first of these.
      const { gapped, whole } = gappedWrites(device, alice)
      connection.receive(updateFrame(gapped))
      await until(() => session.parley().length === 2)
      expect(session.parley()[1]).toMatchObject({
        type: "error",
        error: { code: "UNAVAILABLE", rule: "missing-changes" },
      })
      expect(session.closed).toBeUndefined()
      // Not asked for again by the relay (a sync request), as after a dependency failing: the refusal of the
      // part it follows decides (one refused for good was asked for, and sent, again and again; a storage
      // failure asks once writes are taken). The client's own backoff resends.
      const asked = syncRequests(session)
      await new Promise((resolve) => setTimeout(resolve, 600))
      expect(syncRequests(session)).toBe(asked)
      // The SDK's resend: everything the relay has not acknowledged.
      connection.receive(updateFrame(whole))
      await until(() => session.parley().length === 3)
      expect(session.parley()[2]).toMatchObject({ type: "saved" })
      const bodies = await core.read(id, (doc: Y.Doc) => listMessages(doc, { last: 10 }).map((m) => m.body))
      expect(bodies).toEqual(["lost on the way", "sent next"])
    } finally {
      await core.close()
    }
  })
})
