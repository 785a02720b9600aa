import {
  assignSequenceNumbers,
  type ConversationId,
  createConversation,
  deleteMessage,
  editMessage,
  encodeSyncStep2,
  encodeSyncUpdate,
  HistoryDefaults,
  listMessages,
  type MessageId,
  MessageType,
  markRead,
  newConversationId,
  nextFromDocument,
  react,
  readParleyFrame,
  sendMessage,
  type UserId,
  unreact,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as Y from "yjs"
import type { Connection, Session } from "./connection.js"
import { HistoryKeeper, type SealedReadLimits } from "./history/keeper.js"
import { namedSegments } from "./history/sealed-ids.js"
import type { SealingOptions } from "./history/sealing.js"
import { MemoryHistoryStore } from "./history/store.js"
import type { EventLog } from "./hooks/event-log.js"
import { HooksExtension } from "./hooks/extension.js"
import { MemoryEventLog } from "./hooks/memory-event-log.js"
import { MemoryOutbox, type Outbox } from "./hooks/outbox.js"
import { createLogger } from "./log.js"
import { RelayMetrics } from "./metrics.js"
import { AuthorizationPolicy } from "./policy/authorization-policy.js"
import { MemoryClientBindingStore } from "./policy/client-bindings.js"
import { type CoreLimits, DEFAULT_CORE_LIMITS, RelayCore } from "./relay-core.js"
import { MemoryStorage } from "./storage/memory.js"
import { capCounts } from "./update-cost.js"

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
  /**
   * The relay's sealed history settings (default: shared `HistoryDefaults`),
   * so that the scratch conversations seal as the relay's do; `false` (a
   * relay that does not seal): no sealing, and no seal pieces.
   */
  readonly history?: Partial<SealingOptions & SealedReadLimits> | false
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
  /**
   * Segments its seal pieces sealed through the relay's history code into a
   * scratch history store (see `sealPiece`): a few per round; 0 without sealing.
   */
  readonly seals: number
  /** Hook events its scratch cores recorded in their scratch event logs (every frame's, the seals' included). */
  readonly events: number
}

const DEFAULT_ROUNDS = 4
const DEFAULT_FRAME_MESSAGES = 120

/** One id for every round's scratch conversation: each round has a core of its own. */
const CONVERSATION = newConversationId()
/** The seal pieces' conversation (seeded anew in each round's scratch storage). */
const SEAL_CONVERSATION = newConversationId()
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
 * document rules, apply, sequencing, storing in memory, broadcast, "saved")
 * and what a stored frame costs after its answer (its hook events derived
 * and recorded in an event log, sealing) on synthetic frames shaped like the
 * largest honest ones — an SDK's sync step 2 after an offline period, bulk
 * messages each followed by a read-marker move, reactions each on its own
 * key, long bodies, merged work of many devices, a stock client's
 * one-message update, and bulk messages into a conversation that seals at the
 * relay's segment size — against a scratch relay core (in-memory documents,
 * history store and event log), until V8 has compiled the hot functions.
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
  const scratch = scratchSettings(options, n)
  const started = performance.now()
  const cpu = process.cpuUsage()
  // The first round builds its frames on devices as clients would; later rounds send the same bytes
  // to a fresh scratch core each, so that they cost the update path only, not building frames.
  const recorded: Recorded[] = []
  const sealing: Partial<SealFrames> = {}
  let seals = 0
  let events = 0
  let frames = 0
  let refused = 0
  let early = false
  for (let round = 0; round < rounds && !early; round++) {
    const done = await scratchRound(scratch, stopped, async (open) => {
      const sent = round === 0 ? await buildFrames(open, n, recorded) : await replayFrames(open, recorded)
      if (!sent || !scratch.history) return sent
      const sealed = await sealPiece(open, scratch, stopped, sealing)
      if (sealed === undefined) return false
      seals += sealed
      return true
    })
    frames += done.sent
    refused += done.refused
    events += done.events
    early = done.stopped
  }
  const used = process.cpuUsage(cpu)
  return {
    frames,
    refused,
    wallMs: Math.round(performance.now() - started),
    cpuMs: Math.round((used.user + used.system) / 1000),
    stopped: early,
    seals,
    events,
  }
}

