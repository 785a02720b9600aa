import {
  type ConversationId,
  createConversation,
  DEFAULT_UPDATE_PART_LIMITS,
  deleteMessage,
  ErrorCode,
  listMessages,
  newConversationId,
  Rule,
  react,
  sendMessage,
  splitUpdate,
  type UserId,
} from "@parley/shared"
import { afterAll, afterEach, describe, expect, it } from "vitest"
import * as Y from "yjs"
import { checkUpdate } from "../src/policy/check-update.js"
import { checkUpdateCost, DEFAULT_UPDATE_COST_LIMITS } from "../src/update-cost.js"
import { TestClient } from "./helpers/clients.js"
import { encodeCraftedUpdate } from "./helpers/crafted-updates.js"
import { probe, probeAll } from "./helpers/frame-probe.js"
import {
  alice,
  bob,
  honestShapes,
  hostileShapes,
  mallory,
  type Seed,
  type Shape,
  seedConversation,
} from "./helpers/frame-shapes.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"
import { scene, updateOf, user } from "./policy/fixtures.js"

// One seed serves every shape of a file run; each probe stores it under a fresh conversation id.
const seeds = new Map<string, Seed>()
const seed = (id: ConversationId): Seed => {
  const built = seedConversation(id, 300)
  seeds.set(id, built)
  return built
}
const named = (name: string): Shape => [...honestShapes, ...hostileShapes].find((s) => s.name === name)!

describe("the cost of one frame", () => {
  it.each(hostileShapes.filter((s) => s.refused).map((s) => [s.name, s] as const))(
    "refuses a crafted update before applying it: %s",
    async (_, shape) => {
      const result = await probe(shape, seed)
      expect(result.accepted).toBe(false)
      expect(result.error?.code).toBe(shape.refused!.code)
      expect(result.error?.rule).toBe(shape.refused!.rule)
      // Nothing of it entered the document (its five seeded client ids only), and the sender stays connected.
      expect(result.clientIds).toBe(5)
      expect(result.closed).toBe(false)
    },
  )

  it.each(hostileShapes.filter((s) => !s.refused).map((s) => [s.name, s] as const))(
    "accepts a crafted update that every cap bounds, keeping the sender connected: %s",
    async (_, shape) => {
      const result = await probe(shape, seed)
      expect(result.error).toBeUndefined()
      expect(result.accepted).toBe(true)
      expect(result.closed).toBe(false)
    },
  )

  it.each(honestShapes.map((s) => [s.name, s] as const))("accepts %s", async (_, shape) => {
    const result = await probe(shape, seed)
    expect(result.error).toBeUndefined()
    expect(result.accepted).toBe(true)
  })

  it("lets one user add only so many client ids to a document, and not another user's share", async () => {
    const fresh = (base: number, who: UserId): Shape => ({
      name: "new ids",
      honest: true,
      user: who,
      build: (relay) => {
        const doc = new Y.Doc()
        Y.applyUpdate(doc, Y.encodeStateAsUpdate(relay))
        const sv = Y.encodeStateVector(doc)
        doc.clientID = base
        sendMessage(doc, who, { body: "one more session" })
        return Y.encodeStateAsUpdate(doc, sv)
      },
    })
    const [burst, next, other] = await probeAll(
      [
        named("256 fresh client ids at distinct positions"),
        fresh(0x7000_0001, mallory),
        fresh(0x7000_0002, alice),
      ],
      seed,
    )
    expect(burst!.accepted).toBe(true)
    expect(next!.accepted).toBe(false)
    expect(next!.error).toMatchObject({ code: ErrorCode.RATE_LIMITED, rule: "client-id-growth" })
    expect(next!.closed).toBe(false)
    expect(other!.accepted).toBe(true)
  })

  it("refuses at its defaults one update of 1,001 short messages, and takes the SDK's parts of it", async () => {
    // What a stock client sends after writing that much offline; the SDK splits it (DEFAULT_UPDATE_PART_LIMITS).
    const backlog = new WeakMap<Seed, Uint8Array>()
    const offline = (seed: Seed) => {
      let update = backlog.get(seed)
      if (!update) {
        const doc = new Y.Doc()
        Y.applyUpdate(doc, seed.stored)
        doc.clientID = 0x7100_0001
        const sv = Y.encodeStateVector(doc)
        for (let i = 0; i < 1_001; i++) sendMessage(doc, alice, { body: `offline ${i}` })
        update = Y.encodeStateAsUpdate(doc, sv)
        backlog.set(seed, update)
      }
      return update
    }
    const whole = await probe({ name: "whole", honest: true, user: alice, build: (_, s) => offline(s) }, seed)
    expect(whole.error).toMatchObject({ code: ErrorCode.INVALID_UPDATE, rule: "update-values" })
    expect(whole.closed).toBe(false)
    const parts = (s: Seed) => splitUpdate(offline(s), DEFAULT_UPDATE_PART_LIMITS)
    const last = await probe(
      {
        name: "parts",
        honest: true,
        user: alice,
        // Each earlier part must be saved too, or the probe throws.
        earlier: (_, s) => parts(s).slice(0, -1),
        build: (_, s) => parts(s).at(-1)!,
      },
      seed,
    )
    expect(last.error).toBeUndefined()
    expect(last.accepted).toBe(true)
  })

  it("reads each limit from the relay's limits", async () => {
    const offline = named("the same offline work in one update (a stock client's sync step 2)")
    const result = await probe(offline, seed, { maxUpdateStructs: 100 })
    expect(result.error).toMatchObject({ code: ErrorCode.INVALID_UPDATE, rule: "update-structs" })
  })
})

