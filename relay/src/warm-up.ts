import {
  applySeals,
  assignSequenceNumbers,
  type ChangeEvent,
  type ConversationId,
  createConversation,
  deleteMessage,
  editMessage,
  encodeSyncStep2,
  encodeSyncUpdate,
  listMessages,
  type MessageId,
  MessageType,
  markRead,
  messageIndex,
  newConversationId,
  nextFromDocument,
  observeChanges,
  planSeals,
  react,
  readParleyFrame,
  sendMessage,
  type UserId,
  unreact,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as Y from "yjs"
import type { Connection, Session } from "./connection.js"
import { isLogged } from "./hooks/event-log.js"
import { deriveHookEvents, loggedForm } from "./hooks/events.js"
import { storedEventSerializer } from "./hooks/member-lists.js"
import { createLogger } from "./log.js"
import { RelayMetrics } from "./metrics.js"
import { AuthorizationPolicy } from "./policy/authorization-policy.js"
import { MemoryClientBindingStore } from "./policy/client-bindings.js"
import { type CoreLimits, DEFAULT_CORE_LIMITS, RelayCore } from "./relay-core.js"
import { MemoryStorage } from "./storage/memory.js"

/**
 * How much warming up the relay does after it starts (see {@link warmUpUpdatePath}).
 * The defaults are what `npm run bench:frames` showed to bring the first large
 * frames of a fresh process down to a warm relay's cost.
 */
export interface WarmUpOptions {
  /** Rounds of the representative frames. */
  readonly rounds?: number
  /** Messages per bulk frame of a round (the offline sync, the marker moves, the reactions scale with it). */
  readonly frameMessages?: number
  /** The relay's update cost limits, so that the scratch document is checked as real ones are. */
  readonly limits?: Partial<CoreLimits>
  /** Stops between pieces when it returns true (the relay is shutting down). */
  readonly stopped?: () => boolean
}

/** What a warm-up did, for the log. */
export interface WarmUpReport {
  readonly frames: number
  /** Of those, frames the relay refused (none, unless the rules changed and the synthetic frames no longer pass). */
  readonly refused: number
  /** Wall time from start to end, pieces and the serving between them included. */
  readonly wallMs: number
  /** CPU time of the process meanwhile (all threads: V8's compiler threads included), serving included. */
  readonly cpuMs: number
  /** True when it stopped early (the relay is shutting down). */
  readonly stopped: boolean
  /** Segments its upkeep pieces sealed in memory (see `warmUpUpkeep`): at least one per round. */
  readonly seals: number
}

const DEFAULT_ROUNDS = 4
const DEFAULT_FRAME_MESSAGES = 120

/** One id for every round's scratch conversation: each round has a core of its own. */
const CONVERSATION = newConversationId()
const alice = "warm-up-alice" as UserId
const bob = "warm-up-bob" as UserId
const carol = "warm-up-carol" as UserId

/** A socket-free session: resolves `answer()` with the relay's next Parley answer (saved or error). */
class ScratchSession implements Session {
  readonly wantsParley = true
  private settle: ((accepted: boolean) => void) | undefined
  constructor(readonly principal: { readonly kind: "user"; readonly user: UserId }) {}
  /** Resolves true when the relay saved the frame, false when it refused it. */
  answer(): Promise<boolean> {
    return new Promise((resolve) => {
      this.settle = resolve
    })
  }
  send(frame: Uint8Array): void {
    const decoder = decoding.createDecoder(frame)
    if (decoding.readVarUint(decoder) !== MessageType.parley) return
    const answer = readParleyFrame(decoder)
    if (answer?.type !== "saved" && answer?.type !== "error") return
    const settle = this.settle
    this.settle = undefined
    settle?.(answer.type === "saved")
  }
  close(): void {}
}

/** Lets the event loop serve whatever waits (sockets, timers) before the next piece. */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve))