/** What the scratch cores are made with: the relay's limits and sealing. */
interface ScratchSettings {
  readonly limits: CoreLimits
  readonly history:
    | { readonly sealing: SealingOptions; readonly reads: Partial<SealedReadLimits> }
    | undefined
}

/**
 * The relay's settings as the scratch cores use them. A segment size or a
 * live document beyond {@link SEAL_PIECE_BOUND} messages is sealed at that
 * bound (the same code, looping over fewer messages), so that a relay
 * configured for huge segments does not build as large a scratch
 * conversation. One so small that the round's own conversation (about `2n`
 * messages, `n` per bulk frame) would seal is sealed at a larger segment
 * size: that conversation's frames are replayed to every round's fresh core
 * and build on the first round's relay writes, which a seal makes differ
 * between rounds (then refused).
 */
function scratchSettings(options: WarmUpOptions, n: number): ScratchSettings {
  const limits = { ...DEFAULT_CORE_LIMITS, ...options.limits }
  const history =
    options.history === false
      ? undefined
      : (() => {
          const { maxSealedReadsPerUpdate, heldSegmentsPerDocument } = options.history ?? {}
          // Built as the relay builds its own (relay.ts), read limits included: an options object of
          // another shape made the relay's first seal deoptimize the sealing code compiled for this one.
          const sealing: SealingOptions = { ...HistoryDefaults, ...options.history }
          const keepLive = Math.max(0, Math.min(sealing.keepLive, SEAL_PIECE_BOUND))
          // Beyond the round's conversation, with room: the creation, 2n messages and about 25 more.
          const unsealed = 3 * n + 50
          const segmentSize = Math.max(
            1,
            unsealed - keepLive,
            Math.min(sealing.segmentSize, SEAL_PIECE_BOUND),
          )
          // No epoch for its client ids: a fresh epoch drops the scratch conversation's sessions, and the
          // round would wait for their answers for good (the relay then never finished its shutdown).
          const epochClientIds = Number.MAX_SAFE_INTEGER
          return {
            sealing: { ...sealing, segmentSize, keepLive, epochClientIds },
            reads: {
              ...(maxSealedReadsPerUpdate !== undefined ? { maxSealedReadsPerUpdate } : {}),
              ...(heldSegmentsPerDocument !== undefined ? { heldSegmentsPerDocument } : {}),
            },
          }
        })()
  return { limits, history }
}

/** Largest segment, and live document kept, that the seal pieces build (above the defaults of 300 and 100). */
const SEAL_PIECE_BOUND = 1_000

/** The seal piece's updates: the stored conversation, then the frames sent into it, in order, and by whom. */
interface SealFrames {
  seed: Uint8Array
  frames: Recorded[]
}

/**
 * The path the first large frames into a long conversation take, which the
 * round's own conversation (a few hundred messages) never reaches. A
 * conversation of `keepLive + segmentSize` sequenced messages (due to seal)
 * is stored in the round's scratch storage as a relay stores one — each
 * author's messages under a client id of their own, numbered in records of
 * a few hundred ids; its last sixth, which alice's offline device has not
 * seen, written by bob and carol on two devices at once — and loaded (its
 * stored records decoded). Then, as
 * frames arrive after a start: bob's one-message frame (a one-id sequence
 * record; the first seal, planned over records long and short); alice's
 * offline device, last synced before bob's latest messages, sends its mixed
 * work up to the caps as a stock client sends it in one sync step 2 (three
 * sessions: messages written beside bob's unseen ones, edits and deletions
 * of its own live messages, reactions to others' messages, sealed by then or
 * live); last, carol sends three times `segmentSize` messages in bulk frames
 * (frames of nine tenths of the value cap: one may make two segments due at
 * once). Each frame takes the relay's real sealing after its
 * answer — segments planned, stored with their id filters (`HistoryKeeper`, a
 * scratch `MemoryHistoryStore`), applied (the message index's bulk
 * removals), the filters held (`SealedIdFilters`), the seal's change stored
 * and its events recorded — and every frame after the first has its new ids
 * checked against the sealed ones' filters. The updates are built once, in
 * pieces (the first round), then sent as bytes. Resolves to the segments
 * sealed, undefined when the relay is shutting down.
 *
 * Why this order and these shapes: they are those of the first frames a
 * relay meets after a start (`npm run bench:frames`' mixed shape). With only
 * bulk frames and a seed written under one client id, the first real mixed
 * frame met object shapes the warm-up had not (short sequence records beside
 * long ones, insertions concurrent with others' at the same place, two
 * segments due at once, a sealing options object of the relay's shape) and
 * deoptimized the sealing, message-index and Yjs integration code compiled
 * for the others (BENCHMARKS.md, "Frame cost", session 19).
 */
