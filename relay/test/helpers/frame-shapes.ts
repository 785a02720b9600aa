/**
 * The frames the frame-cost tests and `npm run bench:frames` send: crafted
 * shapes that buy Yjs superlinear work (or a pile of client ids) for their
 * bytes, each at or near the frame size limit, and honest frames as large as
 * real clients send. Each shape is built against the conversation the relay
 * holds (see {@link seedConversation}).
 */
import {
  assignSequenceNumbers,
  type ConversationId,
  createConversation,
  DEFAULT_UPDATE_PART_LIMITS,
  deleteMessage,
  editMessage,
  encodeStoredRecord,
  listMessages,
  type MessageId,
  markRead,
  messageIndex,
  newMessageId,
  nextFromDocument,
  react,
  sendMessage,
  splitUpdate,
  TopLevel,
  typesOf,
  type UserId,
  unreact,
} from "@parley/shared"
import * as Y from "yjs"
import { capCounts, DEFAULT_UPDATE_COST_LIMITS } from "../../src/update-cost.js"
import {
  type CraftedClient,
  type CraftedContent,
  type CraftedStruct,
  encodeCraftedUpdate,
  type Id,
  rangesOf,
} from "./crafted-updates.js"

export const alice = "alice" as UserId
export const bob = "bob" as UserId
export const mallory = "mallory" as UserId

/** The frame size limit the shapes are built for (the relay's default). */
export const FRAME_LIMIT = 1024 * 1024
/** Room left under the limit for the sync message's own header. */
const HEADROOM = 64

/** What the relay holds before a shape is sent, and what the honest device knew when it went offline. */
export interface Seed {
  /** Everything the relay stored. */
  readonly stored: Uint8Array
  /** The conversation as the honest device last synced it (before the others' recent messages). */
  readonly before: Uint8Array
}

/**
 * A group conversation of alice (owner), bob and mallory (members) with
 * `messages` messages written by each user on their own devices, sequenced,
 * then 200 more of bob's that alice's offline device does not have.
 */
export function seedConversation(id: ConversationId, messages = 1_000): Seed {
  const doc = new Y.Doc()
  doc.clientID = 1
  createConversation(doc, alice, { kind: "group", id, participants: [bob, mallory], title: "bench" }, {})
  const users = [alice, bob, mallory]
  const write = (count: number, author: (i: number) => UserId) => {
    for (let i = 0; i < count; i++) {
      const user = author(i)
      doc.clientID = 100 + users.indexOf(user)
      sendMessage(doc, user, { body: `message ${i}: a typical short chat line` })
    }
    doc.clientID = 2
    assignSequenceNumbers(doc, nextFromDocument(doc))
  }
  write(messages, (i) => users[i % 3]!)
  const before = Y.encodeStateAsUpdate(doc)
  write(200, () => bob)
  return { stored: Y.encodeStateAsUpdate(doc), before }
}

/** One frame to send: who sends it, and whether an honest client would. */
export interface Shape {
  readonly name: string
  readonly honest: boolean
  /**
   * For a refused shape: the error code and rule it is refused with. A
   * crafted shape without one is accepted: one that every cap bounds.
   */
  readonly refused?: { readonly code: string; readonly rule?: string }
  readonly user: UserId
  /**
   * Updates the sender sends (each saved) before the measured one, not
   * measured: the earlier parts of a split update, say.
   */
  earlier?(relay: Y.Doc, seed: Seed): readonly Uint8Array[]
  /** The update, built against the relay's current document. */
  build(relay: Y.Doc, seed: Seed): Uint8Array
}

const lastItem = (relay: Y.Doc, root: string): Y.Item => {
  let item = (relay.getArray(root) as unknown as { _start: Y.Item | null })._start!
  while (item.right) item = item.right
  return item
}
const lastId = (item: Y.Item): Id => ({ client: item.id.client, clock: item.id.clock + item.length - 1 })
const deleted = (length = 1): CraftedContent => ({ kind: "deleted", length })
/** A message record as mallory would write one. */
const record = (i: number) =>
  encodeStoredRecord({ id: newMessageId(), author: mallory, body: `spam ${i}`, createdAt: 1 })