/**
 * Runs the relay's update path (frame decoding, the cost scan, inspection, the
 * document rules, apply, sequencing, storing in memory, broadcast, "saved") on
 * synthetic frames shaped like the largest honest ones — an SDK's sync step 2
 * after an offline period, bulk messages each followed by a read-marker move,
 * reactions each on its own key, long bodies, merged work of many devices, a
 * stock client's one-message update — against a scratch in-memory relay core
 * holding a scratch conversation, until V8 has compiled the hot functions.
 *
 * Why: a freshly started process runs that path in V8's interpreter and
 * compiles it on V8's threads while the first large frames arrive, which made
 * those frames cost up to about 1.5 times the frame-cost goal (BENCHMARKS.md,
 * "Frame cost"). Everything runs in pieces (one frame, or building one) with
 * the event loop served between them, so a client connecting meanwhile is not
 * kept waiting longer than one such piece. Nothing of it reaches the relay's
 * storage, metrics, logs or users; the scratch core is closed at the end.
 */
export async function warmUpUpdatePath(options: WarmUpOptions = {}): Promise<WarmUpReport> {
  const rounds = Math.max(1, options.rounds ?? DEFAULT_ROUNDS)
  const n = options.frameMessages ?? DEFAULT_FRAME_MESSAGES
  const stopped = options.stopped ?? (() => false)
  const started = performance.now()
  const cpu = process.cpuUsage()
  // The first round builds its frames on devices as clients would; later rounds send the same bytes
  // to a fresh scratch core each, so that they cost the update path only, not building frames.
  const recorded: Recorded[] = []
  const upkeep: Partial<UpkeepFrames> = {}
  let seals = 0
  let frames = 0
  let refused = 0
  let early = false
  for (let round = 0; round < rounds && !early; round++) {
    const done = await scratchRound(options.limits, stopped, (open) =>
      round === 0 ? buildFrames(open, n, recorded) : replayFrames(open, recorded),
    )
    frames += done.sent
    refused += done.refused
    early = done.stopped
    if (early) break
    const sealed = await warmUpUpkeep(n, stopped, upkeep)
    if (sealed === undefined) early = true
    else seals += sealed
  }
  const used = process.cpuUsage(cpu)
  return {
    frames,
    refused,
    wallMs: Math.round(performance.now() - started),
    cpuMs: Math.round((used.user + used.system) / 1000),
    stopped: early,
    seals,
  }
}

/**
 * The work a stored bulk frame costs after its answer, which the scratch core
 * (no hooks, no sealing) does not do: its hook events derived and serialized
 * as the event log and outbox store them, and the seals it makes due,
 * planned together and applied in one transaction (the message index's bulk
 * removals included). An update of `4n` messages (built once, in a piece of
 * its own) is applied to a scratch document and numbered at once; then, in
 * pieces, its events and its seals. Nothing of it is stored. Without it the
 * first large frames of a process paid V8's compiling of these paths (end to
 * end, the first frames of 2,000 messages cost about twice the later ones).
 * Resolves to the segments it sealed, undefined when the relay is shutting down.
 */
async function warmUpUpkeep(
  n: number,
  stopped: () => boolean,
  built: Partial<UpkeepFrames>,
): Promise<number | undefined> {
  const id = UPKEEP_CONVERSATION
  if (built.base === undefined || built.bulk === undefined) {
    const device = new Y.Doc()
    createConversation(device, alice, { kind: "group", id, participants: [bob, carol], title: "warm-up" }, {})
    built.base = Y.encodeStateAsUpdate(device)
    const users = [alice, bob, carol]
    built.bulk = capture(device, () => {
      for (let i = 0; i < 4 * n; i++)
        sendMessage(device, users[i % 3]!, { body: `warm-up ${i}: a typical short chat line` })
    })
    device.destroy()
    await yieldToLoop()
    if (stopped()) return undefined
  }
  const doc = new Y.Doc()
  try {
    Y.applyUpdate(doc, built.base)
    assignSequenceNumbers(doc, nextFromDocument(doc))
    // Kept by its observers through the bulk update, as the relay's is.
    messageIndex(doc)
    const changes: ChangeEvent[] = []
    const stop = observeChanges(doc, (events) => changes.push(...events))
    Y.applyUpdate(doc, built.bulk)
    assignSequenceNumbers(doc, nextFromDocument(doc))
    stop()
    const events = deriveHookEvents({
      conversationId: id,
      doc,
      actor: { kind: "user", user: alice },
      changes,
      positions: [1],
      now: Date.now(),
    })
    const json = storedEventSerializer()
    for (const event of events) if (isLogged(event)) json(loggedForm(event))
    await yieldToLoop()
    if (stopped()) return undefined
    const plans = planSeals(doc, id, UPKEEP_SEALING, 4)
    // As the relay captures the seals' update.
    const collect = () => {}
    doc.on("update", collect)
    applySeals(doc, plans, null)
    doc.off("update", collect)
    return plans.length
  } finally {
    doc.destroy()
  }
}