async function sealPiece(
  round: Round,
  scratch: ScratchSettings,
  stopped: () => boolean,
  built: Partial<SealFrames>,
): Promise<number | undefined> {
  const { segmentSize, keepLive } = scratch.history!.sealing
  if (built.seed === undefined || built.frames === undefined) {
    const total = keepLive + segmentSize
    const unseen = Math.max(1, Math.ceil(total / 6))
    const device = new Y.Doc()
    try {
      createConversation(
        device,
        alice,
        { kind: "group", id: SEAL_CONVERSATION, participants: [bob, carol], title: "warm-up" },
        {},
      )
      // Bob's client ids below alice's offline device's, carol's above (see offlineAtCaps).
      const authors = [alice, bob, carol].map((user, i) => ({ user, client: clientIdIn([1, 0, 2][i]!) }))
      const numbering = freshClientId()
      // In pieces of a few hundred messages: building one costs about what sending it does.
      const write = async (
        from: number,
        to: number,
        author: (i: number) => { user: UserId; client: number },
      ) => {
        for (let written = from; written < to; written += SEED_PIECE) {
          for (let i = written; i < Math.min(to, written + SEED_PIECE); i++) {
            const { user, client } = author(i)
            device.clientID = client
            sendMessage(device, user, { body: `sealed ${i}: a typical short chat line` })
          }
          // Numbered as the relay numbers what it stores, under a client id of its own.
          device.clientID = numbering
          assignSequenceNumbers(device, nextFromDocument(device))
          await yieldToLoop()
          if (stopped()) return false
        }
        return true
      }
      if (!(await write(0, total - unseen, (i) => authors[i % 3]!))) return undefined
      const before = Y.encodeStateAsUpdate(device)
      // The messages alice's device has not seen, carol's and bob's, written at the same place by two
      // devices (carol's since `before`), as two users writing at once do.
      const carols = new Y.Doc()
      try {
        Y.applyUpdate(carols, before)
        // Another device of carol's: above alice's offline device too.
        carols.clientID = clientIdIn(2)
        for (let i = 0; i < Math.floor(unseen / 2); i++)
          sendMessage(carols, carol, { body: `unseen ${i}: a typical short chat line` })
        // Bob's first (below alice's offline device: it goes after it), then carol's and bob's in turn
        // (the ones Yjs's conflict scan passes because their origin is before them).
        const from = total - unseen + Math.floor(unseen / 2)
        if (!(await write(from, total, (i) => authors[1 + ((i - from) % 2)]!))) return undefined
        Y.applyUpdate(device, Y.encodeStateAsUpdate(carols, Y.encodeStateVector(device)))
        device.clientID = numbering
        assignSequenceNumbers(device, nextFromDocument(device))
      } finally {
        carols.destroy()
      }
      built.seed = Y.encodeStateAsUpdate(device)
      const frames: Recorded[] = []
      device.clientID = authors[1]!.client
      frames.push({
        user: bob,
        frame: encodeSyncUpdate(capture(device, () => sendMessage(device, bob, { body: "back again" }))),
      })
      frames.push({ user: alice, frame: offlineAtCaps(before, built.seed, total, scratch.limits) })
      await yieldToLoop()
      if (stopped()) return undefined
      // Carol's device, sending without waiting for the relay's numbers.
      device.clientID = freshClientId()
      // Frames as large as the value cap allows (with room), so that one may make two segments due at once.
      const perFrame = Math.max(1, Math.floor(scratch.limits.maxUpdateValues * 0.9))
      for (let sent = 0; sent < 3 * segmentSize; sent += perFrame) {
        const count = Math.min(perFrame, 3 * segmentSize - sent)
        frames.push({
          user: carol,
          frame: encodeSyncUpdate(
            capture(device, () => {
              for (let i = 0; i < count; i++)
                sendMessage(device, carol, { body: `quick ${sent + i}: a typical short chat line` })
            }),
          ),
        })
        await yieldToLoop()
        if (stopped()) return undefined
      }
      built.frames = frames
    } finally {
      device.destroy()
    }
  }
  await round.storage.append(SEAL_CONVERSATION, [built.seed])
  const open = new Map<UserId, Open>()
  for (const user of [alice, bob, carol]) open.set(user, await round.connect(SEAL_CONVERSATION, user))
  for (const { user, frame } of built.frames)
    if (!(await round.sendOn(open.get(user)!, frame))) return undefined
  // Behind the last frame's seal in the document's queue.
  return round.core.read(SEAL_CONVERSATION, (doc) => namedSegments(doc))
}