/**
 * Structs a crafted shape meant for a rule other than the struct cap holds at
 * most: the relay's default cap less some room, so that the shape reaches the
 * rule it is about (and follows the cap when the default changes).
 */
const UNDER_CAP = DEFAULT_UPDATE_COST_LIMITS.maxUpdateStructs - 20
/** Half of {@link UNDER_CAP}: for shapes of two runs of structs. */
const HALF = Math.floor(UNDER_CAP / 2)

/** Client ids far from the relay's, the seed's and each other's. */
const clientId = (i: number) => 0x10000000 + i

/** An object of `n` keys, each a short base-36 number. */
const manyKeys = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [i.toString(36), 0]))

/** About the largest `n` for which `build(n)` stays within the frame limit (at most `max`). */
function fill(build: (n: number) => Uint8Array, max = 1 << 22): Uint8Array {
  const room = FRAME_LIMIT - HEADROOM
  // Sizes grow about linearly with n: scale from a small build, then step down until it fits.
  let n = Math.min(max, 256)
  for (let i = 0; i < 3; i++) n = Math.min(max, Math.max(1, Math.floor((n * room) / build(n).length)))
  let update = build(n)
  while (update.length > room && n > 1) {
    n = Math.floor(n * 0.995)
    update = build(n)
  }
  return update
}

/** A chain of `n` items after `origin`, under `client` from `clock`. */
const chain = (origin: Id, client: number, n: number, content: (i: number) => CraftedContent) =>
  Array.from(
    { length: n },
    (_, i): CraftedStruct => ({ origin: i === 0 ? origin : { client, clock: i - 1 }, content: content(i) }),
  )