describe("deletions of content the relay does not have", () => {
  const relay = () => {
    const doc = new Y.Doc()
    Y.applyUpdate(doc, seedConversation(newConversationId(), 20).stored)
    return doc
  }
  const last = (doc: Y.Doc) => {
    let item = (doc.getArray("messages") as unknown as { _start: Y.Item | null })._start!
    while (item.right) item = item.right
    return { client: item.id.client, clock: item.id.clock + item.length - 1 }
  }
  const unknown = [{ client: 0x31000000, clock: 0, length: 3 }]

  it("are told from the cost scan, before decoding; not when the update follows changes of its own the relay lacks", () => {
    const doc = relay()
    // Only deletions: refused by the rules whatever else, so the update path refuses them at once.
    expect(
      checkUpdateCost(doc, encodeCraftedUpdate([], unknown), DEFAULT_UPDATE_COST_LIMITS).deletesUnknown,
    ).toBe(true)
    // With a message of a client's, after its clock 0 the relay never got: the sender is told to send its
    // pending work again (which holds what it deletes), so the update path decides.
    const after = {
      client: 0x32000000,
      clock: 5,
      structs: [{ origin: last(doc), content: { kind: "any", values: [1] } }],
    }
    expect(
      checkUpdateCost(doc, encodeCraftedUpdate([after as never], unknown), DEFAULT_UPDATE_COST_LIMITS)
        .deletesUnknown,
    ).toBe(false)
  })
})

describe("content deleted on arrival", () => {
  /** A replica that keeps deleted content, so that its updates carry it (as merged updates do). */
  const keeping = (relay: Y.Doc) => {
    const doc = new Y.Doc({ gc: false })
    Y.applyUpdate(doc, Y.encodeStateAsUpdate(relay))
    return doc
  }

  it("accepts a message sent and deleted by its author in one update, with its placeholder", () => {
    const s = scene()
    const doc = keeping(s.relay)
    const update = updateOf(doc, (d) => {
      const id = sendMessage(d, "carol" as UserId, { body: "oops" }).id
      deleteMessage(d, "carol" as UserId, id)
    })
    expect(
      checkUpdate({ doc: s.relay, update, principal: user("carol" as UserId), bindings: s.bindings }),
    ).toEqual(expect.objectContaining({ allowed: true }))
  })

  it("judges a message deleted on arrival like any other: a forged author is refused", () => {
    const s = scene()
    const doc = keeping(s.relay)
    // Written as carol's message by dave, then deleted by dave (a member may not delete others' messages).
    const update = updateOf(doc, (d) => {
      const id = sendMessage(d, "carol" as UserId, { body: "in carol's name" }).id
      deleteMessage(d, "carol" as UserId, id)
    })
    const result = checkUpdate({
      doc: s.relay,
      update,
      principal: user("dave" as UserId),
      bindings: s.bindings,
    })
    expect(result).toMatchObject({ allowed: false, rule: Rule.authorIsSender })
  })

  it("judges a map value overwritten within the update: a reaction in another's name is refused", () => {
    const s = scene()
    const doc = keeping(s.relay)
    const update = updateOf(doc, (d) => {
      react(d, "carol" as UserId, s.messages.alice!, "👍")
      for (const key of [...d.getMap("reactions").keys()]) d.getMap("reactions").delete(key)
    })
    const result = checkUpdate({
      doc: s.relay,
      update,
      principal: user("dave" as UserId),
      bindings: s.bindings,
    })
    expect(result).toMatchObject({ allowed: false, rule: Rule.selfOnly })
  })
})

describe("the cost of one frame against a relay process", () => {
  const clients: TestClient[] = []
  afterAll(() => stopRelayProcesses())
  afterEach(() => {
    for (const c of clients.splice(0)) c.close()
  })

  it("refuses a crafted update with a typed error (parley=1) or 4400 (stock), and keeps serving everyone", async () => {
    const relay = await startRelayProcess()
    const id = newConversationId()
    const open = async (who: UserId, parley = true) => {
      const c = new TestClient(relay.url, id, await relay.token(who), { parley })
      clients.push(c)
      await c.synced()
      return c
    }
    const owner = await open(alice)
    createConversation(owner.doc, alice, { kind: "group", id, participants: [bob, mallory] })
    for (let i = 0; i < 20; i++) sendMessage(owner.doc, alice, { body: `hello ${i}` })
    await owner.allSaved()
    const watcher = await open(bob)
    const attacker = await open(mallory)
    const stock = await open(mallory, false)
    await attacker.until(() => listMessages(attacker.doc, { last: 50 }).length === 20)

    const crafted = named("siblings at one position, under the struct cap")
    const none = { stored: new Uint8Array(), before: new Uint8Array() }
    attacker.sendUpdate(crafted.build(attacker.doc, none))
    await attacker.until(() => attacker.errors.length > 0)
    expect(attacker.errors[0]).toMatchObject({ code: ErrorCode.INVALID_UPDATE, rule: "siblings" })
    expect(attacker.closeEvent).toBeUndefined()

    stock.sendUpdate(named("one map key written concurrently (no origin)").build(stock.doc, none))
    expect((await stock.closed).code).toBe(4400)

    sendMessage(owner.doc, alice, { body: "still served" })
    await owner.allSaved()
    await watcher.until(() => listMessages(watcher.doc, { last: 50 }).some((m) => m.body === "still served"))
    // The refused update reached nobody: the watcher's replica holds only the five writers' ids it saw.
    expect([...watcher.doc.store.clients.keys()]).not.toContain(0x10000002)
    expect(watcher.closeEvent).toBeUndefined()
  })
})