/**
 * Alice's offline work since `before` (a stored conversation's older state),
 * as one sync step 2 of a stock client, reacting to others' messages among
 * the last `messages`: as many messages, with their
 * reactions, edits, deletions and read-marker moves, as fit the relay's
 * struct and value caps (`limits`), in three sessions. Only the device's own
 * work: everything else it has, the relay's `stored` conversation has too.
 */
function offlineAtCaps(
  before: Uint8Array,
  stored: Uint8Array,
  messages: number,
  limits: CoreLimits,
): Uint8Array {
  const known = Y.encodeStateVectorFromUpdate(stored)
  // About 1.1 structs and 1.4 values per message: start from that, then step down until it fits.
  let perSession = Math.max(
    1,
    Math.floor(Math.min(limits.maxUpdateStructs / 1.1, limits.maxUpdateValues / 1.42) / 3),
  )
  for (;;) {
    const offline = new Y.Doc()
    try {
      Y.applyUpdate(offline, before)
      // Between the client ids of the messages it has not seen (bob's below, carol's above): its first
      // message is placed after bob's and before carol's, which takes both ways of Yjs's conflict rule.
      offline.clientID = clientIdIn(1)
      const others = listMessages(offline, { last: messages })
        .filter((m) => m.author !== alice)
        .map((m) => m.id)
      offlineWork(offline, alice, others, perSession, 3, () => clientIdIn(1))
      const update = Y.encodeStateAsUpdate(offline, known)
      const { structs, values } = capCounts(update)
      if ((structs <= limits.maxUpdateStructs && values <= limits.maxUpdateValues) || perSession <= 1)
        return encodeSyncStep2(update)
      perSession = Math.max(
        1,
        Math.floor(
          perSession * Math.min(limits.maxUpdateStructs / structs, limits.maxUpdateValues / values),
        ) - 1,
      )
    } finally {
      offline.destroy()
    }
  }
}

/** Messages written per piece of the seal piece's stored conversation. */
const SEED_PIECE = 250

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
  /** The scratch core's document storage (in memory). */
  readonly storage: MemoryStorage
  readonly id: ConversationId
  readonly users: Map<UserId, Open>
  /** Sends one frame as `user` after serving the event loop; false when the warm-up is to stop. */
  send(user: UserId, frame: Uint8Array): Promise<boolean>
  /** Connects `user` to conversation `id` (another than the round's), loading it. */
  connect(id: ConversationId, user: UserId): Promise<Open>
  /** Sends one frame on `open` after serving the event loop; false when the warm-up is to stop. */
  sendOn(open: Open, frame: Uint8Array): Promise<boolean>
}

/**
 * One round against a fresh scratch core: the creator connects (pending),
 * `body` sends the creation, the others join once it is stored. The core has
 * the relay's history keeper (its sealing, over a scratch in-memory history
 * store) and hooks extension (no targets; its outbox records every event in
 * a scratch in-memory event log), as the relay's has.
 */