/** Crafted shapes, each refused by the relay but those without `refused` (within every cap, bounded by them). */
export const hostileShapes: readonly Shape[] = [
  {
    name: "fresh client id per item, deleted on arrival",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "update-client-ids" },
    user: mallory,
    build: (relay) => {
      const after = lastId(lastItem(relay, TopLevel.messages))
      return fill((n) => {
        const clients = Array.from({ length: n }, (_, i) => ({
          client: clientId(i),
          clock: 0,
          structs: [{ origin: after, content: { kind: "any", values: [record(i)] } } as CraftedStruct],
        }))
        return encodeCraftedUpdate(clients, rangesOf(clients))
      })
    },
  },
  {
    name: "fresh client ids, one more than an update may carry",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "update-client-ids" },
    user: mallory,
    build: (relay) => {
      const after = lastId(lastItem(relay, TopLevel.messages))
      const clients = Array.from({ length: 257 }, (_, i) => ({
        client: clientId(i),
        clock: 0,
        structs: [{ origin: i === 0 ? after : { client: clientId(i - 1), clock: 0 }, content: deleted() }],
      }))
      return encodeCraftedUpdate(clients, rangesOf(clients))
    },
  },
  {
    name: `${(DEFAULT_UPDATE_COST_LIMITS.maxUpdateValues + 1).toLocaleString("en-US")} messages in one update`,
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "update-values" },
    user: mallory,
    build: (relay) => {
      const c = clientId(12)
      const after = lastId(lastItem(relay, TopLevel.messages))
      return encodeCraftedUpdate([
        {
          client: c,
          clock: 0,
          structs: [
            {
              origin: after,
              content: {
                kind: "any",
                values: Array.from({ length: DEFAULT_UPDATE_COST_LIMITS.maxUpdateValues + 1 }, (_, i) =>
                  record(i),
                ),
              },
            },
          ],
        },
      ])
    },
  },
  {
    name: "siblings at one position, one client id",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "update-structs" },
    user: mallory,
    build: (relay) => {
      const x = lastId(lastItem(relay, TopLevel.messages))
      const c = clientId(1)
      return fill((n) => {
        const structs = chain(x, c, n, () => deleted())
        for (let j = 0; j < n; j++)
          structs.push({ origin: x, rightOrigin: { client: c, clock: j }, content: deleted() })
        return encodeCraftedUpdate([{ client: c, clock: 0, structs }])
      })
    },
  },
  {
    name: "siblings at one position, under the struct cap",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "siblings" },
    user: mallory,
    build: (relay) => {
      const x = lastId(lastItem(relay, TopLevel.messages))
      const c = clientId(2)
      const structs = chain(x, c, HALF, () => deleted())
      for (let j = 0; j < HALF; j++)
        structs.push({ origin: x, rightOrigin: { client: c, clock: j }, content: deleted() })
      return encodeCraftedUpdate([{ client: c, clock: 0, structs }])
    },
  },
  {
    name: "one sibling per origin along a chain (distinct origins)",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "integration-cost" },
    user: mallory,
    build: (relay) => {
      const x = lastId(lastItem(relay, TopLevel.messages))
      // Every right origin points before the origin: Yjs scans the whole chain for each item.
      const far = lastId((relay.getArray(TopLevel.messages) as unknown as { _start: Y.Item })._start)
      const c = clientId(3)
      const structs = chain(x, c, HALF, () => deleted())
      for (let j = 0; j < HALF; j++)
        structs.push({ origin: { client: c, clock: j }, rightOrigin: far, content: deleted() })
      return encodeCraftedUpdate([{ client: c, clock: 0, structs }])
    },
  },
  {
    name: "inserts along the document's chain, each passing the update's own appended chain",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "integration-cost" },
    user: mallory,
    build: (relay) => {
      const last = lastItem(relay, TopLevel.messages)
      const first = (relay.getArray(TopLevel.messages) as unknown as { _start: Y.Item })._start
      const c = clientId(13)
      const structs = chain(lastId(last), c, UNDER_CAP - 300, () => deleted())
      // One item after each of the last 300 messages, its right origin far before it.
      let item: Y.Item | null = last.left
      for (let i = 0; i < 300 && item; i++, item = item.left)
        structs.push({
          origin: lastId(item),
          rightOrigin: { client: first.id.client, clock: first.id.clock },
          content: deleted(),
        })
      return encodeCraftedUpdate([{ client: c, clock: 0, structs }])
    },
  },
  {
    name: "siblings at one position, many client ids",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "siblings" },
    user: mallory,
    build: (relay) => {
      const x = lastId(lastItem(relay, TopLevel.messages))
      const c = clientId(4)
      const clients: CraftedClient[] = [{ client: c, clock: 0, structs: chain(x, c, 250, () => deleted()) }]
      for (let j = 0; j < 250; j++)
        clients.push({
          client: clientId(1000 + j),
          clock: 0,
          structs: [{ origin: x, rightOrigin: { client: c, clock: j }, content: deleted() }],
        })
      return encodeCraftedUpdate(clients)
    },
  },
  {
    name: "one map key written concurrently (no origin)",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "siblings" },
    user: mallory,
    build: () => {
      const c = clientId(5)
      const structs = Array.from(
        { length: UNDER_CAP },
        (): CraftedStruct => ({ parent: TopLevel.read, key: mallory, content: deleted() }),
      )
      return encodeCraftedUpdate([{ client: c, clock: 0, structs }])
    },
  },
  {
    // At the struct cap of 1,500 (1,400 structs of history) the walks cost more than the integration
    // limit allows; at 700, 32 writes (the sibling limit) over the rest cost at most ~21,000 steps.
    name: "one map key overwritten along a chain (within every cap)",
    honest: false,
    user: mallory,
    build: () => {
      // A long history on one key, then writes without origin that each walk all of it. The key is
      // the sender's own profile: an empty entry is a write of its key, which the rules judge.
      const c = clientId(6)
      const structs: CraftedStruct[] = [{ parent: TopLevel.profiles, key: mallory, content: deleted() }]
      for (let i = 1; i < UNDER_CAP - 30; i++)
        structs.push({ origin: { client: c, clock: i - 1 }, content: deleted() })
      for (let i = 0; i < 30; i++)
        structs.push({ parent: TopLevel.profiles, key: mallory, content: deleted() })
      return encodeCraftedUpdate([{ client: c, clock: 0, structs }])
    },
  },
  {
    name: "1 MB chain of deleted items (about 8 bytes each)",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "update-structs" },
    user: mallory,
    build: (relay) => {
      const x = lastId(lastItem(relay, TopLevel.messages))
      const c = 7
      return fill((n) =>
        encodeCraftedUpdate([{ client: c, clock: 0, structs: chain(x, c, n, () => deleted()) }]),
      )
    },
  },
  {
    name: "long string split per character",
    honest: false,
    refused: { code: "FORBIDDEN", rule: "schema" },
    user: mallory,
    build: (relay) => {
      const x = lastId(lastItem(relay, TopLevel.messages))
      const c = clientId(8)
      return encodeCraftedUpdate([
        { client: c, clock: 0, structs: chain(x, c, UNDER_CAP, () => ({ kind: "string", text: "x" })) },
      ])
    },
  },
  {
    name: "nested types",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "siblings" },
    user: mallory,
    build: (relay) => {
      const x = lastId(lastItem(relay, TopLevel.messages))
      const c = clientId(9)
      const structs = chain(x, c, HALF, () => ({ kind: "type", typeRef: 1 }))
      for (let i = 0; i < HALF; i++)
        structs.push({ parentId: { client: c, clock: i }, key: "k", content: { kind: "any", values: [i] } })
      return encodeCraftedUpdate([{ client: c, clock: 0, structs }])
    },
  },
  {
    name: "GC and skip structs",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "update-structs" },
    user: mallory,
    build: () =>
      fill((n) =>
        encodeCraftedUpdate([
          {
            client: clientId(10),
            clock: 0,
            structs: Array.from({ length: n }, (_, i) => ({
              content: { kind: i % 2 ? "gc" : "skip", length: 1 },
            })),
          },
        ]),
      ),
  },
  {
    name: "delete set of single clocks over the document",
    honest: false,
    refused: { code: "INVALID_UPDATE", rule: "delete-ranges" },
    user: mallory,
    build: (relay) => {
      const ranges: { client: number; clock: number; length: number }[] = []
      for (const [client, structs] of (relay.store as unknown as { clients: Map<number, Y.Item[]> })
        .clients) {
        const last = structs[structs.length - 1]!
        for (let clock = 0; clock < last.id.clock + last.length; clock++)
          ranges.push({ client, clock, length: 1 })
      }
      return fill((n) =>
        encodeCraftedUpdate(
          [],
          Array.from({ length: n }, (_, i) => ranges[i % ranges.length]!),
        ),
      )
    },
  },
  // One value counts once toward the value cap, however much it holds; Yjs builds all of it on decoding.
  ...(
    [
      [
        "one value: an array of one-character strings",
        (n: number) => ({ kind: "any", values: [Array.from({ length: n }, () => "x")] }),
      ],
      [
        // Under the element count, were keys free: 32,000 of them fill the frame.
        "one value: an object of 32,000 keys of 30 characters",
        (n: number) => ({
          kind: "any",
          values: [
            Object.fromEntries(
              Array.from({ length: Math.min(n, 32_000) }, (_, i) => [`key-${i}`.padEnd(30, "."), 0]),
            ),
          ],
        }),
      ],
      ["one value: an object of many keys", (n: number) => ({ kind: "any", values: [manyKeys(n)] })],
      [
        // An array holding an array … (type 117, one element) and a null at the bottom, as deep as fits.
        "one value nested past Yjs's decoder recursion",
        (n: number) => {
          const bytes = new Uint8Array(2 * n + 1).fill(1)
          for (let i = 0; i < n; i++) bytes[2 * i] = 117
          bytes[2 * n] = 126
          return { kind: "encoded-any", count: 1, bytes }
        },
      ],
      [
        "a subdocument whose options are an object of many keys",
        (n: number) => ({ kind: "doc", guid: "sub", options: manyKeys(n) }),
      ],
      [
        "JSON content: one array of zeros",
        (n: number) => ({ kind: "json", texts: [`[${"0,".repeat(n)}0]`] }),
      ],
    ] as const
  ).map(
    ([name, content], i): Shape => ({
      name,
      honest: false,
      refused: { code: "INVALID_UPDATE", rule: "update-elements" },
      user: mallory,
      build: (relay) => {
        const x = lastId(lastItem(relay, TopLevel.messages))
        const c = clientId(20 + i)
        // One struct after the last message, its content as large as the frame takes.
        return fill((n) =>
          encodeCraftedUpdate([
            { client: c, clock: 0, structs: chain(x, c, 1, () => content(n) as CraftedContent) },
          ]),
        )
      },
    }),
  ),
  {
    name: "delete set of single clocks under the range cap, of content the relay does not have",
    honest: false,
    refused: { code: "FORBIDDEN", rule: "schema" },
    user: mallory,
    build: () =>
      encodeCraftedUpdate(
        [],
        Array.from({ length: DEFAULT_UPDATE_COST_LIMITS.maxDeleteRanges }, (_, i) => ({
          client: clientId(16),
          clock: 2 * i,
          length: 1,
        })),
      ),
  },
  {
    name: "messages written and deleted on arrival, forged author",
    honest: false,
    refused: { code: "FORBIDDEN", rule: "author-is-sender" },
    user: mallory,
    build: (relay) => {
      const x = lastId(lastItem(relay, TopLevel.messages))
      const c = clientId(11)
      const forged = (i: number) =>
        encodeStoredRecord({ id: newMessageId(), author: alice, body: `forged ${i}`, createdAt: 1 })
      const clients = [
        {
          client: c,
          clock: 0,
          structs: chain(x, c, UNDER_CAP, (i) => ({ kind: "any", values: [forged(i)] })),
        },
      ]
      return encodeCraftedUpdate(clients, rangesOf(clients))
    },
  },
  {
    name: "bytes that are not an update",
    honest: false,
    refused: { code: "INVALID_UPDATE" },
    user: mallory,
    build: () => new Uint8Array(FRAME_LIMIT - HEADROOM).fill(0xff),
  },
]