/** The upkeep pieces' update: the conversation's creation, then `4n` messages of three users. */
interface UpkeepFrames {
  base: Uint8Array
  bulk: Uint8Array
}

/** The upkeep piece's conversation (a document of its own, never stored). */
const UPKEEP_CONVERSATION = newConversationId()
/** Sealing of the upkeep piece: a few segments due, each more than the message index removes one by one. */
const UPKEEP_SEALING = { segmentSize: 100, keepLive: 20, epochClientIds: Number.MAX_SAFE_INTEGER }

/** A frame the first round sent, and who sent it. */
interface Recorded {
  readonly user: UserId
  readonly frame: Uint8Array
}

/** A scratch user's connection and device. */
interface Open {
  readonly session: ScratchSession
  readonly connection: Connection
  readonly device: Y.Doc
}

/** What a round's body is given: the conversation, its users' connections, and a way to send. */
interface Round {
  readonly core: RelayCore
  readonly id: ConversationId
  readonly users: Map<UserId, Open>
  /** Sends one frame as `user` after serving the event loop; false when the warm-up is to stop. */
  send(user: UserId, frame: Uint8Array): Promise<boolean>
}

/**
 * One round against a fresh scratch core: the creator connects (pending),
 * `body` sends the creation, the others join once it is stored.
 */
async function scratchRound(
  limits: Partial<CoreLimits> | undefined,
  stopped: () => boolean,
  body: (round: Round & { join(): Promise<void> }) => Promise<boolean>,
): Promise<{ sent: number; refused: number; stopped: boolean }> {
  const core = new RelayCore({
    storage: new MemoryStorage(),
    log: createLogger("silent"),
    metrics: new RelayMetrics({ defaultMetrics: false }),
    extensions: [new AuthorizationPolicy(new MemoryClientBindingStore())],
    // The same cost limits as the relay's; no per-user budgets (the scratch users send in a burst).
    limits: {
      ...DEFAULT_CORE_LIMITS,
      ...limits,
      userUpdatesPerSecond: 0,
      maxPendingBytesPerUser: 0,
      maxQueuedBytesPerUser: 0,
      userConversationsPerMinute: 0,
      userParticipantsPerMinute: 0,
      compactAfterUpdates: Number.MAX_SAFE_INTEGER,
      compactAfterBytes: Number.MAX_SAFE_INTEGER,
    },
  })
  let sent = 0
  let refused = 0
  try {
    const id = CONVERSATION
    const users = new Map<UserId, Open>()
    const connect = async (user: UserId) => {
      const session = new ScratchSession({ kind: "user", user })
      users.set(user, { session, connection: await core.connect(id, session), device: new Y.Doc() })
    }
    await connect(alice)
    const round = {
      core,
      id,
      users,
      join: async () => {
        await connect(bob)
        await connect(carol)
      },
      send: async (user: UserId, frame: Uint8Array) => {
        await yieldToLoop()
        if (stopped()) return false
        const open = users.get(user)!
        const answered = open.session.answer()
        open.connection.receive(frame)
        if (!(await answered)) refused++
        sent++
        return true
      },
    }
    const finished = await body(round)
    return { sent, refused, stopped: !finished }
  } finally {
    await core.close()
  }
}

/** Replays the first round's frames in order (the creation first, then the others join). */
async function replayFrames(round: Round & { join(): Promise<void> }, recorded: readonly Recorded[]) {
  for (const [i, { user, frame }] of recorded.entries()) {
    if (!(await round.send(user, frame))) return false
    if (i === 0) await round.join()
  }
  return true
}