async function scratchRound(
  scratch: ScratchSettings,
  stopped: () => boolean,
  body: (round: Round & { join(): Promise<void> }) => Promise<boolean>,
): Promise<{ sent: number; refused: number; events: number; stopped: boolean }> {
  const storage = new MemoryStorage()
  const metrics = new RelayMetrics({ defaultMetrics: false })
  const log = createLogger("silent")
  const events = scratchOutbox()
  const core = new RelayCore({
    storage,
    log,
    metrics,
    extensions: [
      new AuthorizationPolicy(new MemoryClientBindingStore()),
      new HooksExtension({ outbox: events.outbox, log, registry: metrics.registry }),
    ],
    ...(scratch.history
      ? {
          history: new HistoryKeeper(
            new MemoryHistoryStore(),
            scratch.history.sealing,
            scratch.history.reads,
          ),
        }
      : {}),
    // The same cost limits as the relay's; no per-user budgets (the scratch users send in a burst).
    limits: {
      ...scratch.limits,
      userUpdatesPerSecond: 0,
      maxPendingBytesPerUser: 0,
      maxQueuedBytesPerUser: 0,
      userConversationsPerMinute: 0,
      userParticipantsPerMinute: 0,
      compactAfterUpdates: Number.MAX_SAFE_INTEGER,
      compactAfterBytes: Number.MAX_SAFE_INTEGER,
      // Nor for its garbage (see `scratchSettings`): with `--epoch-garbage-bytes` low, the warm-up never ended.
      epochGarbageBytes: 0,
    },
  })
  let sent = 0
  let refused = 0
  let finished = false
  let recorded = 0
  try {
    await core.start()
    const id = CONVERSATION
    const users = new Map<UserId, Open>()
    const connect = async (conversation: ConversationId, user: UserId): Promise<Open> => {
      const session = new ScratchSession({ kind: "user", user })
      return { session, connection: await core.connect(conversation, session), device: new Y.Doc() }
    }
    const join = async (user: UserId) => {
      users.set(user, await connect(id, user))
    }
    await join(alice)
    const sendOn = async (open: Open, frame: Uint8Array) => {
      await yieldToLoop()
      if (stopped()) return false
      const answered = open.session.answer()
      open.connection.receive(frame)
      if (!(await answered)) refused++
      sent++
      return true
    }
    const round = {
      core,
      storage,
      id,
      users,
      join: async () => {
        await join(bob)
        await join(carol)
      },
      send: (user: UserId, frame: Uint8Array) => sendOn(users.get(user)!, frame),
      connect,
      sendOn,
    }
    finished = await body(round)
  } finally {
    try {
      await core.close()
      // After the core: its last changes' events are recorded once it has stopped the hooks.
      recorded = Number(await events.log.latest())
    } finally {
      events.close()
    }
  }
  return { sent, refused, events: recorded, stopped: !finished }
}

/**
 * The scratch core's outbox and event log, in memory. Not the SQLite ones in a
 * scratch database: with them, a relay restarted on a full disk never finished
 * its own hook recovery (test/storage-failure/full-disk.test.ts; why is not
 * found yet).
 */
function scratchOutbox(): { readonly outbox: Outbox; readonly log: EventLog; close(): void } {
  const log = new MemoryEventLog()
  return { outbox: new MemoryOutbox(log), log, close: () => {} }
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
        offlineWork(
          d,
          bob,
          others.map((m) => m.id),
          n,
          1,
        )
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

/**
 * An offline period's work of `user` on device `d`, in `sessions` sessions
 * (the first under the device's client id, each next one under a fresh one,
 * as the SDK opens one per session) of `perSession` messages each: every
 * third message a reaction to one of `others`, every ninth one taken back,
 * every fifth an edit of the message, every 25th a deletion of the one
 * before, and a read-marker move after each.
 */
function offlineWork(
  d: Y.Doc,
  user: UserId,
  others: readonly MessageId[],
  perSession: number,
  sessions: number,
  newClientId: () => number = freshClientId,
): void {
  const mine: MessageId[] = []
  for (let session = 0; session < sessions; session++) {
    if (session > 0) d.clientID = newClientId()
    for (let i = 0; i < perSession; i++) {
      const k = session * perSession + i
      mine.push(sendMessage(d, user, { body: `offline ${k}: on my way, see you soon` }).id)
      if (i % 3 === 0 && others.length > 0) react(d, user, others[k % others.length]!, "👍")
      if (i % 9 === 0 && others.length > 0) unreact(d, user, others[k % others.length]!, "👍")
      if (i % 5 === 0) editMessage(d, user, mine[mine.length - 1]!, `edited ${k}`)
      if (i % 25 === 0 && mine.length > 1) deleteMessage(d, user, mine[mine.length - 2]!)
      markRead(d, user)
    }
  }
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

/** A random client id in the `third`-th third (0, 1, 2) of Yjs's range, to order concurrent writes. */
function clientIdIn(third: number): number {
  return Math.floor(((third + Math.random()) * 0x7fffffff) / 3) + 1
}