/** A device of `user` that synced `before`, writing under a new client id per session. */
function device(before: Uint8Array, session: number): Y.Doc {
  const doc = new Y.Doc()
  Y.applyUpdate(doc, before)
  doc.clientID = 0x20000000 + session
  return doc
}

/** What alice's device did offline (see {@link offlineSync}), once per seed. */
const offlineWork = new WeakMap<Seed, { whole: Uint8Array; parts: Uint8Array[] }>()

/**
 * Three sessions of alice's offline work on the conversation as she last
 * synced it (450 messages, 90 edits, 18 deletions, 200 reaction changes and a
 * read marker move per message): the sync step 2 her device sends on
 * reconnecting, whole and in the parts the SDK sends it in
 * (`splitUpdate`, `DEFAULT_UPDATE_PART_LIMITS`). Built once per seed, so that
 * a shape's earlier parts and its measured one are of the same work.
 */
export function offlineSync(seed: Seed): { whole: Uint8Array; parts: Uint8Array[] } {
  const cached = offlineWork.get(seed)
  if (cached) return cached
  const whole = offlineUpdate(seed, 150)
  const work = { whole, parts: splitUpdate(whole, DEFAULT_UPDATE_PART_LIMITS) }
  offlineWork.set(seed, work)
  return work
}