/** The first round: builds each frame on its user's device, caught up with the relay, and sends it. */
async function buildFrames(
  round: Round & { join(): Promise<void> },
  n: number,
  recorded: Recorded[],
): Promise<boolean> {
  const { core, id } = round
  const send = async (user: UserId, frame: Uint8Array) => {
    recorded.push({ user, frame })
    return round.send(user, frame)
  }
  const creator = round.users.get(alice)!.device
  const creation = capture(creator, () =>
    createConversation(
      creator,
      alice,
      { kind: "group", id, participants: [bob, carol], title: "warm-up" },
      {},
    ),
  )
  if (!(await send(alice, encodeSyncUpdate(creation)))) return false
  await round.join()
  const shapes: [UserId, (device: Y.Doc) => Uint8Array][] = [
    // A stock client's single message (the usual frame).
    [bob, (d) => encodeSyncUpdate(capture(d, () => sendMessage(d, bob, { body: "hello" })))],
    // Bulk messages, each followed by a read-marker move.
    [
      alice,
      (d) =>
        encodeSyncUpdate(
          capture(d, () => {
            for (let i = 0; i < n; i++) {
              sendMessage(d, alice, { body: `warm-up ${i}: a typical short chat line` })
              markRead(d, alice)
            }
          }),
        ),
    ],
    // Reactions, each on its own key, some taken back.
    [
      carol,
      (d) =>
        encodeSyncUpdate(
          capture(d, () => {
            const targets = listMessages(d, { last: n })
            for (let i = 0; i < n * 2; i++)
              react(d, carol, targets[i % targets.length]!.id, i < n ? "👍" : "🎉")
            for (let i = 0; i < n / 4; i++) unreact(d, carol, targets[i % targets.length]!.id, "👍")
          }),
        ),
    ],
    // An SDK's sync step 2 after an offline period: messages, edits, deletions, reactions, markers.
    [
      bob,
      (d) => {
        const before = Y.encodeStateVector(d)
        const others = listMessages(d, { last: n }).filter((m) => m.author !== bob)
        const mine: MessageId[] = []
        for (let i = 0; i < n; i++) {
          mine.push(sendMessage(d, bob, { body: `offline ${i}: on my way, see you soon` }).id)
          if (i % 3 === 0 && others.length > 0) react(d, bob, others[i % others.length]!.id, "👍")
          if (i % 9 === 0 && others.length > 0) unreact(d, bob, others[i % others.length]!.id, "👍")
          if (i % 5 === 0) editMessage(d, bob, mine[mine.length - 1]!, `edited ${i}`)
          if (i % 25 === 0 && mine.length > 1) deleteMessage(d, bob, mine[mine.length - 2]!)
          markRead(d, bob)
        }
        return encodeSyncStep2(Y.encodeStateAsUpdate(d, before))
      },
    ],
    // Long bodies.
    [
      carol,
      (d) =>
        encodeSyncUpdate(
          capture(d, () => {
            for (let i = 0; i < 4; i++) sendMessage(d, carol, { body: `${i} ${"long text ".repeat(1_500)}` })
          }),
        ),
    ],
    // Work of several devices merged into one update (many client ids).
    [
      alice,
      (d) => {
        const updates: Uint8Array[] = []
        const base = Y.encodeStateAsUpdate(d)
        for (let i = 0; i < 16; i++) {
          const other = new Y.Doc()
          Y.applyUpdate(other, base)
          other.clientID = freshClientId()
          updates.push(capture(other, () => sendMessage(other, alice, { body: `from device ${i}` })))
        }
        return encodeSyncUpdate(Y.mergeUpdates(updates))
      },
    ],
  ]
  for (const [user, build] of shapes) {
    // Caught up with the relay (its numbers included), under a fresh client id as a new session is.
    const device = round.users.get(user)!.device
    const missing = await core.read(id, (doc) => Y.encodeStateAsUpdate(doc, Y.encodeStateVector(device)))
    Y.applyUpdate(device, missing)
    device.clientID = freshClientId()
    if (!(await send(user, build(device)))) return false
  }
  return true
}

/** The update `change` makes on `doc`, merged. */
function capture(doc: Y.Doc, change: () => void): Uint8Array {
  const before = Y.encodeStateVector(doc)
  change()
  return Y.encodeStateAsUpdate(doc, before)
}

/** A client id no other scratch device uses (random, as Yjs picks them). */
function freshClientId(): number {
  return Math.floor(Math.random() * 0x7fffffff) + 1
}