/** Alice's offline work as one update: three sessions of `perSession` messages each, with the rest (see {@link offlineSync}). */
function offlineUpdate(seed: Seed, perSession: number): Uint8Array {
  // Three sessions (a new client id each, as the SDK opens one per session) of offline work.
  const doc = device(seed.before, 1)
  const others = listMessages(doc, { last: 1_000 }).filter((m) => m.author !== alice)
  const mine: MessageId[] = []
  for (let session = 0; session < 3; session++) {
    doc.clientID = 0x20000000 + session
    for (let i = 0; i < perSession; i++) {
      mine.push(sendMessage(doc, alice, { body: `offline ${session}.${i}: on my way, see you soon` }).id)
      if (i % 3 === 0) react(doc, alice, others[(session * perSession + i) % others.length]!.id, "👍")
      if (i % 9 === 0) unreact(doc, alice, others[(session * perSession + i) % others.length]!.id, "👍")
      if (i % 5 === 0) editMessage(doc, alice, mine[mine.length - 1]!, `edited ${session}.${i}`)
      if (i % 25 === 0) deleteMessage(doc, alice, mine[mine.length - 2] ?? mine[0]!)
      markRead(doc, alice)
    }
  }
  // Only the device's own work: everything else it has, the relay has too.
  return Y.encodeStateAsUpdate(doc, Y.encodeStateVectorFromUpdate(seed.stored))
}

/**
 * The largest offline work of {@link offlineSync}'s mix that fits the caps
 * as one update: what a stock client (which cannot split) may send at most,
 * and the costliest honest frame per struct.
 */
function offlineAtCaps(seed: Seed, caps: UpdateCaps): Uint8Array {
  // About 1.1 structs and 1.4 values per message: start from that, then step down until it fits.
  let perSession = Math.floor(Math.min(caps.structs / 1.1, caps.values / 1.42) / 3)
  for (;;) {
    const update = offlineUpdate(seed, perSession)
    const { structs, values } = capCounts(update)
    if ((structs <= caps.structs && values <= caps.values) || perSession <= 1) return update
    perSession = Math.max(
      1,
      Math.floor(perSession * Math.min(caps.structs / structs, caps.values / values)) - 1,
    )
  }
}

/** The relay's per-update caps that the at-cap shapes fill (`--max-update-values`, `--max-update-structs`). */
export interface UpdateCaps {
  readonly values: number
  readonly structs: number
}

/** The relay's defaults (`DEFAULT_UPDATE_COST_LIMITS`): the at-cap shapes follow them. */
export const DEFAULT_CAPS: UpdateCaps = {
  values: DEFAULT_UPDATE_COST_LIMITS.maxUpdateValues,
  structs: DEFAULT_UPDATE_COST_LIMITS.maxUpdateStructs,
}

const count = (n: number) => n.toLocaleString("en-US")

/** What `write` adds to a replica of the relay's document, under `clientID` (else the replica's own). */
function writtenOn(relay: Y.Doc, write: (doc: Y.Doc) => void, clientID?: number): Uint8Array {
  const doc = new Y.Doc()
  Y.applyUpdate(doc, Y.encodeStateAsUpdate(relay))
  if (clientID !== undefined) doc.clientID = clientID
  const sv = Y.encodeStateVector(doc)
  write(doc)
  return Y.encodeStateAsUpdate(doc, sv)
}

/**
 * The largest valid frames within the caps `caps`: as many short messages as
 * values, as many reactions (each its own key) as structs, and messages each
 * followed by a marker move (two structs each) up to the struct cap, less
 * some room. Named by their counts, so that the defaults give the names the
 * tests and benchmark tables have always used.
 */
export function atCapShapes(caps: UpdateCaps): Shape[] {
  const messages = caps.values
  const withMarkers = Math.floor(caps.structs / 2) - 50
  const reactions = caps.structs
  const mixed = new WeakMap<Seed, Uint8Array>()
  return [
    {
      name: `${count(messages)} short messages in one update (the value cap)`,
      honest: true,
      user: alice,
      build: (relay) =>
        writtenOn(
          relay,
          (doc) => {
            for (let i = 0; i < messages; i++)
              sendMessage(doc, alice, { body: `quick ${i}: a typical short chat line` })
          },
          0x30000001,
        ),
    },
    {
      name: `${count(withMarkers)} messages, each followed by a read-marker move (${count(2 * withMarkers)} structs)`,
      honest: true,
      user: alice,
      // Nothing merges: one struct per message and per marker move (overwritten ones deleted on arrival).
      build: (relay) =>
        writtenOn(
          relay,
          (doc) => {
            // Marker moves spread over the sequenced messages, forward only, as the SDK writes them.
            const last = messageIndex(doc).lastSequence()
            let marker = 0
            for (let i = 0; i < withMarkers; i++) {
              sendMessage(doc, alice, { body: `quick ${i}` })
              const to = Math.max(1, Math.round(((i + 1) * last) / withMarkers))
              if (to > marker) {
                marker = to
                typesOf(doc).read.set(alice, to)
              }
            }
          },
          0x30000002,
        ),
    },
    {
      name: `${count(reactions)} reactions, each its own map key (the struct cap)`,
      honest: true,
      user: mallory,
      build: (relay) =>
        writtenOn(
          relay,
          (doc) => {
            const targets = listMessages(doc, { last: 1_000 })
            for (let i = 0; i < reactions; i++)
              react(doc, mallory, targets[i % targets.length]!.id, i < 1_000 ? "👍" : "🎉")
          },
          0x30000003,
        ),
    },
    {
      name: `an offline period's mixed work in one update, up to the caps (a stock client's sync step 2)`,
      honest: true,
      user: alice,
      build: (_, seed) => {
        let update = mixed.get(seed)
        if (!update) {
          update = offlineAtCaps(seed, caps)
          mixed.set(seed, update)
        }
        return update
      },
    },
  ]
}

/**
 * Frames the relay accepts: what honest clients send, and the largest valid
 * frames within every cap (the most an attacker can make the relay accept).
 */
export const honestShapes: readonly Shape[] = [
  {
    name: "SDK sync step 2 after a long offline period, first part (as the SDK sends it)",
    honest: true,
    user: alice,
    build: (_, seed) => offlineSync(seed).parts[0]!,
  },
  {
    name: "SDK sync step 2 after a long offline period, last part (the parts before it saved)",
    honest: true,
    user: alice,
    earlier: (_, seed) => offlineSync(seed).parts.slice(0, -1),
    build: (_, seed) => offlineSync(seed).parts.at(-1)!,
  },
  {
    // What a stock y-websocket client sends after the same offline period (it cannot split), and what
    // the SDK sent before its parts were halved.
    name: "the same offline work in one update (a stock client's sync step 2)",
    honest: true,
    user: alice,
    build: (_, seed) => offlineSync(seed).whole,
  },
  {
    // Small, and the most work per byte an honest client can ask for: the relay purges the message's
    // content from its stored log (a compaction), its logged events and the SQLite WAL.
    name: "one of my messages deleted (its content purged)",
    honest: true,
    user: alice,
    build: (relay) => {
      const mine = listMessages(relay, { last: 1_000 }).filter((m) => m.author === alice && !m.deleted)
      return writtenOn(relay, (doc) => deleteMessage(doc, alice, mine.at(-1)!.id))
    },
  },
  {
    name: "stock y-websocket client: one message",
    honest: true,
    user: alice,
    build: (relay) =>
      writtenOn(relay, (doc) => sendMessage(doc, alice, { body: "hello from a stock client" })),
  },
  {
    name: "messages with long bodies up to the frame limit",
    honest: true,
    user: alice,
    build: (relay) => {
      const base = Y.encodeStateAsUpdate(relay)
      return fill((n) => {
        const doc = new Y.Doc()
        Y.applyUpdate(doc, base)
        doc.clientID = 0x30000000
        const sv = Y.encodeStateVector(doc)
        for (let i = 0; i < n; i++) sendMessage(doc, alice, { body: `${i} ${"long text ".repeat(1_590)}` })
        return Y.encodeStateAsUpdate(doc, sv)
      }, 200)
    },
  },
  ...atCapShapes(DEFAULT_CAPS),
  {
    name: "256 fresh client ids at distinct positions",
    honest: true,
    user: mallory,
    build: (relay) => {
      // Within every cap, but the document keeps these ids for good: the growth allowance's business.
      const after = lastId(lastItem(relay, TopLevel.messages))
      const clients = Array.from({ length: 256 }, (_, i) => ({
        client: clientId(5_000 + i),
        clock: 0,
        structs: [
          { origin: i === 0 ? after : { client: clientId(5_000 + i - 1), clock: 0 }, content: deleted() },
        ],
      }))
      return encodeCraftedUpdate(clients, rangesOf(clients))
    },
  },
]
