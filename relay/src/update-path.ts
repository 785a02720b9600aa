import {
  type ChangeEvent,
  type Decision,
  decodeFoldedHistory,
  decodeSegmentSummary,
  type EditRecord,
  ErrorCode,
  encodeSyncUpdate,
  endOfEpoch,
  epochOf,
  HistoryDefaults,
  isRetryable,
  type MessageId,
  MetaKey,
  messageIndex,
  ParleyError,
  Rule,
  type SealedDeletion,
  sealedHistory,
  sealedThrough,
  sequenceAddedMessages,
  sequenceWriterIds,
  tombstoneOf,
  typesOf,
  type UserId,
  unsequencedMessages,
  writeSequenceNumbers,
} from "@parley/shared"
import * as Y from "yjs"
import { type ChargedWork, chargedWorkIn } from "./charged-work.js"
import type { ClientIdAllowance } from "./client-id-allowance.js"
import type { Connection } from "./connection.js"
import type { DocumentHost } from "./document-host.js"
import type { AfterSaved, ClientIdOwners, Extensions } from "./extension.js"
import { growthOf } from "./growth.js"
import { epochValueBytes, sealGarbageBound, startEpoch } from "./history/epoch.js"
import {
  type FoldedReaction,
  FoldedReactions,
  type ItemId,
  keysFolded,
  reactionsFolded,
} from "./history/folded-reactions.js"
import type { IdFilter } from "./history/id-filter.js"
import type { HistoryKeeper } from "./history/keeper.js"
import {
  applyPurge,
  holdPurged,
  type PurgePlan,
  planPurge,
  planRefold,
  storePurge,
} from "./history/purge-plan.js"
import { SealedReads } from "./history/sealed-reads.js"
import { applySeals, placeholdersToTombstones, planSeals, type SealPlan, sealDue } from "./history/sealing.js"
import type { Logger } from "./log.js"
import type { RelayMetrics } from "./metrics.js"
import { sealedIdsNamed } from "./policy/check-update.js"
import { bindingBytes } from "./policy/client-bindings.js"
import { membershipPolicy } from "./policy.js"
import { describePrincipal, type Principal, RELAY } from "./principal.js"
import type { ContentPurge } from "./purge/content-purge.js"
import { removeDeletedLeftovers } from "./purge/deleted-leftovers.js"
import type { OwedPurges } from "./purge/owed-purges.js"
import { holdsPurgeableContent, purgeConversationContent } from "./purge/purge-conversation.js"
import type { PurgeHolds } from "./purge/purge-holds.js"
import type { PurgedContent } from "./purge/redact.js"
import type { ReplicaView } from "./replica-view.js"
import type { Sequencer } from "./sequencer.js"
import { isStorageFailure, storageUnavailable } from "./storage/guard.js"
import type { RelayStorage } from "./storage/types.js"
import { joinBatch, type QueuedUpdate } from "./update-batch.js"
import {
  CostRule,
  checkUpdateCost,
  refuseUnknownDeletions,
  type ScanProgress,
  type UpdateCostLimits,
} from "./update-cost.js"
import { UPDATE_COST_RECIPIENTS, UPDATE_COST_VALUES, type UserLedger } from "./user-limits.js"
import { decodeOnce, inspectUpdate, recordIdsIn } from "./yjs-updates.js"

/** Limits the update path enforces. */
export interface PathLimits extends UpdateCostLimits {
  /** Largest update accepted, in bytes. */
  readonly maxUpdateBytes: number
  /** Compact once this many log entries follow the snapshot... */
  readonly compactAfterUpdates: number
  /** ...or once they hold this many bytes. */
  readonly compactAfterBytes: number
  /**
   * A conversation whose snapshot holds more than this many bytes of removed
   * values (the snapshot less a fresh epoch of it) is rewritten as a fresh
   * epoch (see {@link garbageEpochDue}); 0 = never.
   */
  readonly epochGarbageBytes: number
  /** Least time between two fresh epochs of one document, for its garbage or its client ids (see {@link epochHeldBack}). */
  readonly epochGarbageIntervalMs: number
  /**
   * How long after a stock y-websocket provider left a document a fresh
   * epoch of it still waits (see {@link epochHeldBack}): one dropped by the
   * network or by a limit reconnects, and cannot follow an epoch.
   */
  readonly epochStockGraceMs: number
  /** How long a message deletion's purge waits for the document's next deletions to share it (see {@link schedulePurge}). */
  readonly purgeDelayMs: number
}

/** What the update path works with. */
export interface PathContext {
  readonly storage: RelayStorage
  readonly sequencer: Sequencer
  /** The relay's extensions: the policy checks, observers after save, compaction limits. */
  readonly extensions: Extensions
  readonly metrics: RelayMetrics
  readonly log: Logger
  readonly limits: PathLimits
  /**
   * Decides, after a change is durable and before anyone is sent it, the access
   * of every connection it may concern: pending connections are promoted (and
   * caught up: returned, so that they are not sent the change again) or closed,
   * removed participants closed. See `RelayCore.settleAccess`.
   */
  settleAccess(host: DocumentHost, change: AccessChange): ReadonlySet<Connection>
  /** New client ids each user may still add to each document. */
  readonly clientIds?: ClientIdAllowance
  /** The document's memory may no longer match its storage: drop it. */
  evict(host: DocumentHost, error: unknown): void
  /**
   * Storage holds a fresh epoch of the document: drop the loaded one and close
   * its connections (retryable), so that the next join loads the new one.
   */
  restart?(host: DocumentHost, reason: string): void
  /**
   * The document's state vector before the data the relay derived into it in
   * memory and has not stored (see `DerivedWrites`); undefined when none.
   */
  unstoredSince?(host: DocumentHost): Uint8Array | undefined
  /**
   * Whether storage answers (a {@link StorageGuard}). With it, writes are
   * refused with the retryable STORAGE_UNAVAILABLE while storage fails, and a
   * change whose append failed stays applied but unsaved until storage is back
   * (see {@link storeWhenBack}) instead of evicting the document.
   */
  readonly storageHealth?: StorageHealth
  /** Per-user budgets: conversations created and participants added per minute. */
  readonly users?: UserLedger
  /** Sealed history: where segments go, when to seal (none: the live document keeps everything). */
  readonly history?: HistoryKeeper
  /** The backend's part of purges (see `purge/`). */
  readonly purge?: ContentPurge
  /** Tells the other relays of a cluster of a purge that ran here (see `Cluster.purged`). */
  readonly sharePurge?: (purge: PurgedContent) => void
  /** The documents whose hook deliveries wait for their owed purges (see `PurgeHolds`). */
  readonly purgeHolds?: PurgeHolds
  /**
   * Tells the other relays of a cluster that a fresh epoch of document
   * `name` is stored (see `Cluster.epochStarted`): their copies of the old
   * one cannot take the new epoch's changes.
   */
  readonly shareEpoch?: (name: string) => void
  /**
   * In a cluster, whether this relay still orders document `name` (holds its
   * lease). A change waiting for this relay's storage gives up once it does
   * not: another relay orders the document meanwhile (see {@link storeWhenBack}).
   */
  orders?(name: string): boolean
}

/** How often a change waiting for storage looks whether its relay still orders the document. */
const LEASE_CHECK_MS = 1_000

/** What the update path asks of a storage guard. */
export interface StorageHealth {
  readonly available: boolean
  /** Resolves once storage answers again; rejects when the relay shuts down. */
  whenAvailable(): Promise<void>
}

/** What {@link PathContext.settleAccess} is told about a stored change. */
export interface AccessChange {
  readonly events: readonly ChangeEvent[]
  /** The change's own update (without the relay's sequencing). */
  readonly update?: Uint8Array
  /** The connection that sent it, and the client ids it wrote for (for its "saved"). */
  readonly from?: Connection
  readonly clientIds?: Iterable<number>
}

/** Largest update broadcast merged with its sequence numbers into one frame (see submitUpdate). */
const MERGE_FOR_BROADCAST_BYTES = 16 * 1024

/** Transaction origin of the relay's own writes. */
export const RELAY_ORIGIN = Symbol("parley-relay")

function broadcast(
  host: DocumentHost,
  frame: Uint8Array,
  except?: Connection,
  caughtUp: ReadonlySet<Connection> = NOBODY,
): void {
  for (const connection of host.connections)
    if (connection !== except && !caughtUp.has(connection)) connection.send(frame)
}

const NOBODY: ReadonlySet<Connection> = new Set()

/** Runs `change` and returns the update it made (merged), if any. */
function captureUpdate(doc: Y.Doc, change: () => void): Uint8Array | undefined {
  const updates: Uint8Array[] = []
  const collect = (update: Uint8Array) => updates.push(update)
  doc.on("update", collect)
  try {
    change()
  } finally {
    doc.off("update", collect)
  }
  if (updates.length === 0) return undefined
  return updates.length === 1 ? updates[0] : Y.mergeUpdates(updates)
}

/** An update to store, and who wrote it (for the metrics). */
interface Entry {
  readonly update: Uint8Array
  readonly source: "client" | "relay" | "server"
  /** Sealed messages whose placeholders the relay turned into tombstones (their deletion was already told). */
  readonly sealedDeletions?: readonly MessageId[]
}

/** Stores `entries` in one append (one commit) and accounts for them. */
async function persist(
  ctx: PathContext,
  host: DocumentHost,
  entries: readonly Entry[],
  deleting = false,
): Promise<number[]> {
  if (deleting) await owePurge(ctx, host)
  // The relay's own client ids are stored as its (the policy's bindings) before anything under them is.
  const first = ctx.extensions.beforeAppend({ name: host.name, doc: host.doc })
  if (first) await first
  const stop = ctx.metrics.persistence.startTimer()
  const positions = await ctx.storage.append(
    host.key,
    entries.map((e) => e.update),
  )
  stop()
  account(ctx, host, entries, positions)
  return positions
}

/** Counts `entries`, stored at `positions`, in the metrics and the document's log figures. */
function account(ctx: PathContext, host: DocumentHost, entries: readonly Entry[], positions: number[]): void {
  let bytes = 0
  for (const { update, source } of entries) {
    ctx.metrics.updates.inc({ source })
    bytes += update.length
  }
  ctx.metrics.updateBytes.inc(bytes)
  host.recordAppend(entries.length, bytes, positions)
}

function messageIdsIn(events: readonly ChangeEvent[]): MessageId[] {
  const ids: MessageId[] = []
  for (const event of events) {
    if (event.type === "message.sent") ids.push(event.message.id)
    else if (event.type === "message.deleted") ids.push(event.messageId)
  }
  return ids
}

/**
 * Gives the next numbers to messages not sequenced yet (among `candidates`, or
 * all), as the relay's own change, in memory only: the caller stores the
 * returned update (in the same commit as the change that brought the messages)
 * before anyone sees it.
 */
async function sequence(
  ctx: PathContext,
  host: DocumentHost,
  candidates: readonly MessageId[] | undefined,
): Promise<Entry | undefined> {
  if (host.name.kind !== "conversation") return undefined
  if (candidates && candidates.length === 0) return undefined
  // A placeholder with no number may be a deletion of a message sealed meanwhile (sent by a device
  // that still held it live): the segment holding it says, read only for such a case.
  let sealed: MessageId[] = []
  if (ctx.history && sealedThrough(host.doc) > 0) {
    const index = messageIndex(host.doc)
    const orphans = (candidates ?? index.unsequenced()).filter(
      (id) => index.deleted.has(id) && !index.seqOf.has(id) && !index.records.has(id),
    )
    if (orphans.length > 0) {
      // Held already when a client's update brought them (its placeholders' ids are settled before
      // the rules); read here only after a crash left some unnumbered. The relay's own reads.
      await ctx.history.holdNamed(host, orphans, SealedReads.relay())
      const history = sealedHistory(host.doc)
      sealed = orphans.filter((id) => history.entry(id) !== undefined)
    }
  }
  const ids = unsequencedMessages(host.doc, candidates)
  if (ids.length === 0 && sealed.length === 0) return undefined
  const from = ids.length > 0 ? await ctx.sequencer.reserve(host.name.id, ids.length) : 0
  const update = captureUpdate(host.doc, () => {
    if (sealed.length > 0) sealed = placeholdersToTombstones(host.doc, sealed, RELAY_ORIGIN)
    if (ids.length > 0) writeSequenceNumbers(host.doc, from, ids, RELAY_ORIGIN)
  })
  return update ? { update, source: "relay", sealedDeletions: sealed } : undefined
}

/**
 * Applies `change` to the document in memory, sequences the messages it
 * brought, and stores both in one commit; nobody is shown the new state until
 * it is durable (joins wait, broadcast comes after). If anything fails after
 * the document changed, memory no longer matches storage and the document is
 * evicted. Returns what was stored and the change's events. With
 * `sequenceLeftovers`, every message still without a number is numbered.
 */
async function applyAndStore(
  ctx: PathContext,
  host: DocumentHost,
  change: () => Entry | undefined,
  options: {
    sequenceLeftovers?: boolean
    from?: Connection
    clientIds?: Iterable<number>
    /** Told when the change's append failed and the change waits in memory for storage (see {@link storeWhenBack}). */
    held?: (failure: ParleyError) => void
  } = {},
): Promise<{
  entries: Entry[]
  positions: number[]
  events: ChangeEvent[]
  /** How many of `events` each entry brought (see `AfterSaved.counts`). */
  counts: number[]
  caughtUp: ReadonlySet<Connection>
}> {
  const release = host.holdUnsaved()
  try {
    const first = change()
    const events = host.takeEvents()
    const firstCount = events.length
    const sequencing = options.sequenceLeftovers
      ? await sequence(ctx, host, undefined)
      : first && (await sequence(ctx, host, messageIdsIn(events)))
    const converted = new Set(sequencing ? (sequencing.sealedDeletions ?? []) : [])
    // The placeholder's arrival already said "deleted"; the tombstone that replaces it says it again.
    for (const event of host.takeEvents())
      if (
        !(
          event.type === "message.deleted" &&
          converted.has(event.messageId) &&
          converted.delete(event.messageId)
        )
      )
        events.push(event)
    const entries = [first, sequencing].filter((e) => e !== undefined)
    // Connections that joined while an earlier change was being stored wait for a decision too.
    if (entries.length === 0)
      return { entries, positions: [], events, counts: [], caughtUp: ctx.settleAccess(host, { events }) }
    // The change's own entry, then the sequencing's (hook event ids are keyed by the entry holding the change).
    const counts = entries.length === 2 ? [firstCount, events.length - firstCount] : [events.length]
    const deleting = events.some(deletes)
    let positions: number[]
    try {
      positions = await persist(ctx, host, entries, deleting)
    } catch (error) {
      if (!ctx.storageHealth || !isStorageFailure(error)) throw error
      positions = await storeWhenBack(
        ctx,
        ctx.storageHealth,
        host,
        entries,
        deleting,
        error,
        senders(options.from),
        options.held,
      )
    }
    // Still held unsaved, so that no sync answer goes out before access is decided for what is now durable.
    const caughtUp = ctx.settleAccess(host, {
      events,
      ...(first ? { update: first.update } : {}),
      ...(options.from ? { from: options.from } : {}),
      ...(options.clientIds ? { clientIds: options.clientIds } : {}),
    })
    return { entries, positions, events, counts, caughtUp }
  } catch (cause) {
    // A retryable refusal (the relay shutting down while a change waited for storage) stays retryable.
    const error =
      cause instanceof ParleyError && isRetryable(cause.code)
        ? cause
        : new ParleyError(ErrorCode.INTERNAL, "the relay failed to store a change", { cause })
    // The sender learns why before eviction closes its connection.
    options.from?.refuse(error)
    ctx.evict(host, cause)
    throw error
  } finally {
    release()
  }
}

/** Whether `event` deletes content that a purge then removes from storage. */
const deletes = (event: ChangeEvent): boolean =>
  event.type === "message.deleted" || event.type === "conversation.deleted"

/**
 * Before a change that deletes is stored (each time its append is tried): the document's hook
 * deliveries are held until its purges are done (see `PurgeHolds`), and storage records that the
 * document may owe a purge, so that a relay killed before the purge finishes finds it at its next
 * start (`RelayCore.sweepOwedPurges`), whoever opens the conversation, and holds its deliveries
 * from the start. The record is part of the change: a failure to write it is a storage failure of
 * the change (refused, or held in memory until storage is back and both are written), since a
 * deletion stored without it could let a restarted relay deliver the deleted text before the
 * document's load found the purge owed.
 */
async function owePurge(ctx: PathContext, host: DocumentHost): Promise<void> {
  ctx.purgeHolds?.hold(host.key)
  if (!ctx.purge) return
  try {
    await ctx.purge.owe(host.key)
  } catch (error) {
    throw isStorageFailure(error)
      ? error
      : storageUnavailable("could not record that the document owes a purge", error)
  }
}

/**
 * Once none of `host`'s purges is owed: its hook deliveries go on, and the durable record of its
 * owed purges is cleared (see {@link owePurge}).
 */
async function purgesPaid(ctx: PathContext, host: DocumentHost): Promise<void> {
  if (owesPurge(ctx, host.key)) return
  ctx.purgeHolds?.release(host.key)
  if (!ctx.purge) return
  try {
    await ctx.purge.paid(host.key)
  } catch (error) {
    // The record stays: the next start loads the document, finds nothing owed and clears it.
    ctx.log.warn({ err: error, doc: host.key }, "could not clear the record of a purge done")
  }
}

function senders(from: Connection | undefined): Connection[] {
  return from ? [from] : []
}

/** Documents holding a change that is applied in memory but waits for storage to come back. */
const waitingForStorage = new WeakSet<DocumentHost>()
/** Told when their document starts holding such a change: reads queued behind it that must not wait. */
const heldListeners = new WeakMap<DocumentHost, Set<() => void>>()

function heldRefusal(): ParleyError {
  return storageUnavailable(
    "storage is failing: a change to this document waits in memory for it, and what is read here would include it; retry once storage answers again",
  )
}

/**
 * Runs `queued` (work queued on the document) unless a change to the document
 * waits for storage, now or before the work's turn comes: then rejects at once
 * with the retryable STORAGE_UNAVAILABLE instead of waiting until storage is
 * back (the queued work still runs in its turn; its result is dropped).
 */
export function unlessHeld<T>(host: DocumentHost, queued: () => Promise<T>): Promise<T> {
  if (waitingForStorage.has(host)) return Promise.reject(heldRefusal())
  return new Promise<T>((resolve, reject) => {
    const listeners = heldListeners.get(host) ?? new Set()
    heldListeners.set(host, listeners)
    const onHeld = () => reject(heldRefusal())
    listeners.add(onHeld)
    queued()
      .then(resolve, reject)
      .finally(() => listeners.delete(onHeld))
  })
}

/**
 * A change is applied in memory (shown to nobody) and its append failed
 * because storage did. Evicting the document would drop what memory holds, and
 * with it the sequence numbers already given; so the change stays applied but
 * unsaved, its sender is told STORAGE_UNAVAILABLE (retryable: it keeps the
 * work pending), further updates to the document are refused with that error
 * at once (see {@link submitUpdate}), and the append is retried each time the
 * storage guard reports storage back. Only then is the change broadcast and
 * acknowledged, once.
 *
 * A failed append may still have been committed (a timeout or a reset during
 * the commit). The guard reports storage back only after the abandoned attempt
 * settled, and before appending again the stored log is read: entries beyond
 * the document's last known position that are exactly these updates mean the
 * first attempt landed, and their positions are taken instead of storing the
 * change twice. Anything else beyond that position means memory and storage
 * disagree, and the document is evicted as before.
 */
async function storeWhenBack(
  ctx: PathContext,
  health: StorageHealth,
  host: DocumentHost,
  entries: readonly Entry[],
  deleting: boolean,
  failure: ParleyError,
  from: Iterable<Connection>,
  held?: (failure: ParleyError) => void,
): Promise<number[]> {
  ctx.log.warn(
    { err: failure, doc: host.key },
    "storage failed: the change waits in memory, unseen, until storage is back",
  )
  ctx.metrics.errors.inc({ code: failure.code })
  for (const connection of from) connection.refuse(failure)
  held?.(failure)
  waitingForStorage.add(host)
  for (const onHeld of heldListeners.get(host) ?? []) onHeld()
  try {
    for (;;) {
      await backOrMoved(ctx, health, host)
      try {
        const landed = await alreadyStored(ctx, host, entries)
        if (landed) {
          account(ctx, host, entries, landed)
          return landed
        }
        const positions = await persist(ctx, host, entries, deleting)
        ctx.log.info({ doc: host.key, positions }, "stored a change that waited for storage")
        return positions
      } catch (error) {
        if (!isStorageFailure(error)) throw error
      }
    }
  } finally {
    waitingForStorage.delete(host)
  }
}

/**
 * Resolves once storage answers again; in a cluster, throws the retryable
 * UNAVAILABLE once another relay orders the document. This relay's storage
 * failing (a database cut off from it alone) used to hold the change, and
 * every later one of its clients, for the whole outage while the other relays
 * went on: now the caller evicts the document, its clients reconnect and send
 * their pending work again, and it is stored where the document is ordered.
 * (Whether the held change was committed before the failure does not matter:
 * a relay stores only what it does not have.)
 */
async function backOrMoved(ctx: PathContext, health: StorageHealth, host: DocumentHost): Promise<void> {
  const orders = ctx.orders
  if (!orders) return health.whenAvailable()
  let timer: NodeJS.Timeout | undefined
  const moved = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      if (!orders(host.key))
        reject(
          new ParleyError(
            ErrorCode.UNAVAILABLE,
            "this relay's storage failed and another relay orders the conversation now: reconnect and send it again",
          ),
        )
    }, LEASE_CHECK_MS)
  })
  try {
    await Promise.race([health.whenAvailable(), moved])
  } finally {
    clearInterval(timer)
  }
}

/** The positions of `entries` when an earlier, failed-looking append of them was committed after all. */
async function alreadyStored(
  ctx: PathContext,
  host: DocumentHost,
  entries: readonly Entry[],
): Promise<number[] | undefined> {
  const stored = await ctx.storage.load(host.key)
  const beyond = stored.updates.filter((u) => u.position > host.lastPosition)
  if (beyond.length === 0) return undefined
  const same =
    beyond.length === entries.length && beyond.every((u, i) => equalBytes(u.update, entries[i]!.update))
  // Another writer appended meanwhile (in a cluster, the relay that took the document over while this
  // one was paused or cut off): this memory is stale, not broken. Retryable: the document is dropped and
  // reloaded, its clients rejoin (4503) and send their work again (a paused relay's clients were told
  // INTERNAL and closed 4500, an outside probe).
  if (!same)
    throw new ParleyError(
      ErrorCode.UNAVAILABLE,
      "another writer stored changes of this conversation meanwhile: reconnect and send it again",
    )
  return beyond.map((u) => u.position)
}

/** Whether `a` and `b` hold the same bytes. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** Refuses a write at once while the document or the storage cannot take it (retryable). */
export function refuseWhileStorageFails(ctx: PathContext, host: DocumentHost): void {
  if (waitingForStorage.has(host))
    throw storageUnavailable("storage is failing: an earlier change to this document waits for it")
  if (ctx.storageHealth && !ctx.storageHealth.available) throw storageUnavailable("storage is failing")
}

/** After a change is stored, applied and broadcast: the extensions' observers, compaction. */
async function finish(
  ctx: PathContext,
  host: DocumentHost,
  actor: Principal,
  positions: number[],
  events: ChangeEvent[],
  counts?: readonly number[],
): Promise<void> {
  notifySaved(ctx, host, actor, positions, events, counts)
  await upkeep(ctx, host, events)
}

/** The extensions' observers of a stored change (never awaited). */
function notifySaved(
  ctx: PathContext,
  host: DocumentHost,
  actor: Principal,
  positions: readonly number[],
  events: readonly ChangeEvent[],
  counts?: readonly number[],
): void {
  if (events.length > 0 || positions.length > 0) {
    const change: AfterSaved = {
      name: host.key,
      doc: host.doc,
      actor,
      positions,
      events,
      ...(counts ? { counts } : {}),
    }
    ctx.extensions.afterSaved(change)
  }
}

/** The document's upkeep after a stored change with `events`: purges, sealing, a fresh epoch, compaction. */
async function upkeep(ctx: PathContext, host: DocumentHost, events: readonly ChangeEvent[]): Promise<void> {
  if (host.name.kind === "conversation" && owesConversationPurge(ctx, host)) {
    await purgeConversation(ctx, host, host.name.id)
    return
  }
  const deletedMessages = events.flatMap((e) => (e.type === "message.deleted" ? [e.messageId] : []))
  if (host.name.kind === "conversation" && deletedMessages.length > 0)
    schedulePurge(ctx, host, deletedMessages)
  // A deleting change that left nothing to purge (a conversation deleted with no content): its
  // append held the document's deliveries (owePurge), and no purge will let them go.
  if (events.some(deletes)) releaseUnlessOwed(ctx, host.key)
  if (ctx.history && host.name.kind === "conversation") {
    // A seal is the largest work a change makes due (segments of hundreds of messages planned, stored
    // and applied): in a turn of its own, so that other documents' frames read meanwhile wait behind
    // the change or the seal, not both (together they held them a quarter of a second).
    if (sealDue(host.doc, ctx.history.sealing)) await new Promise((resolve) => setImmediate(resolve))
    await sealAndRenew(ctx, ctx.history, host)
  }
  if (host.destroyed) return
  const log = host.logSinceSnapshot
  if (log.entries >= ctx.limits.compactAfterUpdates || log.bytes >= ctx.limits.compactAfterBytes) {
    const compacted = await compactOrDefer(ctx, host)
    if (ctx.history && host.name.kind === "conversation") await refoldOverlays(ctx, ctx.history, host)
    if (compacted && !host.destroyed && garbageEpochDue(ctx, host)) await startNewEpoch(ctx, host, "garbage")
  }
}

/**
 * Seals what is due, then starts a fresh epoch when the document holds too
 * many client ids or too much garbage: a seal leaves what Yjs keeps of the
 * records and overlays it removed, a conversation's main source of garbage.
 * Once the seals since the last measure may have taken it past the budget
 * (see {@link sealGarbageBound}), the document is compacted at once and
 * measured, rather than at its next compaction, hundreds of changes later.
 */
async function sealAndRenew(ctx: PathContext, history: HistoryKeeper, host: DocumentHost): Promise<void> {
  const garbage = await seal(ctx, history, host)
  if (clientIdEpochDue(ctx, host, history.sealing.epochClientIds))
    await startNewEpoch(ctx, host, "client-ids")
  if (garbage === 0 || host.destroyed) return
  const sizes = snapshotSizes.get(host)
  if (sizes) {
    sizes.values = undefined
    sizes.sealedSince += garbage
    // Not before the seals since the last measure may have taken the garbage past the budget.
    if (sizes.garbage !== undefined && sizes.garbage + sizes.sealedSince <= ctx.limits.epochGarbageBytes)
      return
  }
  if ((await compactOrDefer(ctx, host)) && !host.destroyed && garbageEpochDue(ctx, host))
    await startNewEpoch(ctx, host, "garbage")
}

/**
 * Bytes of each document's latest snapshot; of its values rewritten as a
 * fresh epoch when last measured (unknown after a seal, which removes values)
 * and of its garbage then; and at most how much garbage seals added since
 * (see {@link sealGarbageBound}).
 */
const snapshotSizes = new WeakMap<
  DocumentHost,
  { snapshot: number; values?: number; garbage?: number; sealedSince: number }
>()

/** When each document last started a fresh epoch (for garbage or client ids), per relay (by name: an epoch reloads it). */
const recentEpochs = new WeakMap<PathContext, Map<string, number>>()

/**
 * Garbage past this many budgets starts a fresh epoch however recently the
 * last one was: a member adding and removing made-up reactions can force at
 * most one per this many budgets of their writes.
 */
const GARBAGE_CEILING_BUDGETS = 32

/**
 * Whether the document's latest snapshot holds more than `epochGarbageBytes`
 * of what Yjs keeps of removed values: the snapshot less a fresh epoch of it.
 * Every map key ever written stays in a Yjs document after its removal (about
 * 42 bytes for a reaction a seal folded, 70 for one added and removed), as
 * does a struct for every record a seal removed, so without epochs what every
 * joiner downloads grows with the history sealed since the last one (a
 * 100,000-message conversation with three reactions in ten: 133 KB, of which
 * 65 KB garbage). A fresh epoch drops all of it, but closes the document's
 * sockets once: at most one per `epochGarbageIntervalMs` per document, and
 * none while a stock y-websocket provider is connected, unless the garbage is
 * past {@link GARBAGE_CEILING_BUDGETS} budgets. The fresh epoch
 * is built to measure only when the snapshot less the values last measured
 * is over the budget, or a seal removed values since.
 */
function garbageEpochDue(ctx: PathContext, host: DocumentHost): boolean {
  const budget = ctx.limits.epochGarbageBytes
  const sizes = snapshotSizes.get(host)
  if (budget <= 0 || !ctx.restart || host.name.kind !== "conversation" || !sizes) return false
  if (sizes.snapshot <= budget) {
    // The garbage is at most the whole snapshot.
    sizes.garbage = sizes.snapshot
    sizes.sealedSince = 0
    return false
  }
  if (sizes.values !== undefined && sizes.snapshot - sizes.values <= budget) return false
  sizes.values = epochValueBytes(host.doc)
  const garbage = sizes.snapshot - sizes.values
  sizes.garbage = garbage
  sizes.sealedSince = 0
  if (garbage <= budget) return false
  return !epochHeldBack(ctx, host) || garbage > GARBAGE_CEILING_BUDGETS * budget
}

/**
 * Whether a fresh epoch of `host` waits: one started within
 * `epochGarbageIntervalMs`, or a stock y-websocket provider connected (it
 * cannot follow an epoch: it is closed for good), so the epoch waits for it
 * to leave, up to the ceiling its caller sets.
 */
function epochHeldBack(ctx: PathContext, host: DocumentHost): boolean {
  const last = recentEpochs.get(ctx)?.get(host.key)
  if (last !== undefined && Date.now() - last < ctx.limits.epochGarbageIntervalMs) return true
  const left = stockLeft.get(ctx)?.get(host.key)
  if (left !== undefined && Date.now() - left < ctx.limits.epochStockGraceMs) return true
  return [...host.connections].some((connection) => !connection.session.wantsParley)
}

/** When a stock provider last left each document, per relay (its context); kept for `epochStockGraceMs`. */
const stockLeft = new WeakMap<PathContext, Map<string, number>>()

/**
 * A stock y-websocket provider's connection to `name` closed here, or one
 * is (or just was) connected to another relay of the cluster: a fresh epoch
 * waits `epochStockGraceMs` for it to come back. One the relay closed for
 * reading too slowly saw its close only behind its backlog, 20 s later, and
 * a client-id epoch started meanwhile closed it 4400 on its return, for
 * good (an outside probe); one on another relay was closed so by the
 * owner's epoch (another).
 */
export function stockProviderSeen(ctx: PathContext, name: string): void {
  if (ctx.limits.epochStockGraceMs <= 0) return
  let left = stockLeft.get(ctx)
  if (!left) {
    left = new Map()
    stockLeft.set(ctx, left)
  }
  const now = Date.now()
  for (const [key, at] of left) if (now - at >= ctx.limits.epochStockGraceMs) left.delete(key)
  left.set(name, now)
}

/**
 * Whether the document holds more than `most` client ids, for a fresh epoch to
 * bring them to one: like one for garbage, at most one per
 * `epochGarbageIntervalMs` per document and none while a stock y-websocket
 * provider is connected, unless the ids are past
 * {@link GARBAGE_CEILING_BUDGETS} times `most`. Before, any member could force
 * one at will (a few updates under fresh client ids, then a frame that made a
 * seal due): every socket of the conversation closed, and stock providers,
 * which cannot follow an epoch, were cut off for good.
 */
function clientIdEpochDue(ctx: PathContext, host: DocumentHost, most: number): boolean {
  const ids = host.doc.store.clients.size
  if (ids <= most) return false
  return !epochHeldBack(ctx, host) || ids > GARBAGE_CEILING_BUDGETS * most
}

/** Notes a fresh epoch of `host` started for its garbage or client ids (forgetting those older than the interval). */
function epochStarted(ctx: PathContext, host: DocumentHost): void {
  let started = recentEpochs.get(ctx)
  if (!started) {
    started = new Map()
    recentEpochs.set(ctx, started)
  }
  const now = Date.now()
  for (const [key, at] of started) if (now - at >= ctx.limits.epochGarbageIntervalMs) started.delete(key)
  started.set(host.key, now)
}

/**
 * Deleted messages not purged yet, per relay (its context) and document name,
 * and the timer that will purge them: by name, so that a document dropped
 * and loaded again (a fresh epoch, an eviction, a lease moved) is purged by
 * its next host.
 */
const purgesDue = new WeakMap<
  PathContext,
  Map<string, { readonly ids: Set<MessageId>; timer?: NodeJS.Timeout }>
>()

function duePurges(ctx: PathContext): Map<string, { readonly ids: Set<MessageId>; timer?: NodeJS.Timeout }> {
  let due = purgesDue.get(ctx)
  if (!due) {
    due = new Map()
    purgesDue.set(ctx, due)
  }
  return due
}

/**
 * Has `ids` purged within `purgeDelayMs` (default 100), together with the
 * document's other deletions by then: a purge (a compaction of the document,
 * its stored events redacted, the WAL truncated, the inboxes searched) costs
 * the same for one message as for many, and a user may send a hundred
 * deletions a second, each a frame of a hundred bytes.
 */
function schedulePurge(
  ctx: PathContext,
  host: DocumentHost,
  ids: readonly MessageId[],
  delayMs = ctx.limits.purgeDelayMs,
): void {
  const due = addDuePurge(ctx, host.key, ids)
  if (due.timer) return
  const timed = due
  // A purge rewrites the whole live document and the segments it touches: in a big conversation tens of
  // milliseconds and megabytes of writes, bought by a deletion frame of a hundred bytes. Spaced by what the
  // last one took, a document's purges take at most a twentieth of the time however fast its deletions come.
  const wait = Math.max(delayMs, Math.min(PURGE_SPACING * (lastPurgeMs.get(host) ?? 0), MAX_PURGE_SPACING_MS))
  timed.timer = setTimeout(() => {
    timed.timer = undefined
    // A host dropped meanwhile leaves the ids to the document's next host (see adoptDuePurge).
    if (host.destroyed) return
    host
      .enqueue(async () => {
        if (!host.destroyed) await purgeDue(ctx, host)
      })
      .catch((error: unknown) =>
        ctx.log.error({ err: error, doc: host.key }, "could not purge deleted messages"),
      )
  }, wait)
  // The relay's own lifetime is its server's: a pending purge runs at the latest when the document unloads.
  timed.timer.unref()
}

/** A document's purges are this many times as far apart as the last one took (see {@link schedulePurge}). */
const PURGE_SPACING = 20
/** ...but deleted text waits no longer than this for its purge. */
const MAX_PURGE_SPACING_MS = 5_000
/** How long each loaded document's last message purge took, in ms. */
const lastPurgeMs = new WeakMap<DocumentHost, number>()

/** `ids` among the deleted messages of document `key` waiting for their purge; returns what waits. */
function addDuePurge(
  ctx: PathContext,
  key: string,
  ids: readonly MessageId[],
): { readonly ids: Set<MessageId>; timer?: NodeJS.Timeout } {
  const all = duePurges(ctx)
  let due = all.get(key)
  if (!due) {
    due = { ids: new Set() }
    all.set(key, due)
  }
  for (const id of ids) due.ids.add(id)
  return due
}

/** Purges (of messages or a conversation) that failed in a row, per relay and document name (see {@link retryLater}). */
const purgeFailures = new WeakMap<PathContext, Map<string, number>>()

/**
 * Deleted conversations whose purge did not finish, per relay and document
 * name: it failed (tried again while the document stays loaded), or a load
 * found it owed (see `purgesOwed`). Their next host purges them.
 */
const conversationPurgesOwed = new WeakMap<PathContext, Set<string>>()

function conversationsOwed(ctx: PathContext): Set<string> {
  let owed = conversationPurgesOwed.get(ctx)
  if (!owed) {
    owed = new Set()
    conversationPurgesOwed.set(ctx, owed)
  }
  return owed
}

/** True when `host` is a deleted conversation whose content or purge is still to be purged. */
function owesConversationPurge(ctx: PathContext, host: DocumentHost): boolean {
  return (
    host.name.kind === "conversation" &&
    isDeleted(host.doc) &&
    (holdsPurgeableContent(host.doc) || (conversationPurgesOwed.get(ctx)?.has(host.key) ?? false))
  )
}

const isDeleted = (doc: Y.Doc): boolean => typeof typesOf(doc).meta.get(MetaKey.deletedAt) === "number"

/**
 * Before a change to a deleted conversation (only leaving it, or reopening a
 * direct one, is accepted): finishes its purge if one is still owed (it
 * failed, a load found it owed). A reopened conversation is written to again,
 * and its purge purges all it holds: it must have purged everything written
 * before the deletion first, or that would come back, or what is written
 * after the reopen be purged. Returns whether the purge is still owed (it
 * failed again). Call inside the document's queue.
 */
async function purgeBeforeReopen(ctx: PathContext, host: DocumentHost): Promise<boolean> {
  if (host.name.kind !== "conversation" || !owesConversationPurge(ctx, host)) return false
  // A purge that failed is tried again on its own schedule (see purgeConversation), not once more per
  // change that arrives meanwhile (every frame to the conversation would buy a compaction attempt).
  if (!purgeRetries.has(host) && !(ctx.storageHealth && !ctx.storageHealth.available))
    await purgeConversation(ctx, host, host.name.id)
  return owesConversationPurge(ctx, host)
}

/** Hosts whose conversation purge failed and waits for its retry: one retry at a time each. */
const purgeRetries = new WeakSet<DocumentHost>()

/** The refusal of a reopen while the deletion's purge is owed: retryable, the purge is tried again. */
const purgeStillOwed = (): ParleyError =>
  new ParleyError(
    ErrorCode.UNAVAILABLE,
    "the conversation's deletion is still being purged: send the change again shortly",
  )

/**
 * True while a purge of document `key` is owed (deleted messages waiting for
 * theirs, or the conversation's). Its log is then not folded into a snapshot
 * but by the purge itself, last: a load tells an unfinished purge by a
 * deletion its log holds and its snapshot does not (see `purgesOwed`).
 */
function owesPurge(ctx: PathContext, key: string): boolean {
  return (
    (purgesDue.get(ctx)?.get(key)?.ids.size ?? 0) > 0 || (conversationPurgesOwed.get(ctx)?.has(key) ?? false)
  )
}

/**
 * After a load of `host` by the relay that orders it: clears the durable
 * record of owed purges when the load found none (a record written before a
 * change that was never stored, or whose purge's clearing failed).
 */
export async function clearPurgesNotOwed(ctx: PathContext, host: DocumentHost): Promise<void> {
  await host.enqueue(() => purgesPaid(ctx, host))
}

/**
 * Records the purges a load found owed (see `purgesOwed`): the deleted
 * messages' purge is scheduled as if just deleted, the conversation's is run
 * by {@link sequenceLeftovers}. Only for the relay that orders the document.
 */
export function notePurgesOwed(ctx: PathContext, key: string, owed: OwedPurges): void {
  if (owed.messages.length > 0) addDuePurge(ctx, key, owed.messages)
  if (owed.conversation) conversationsOwed(ctx).add(key)
  if (owesPurge(ctx, key)) ctx.purgeHolds?.hold(key)
  if (owed.messages.length > 0 || owed.conversation)
    ctx.log.warn(
      { doc: key, messages: owed.messages.length, conversation: owed.conversation },
      "found deletions whose purge did not finish (the relay stopped or storage failed first): purging them",
    )
}

/**
 * After a load or a takeover of document `key` looked at its stored state (see
 * {@link notePurgesOwed}): its hook deliveries go on unless a purge of it is owed. Call where no
 * change of the document can be on its way to storage (before its host takes changes, or in its
 * queue): a deleting change's append holds the document again before it is tried.
 */
export function releaseUnlessOwed(ctx: PathContext, key: string): void {
  if (!owesPurge(ctx, key) && !purgesRunning.get(ctx)?.has(key)) ctx.purgeHolds?.release(key)
}

/** Documents whose message purge runs now, per relay: its ids are out of the due ones meanwhile. */
const purgesRunning = new WeakMap<PathContext, Set<string>>()

/** Longest wait before a failed purge is tried again. */
const MAX_PURGE_RETRY_MS = 60_000

/**
 * After a message purge of which a part failed (storage failing, a write
 * refused): its ids wait with the document's due purges again — by name, so
 * that the document's unload, its next host and the relay's stop purge them
 * too — and are tried again once storage answers, after a wait that doubles
 * with each failure in a row (at most {@link MAX_PURGE_RETRY_MS}). Deleted
 * text must not stay stored (the log, a segment, its hook events) because
 * one attempt failed; before, the ids were dropped.
 */
function purgeAgainLater(ctx: PathContext, host: DocumentHost, ids: readonly MessageId[]): void {
  addDuePurge(ctx, host.key, ids)
  retryLater(ctx, host, (delayMs) => schedulePurge(ctx, host, [], delayMs))
}

/**
 * Runs `retry` for a purge of `host` that failed, with the wait before it
 * (doubling with each failure in a row, at most {@link MAX_PURGE_RETRY_MS}),
 * once storage answers; not once the host is dropped or the relay stops.
 */
function retryLater(ctx: PathContext, host: DocumentHost, retry: (delayMs: number) => void): void {
  let failures = purgeFailures.get(ctx)
  if (!failures) {
    failures = new Map()
    purgeFailures.set(ctx, failures)
  }
  const inRow = (failures.get(host.key) ?? 0) + 1
  failures.set(host.key, inRow)
  const delayMs = Math.min(ctx.limits.purgeDelayMs * 2 ** inRow, MAX_PURGE_RETRY_MS)
  const run = () => {
    if (!host.destroyed) retry(delayMs)
  }
  const health = ctx.storageHealth
  if (health && !health.available)
    health.whenAvailable().then(run, () => {
      // The relay stops.
    })
  else run()
}

/** Schedules the purge a dropped host of the same document left pending, for the document's new `host`. */
export function adoptDuePurge(ctx: PathContext, host: DocumentHost): void {
  const due = purgesDue.get(ctx)?.get(host.key)
  if (due && due.ids.size > 0 && !due.timer) schedulePurge(ctx, host, [])
}

/**
 * Purges the document's deleted messages still waiting for their purge (see
 * {@link schedulePurge}) now. Call inside the document's queue; the relay
 * calls it before a document unloads, before a fresh epoch and before it stops.
 */
export async function purgeDue(ctx: PathContext, host: DocumentHost): Promise<void> {
  const all = purgesDue.get(ctx)
  const due = all?.get(host.key)
  if (!due || due.ids.size === 0 || host.name.kind !== "conversation") return
  clearTimeout(due.timer)
  all!.delete(host.key)
  const started = performance.now()
  let running = purgesRunning.get(ctx)
  if (!running) {
    running = new Set()
    purgesRunning.set(ctx, running)
  }
  running.add(host.key)
  try {
    await purgeMessages(ctx, host, host.name.id, [...due.ids])
  } finally {
    running.delete(host.key)
    lastPurgeMs.set(host, performance.now() - started)
  }
}

/**
 * Purges a deleted conversation (relay README, "Deletion and erasure"), once
 * its deletion is stored: a relay write removes its content from the live
 * document (stored, then broadcast: every replica deletes it too), the
 * backend drops its segments and redacts its stored hook events, and last the
 * log is folded into a snapshot of the garbage-collected document, so that no
 * log entry or snapshot holds the text. Folding last is what tells a later
 * load whether the purge finished (see `purgesOwed`). Call inside the
 * document's queue. A failure is logged and the purge tried again.
 */
/** What holds content in memory drops a purge's: this relay's extensions, then the other relays'. */
function tellPurged(ctx: PathContext, purge: PurgedContent): void {
  ctx.extensions.contentPurged(purge)
  ctx.sharePurge?.(purge)
}

async function purgeConversation(ctx: PathContext, host: DocumentHost, conversation: string): Promise<void> {
  // Reopened meanwhile (a retry that was waiting): the reopen came after this purge finished (see
  // purgeBeforeReopen), and what the conversation holds now was written since.
  if (!isDeleted(host.doc)) {
    conversationPurgesOwed.get(ctx)?.delete(host.key)
    purgeFailures.get(ctx)?.delete(host.key)
    await purgesPaid(ctx, host)
    return
  }
  // Owed until it finishes: no other compaction folds the log meanwhile (see owesPurge).
  conversationsOwed(ctx).add(host.key)
  try {
    const { entries, positions, caughtUp } = await applyAndStore(ctx, host, () => {
      const update = captureUpdate(host.doc, () => purgeConversationContent(host.doc, RELAY_ORIGIN))
      return update ? { update, source: "relay" } : undefined
    })
    if (entries.length > 0) broadcast(host, encodeSyncUpdate(entries[0]!.update), undefined, caughtUp)
    // The deletion was the news (`conversation.deleted`): the purge is no hook event of its own, and the
    // inboxes follow it through the `inbox-purge` target. The positions move the hooks' watermark past it.
    if (positions.length > 0)
      ctx.extensions.afterSaved({ name: host.key, doc: host.doc, actor: RELAY, positions, events: [] })
    // After the hooks recorded the deletion's own events (they carry the title).
    await ctx.extensions.recorded(host.key)
    // What waits in memory for delivery first: a page read from storage meanwhile is redacted as it comes in.
    tellPurged(ctx, {
      name: host.key,
      conversationId: conversation,
      scope: { kind: "conversation", through: host.lastPosition },
    })
    if (ctx.purge) {
      await ctx.purge.dropSegments(host.key)
      await ctx.purge.redactEvents(host.key, conversation, { kind: "conversation" })
    }
    // Before the fold, which tells a later load whether the purge finished: a relay stopped in between
    // leaves the purge owed, and this is done again (the bindings of a deleted group stayed for good).
    await ctx.extensions.conversationPurged({ name: host.name, doc: host.doc })
    if (!(await foldLog(ctx, host, { wait: true })))
      throw new Error("the log could not be folded into a snapshot")
    await ctx.purge?.scrub()
    conversationPurgesOwed.get(ctx)?.delete(host.key)
    purgeFailures.get(ctx)?.delete(host.key)
    await purgesPaid(ctx, host)
    ctx.log.info({ doc: host.key }, "purged a deleted conversation")
  } catch (error) {
    ctx.log.error({ err: error, doc: host.key }, "could not purge a deleted conversation: tried again later")
    // Once the live document is purged, only the owed mark says the log, the segments and the stored
    // events are still to be purged: by this host, again once storage answers, or by the next one.
    if (purgeRetries.has(host)) return
    purgeRetries.add(host)
    retryLater(ctx, host, (delayMs) => {
      setTimeout(() => {
        purgeRetries.delete(host)
        if (host.destroyed) return
        host
          .enqueue(() => purgeConversation(ctx, host, conversation))
          .catch((failure: unknown) =>
            ctx.log.error({ err: failure, doc: host.key }, "could not purge a deleted conversation"),
          )
      }, delayMs).unref()
    })
  }
}

/**
 * Purges deleted messages' text from storage once their deletion is stored:
 * their sealed segments are re-sealed without it, their stored hook events
 * redacted, and last the log is folded into a snapshot of the
 * garbage-collected live document (which no longer holds the text) — only
 * when the rest succeeded, which is what tells a later load whether the purge
 * finished (see `purgesOwed`). Call inside the document's queue.
 */
async function purgeMessages(
  ctx: PathContext,
  host: DocumentHost,
  conversation: string,
  ids: readonly MessageId[],
): Promise<void> {
  let failed = false
  try {
    // First what the deletions left in the live document (the log's fold below then drops its text).
    const { entries, positions, caughtUp } = await applyAndStore(ctx, host, () => {
      const update = captureUpdate(host.doc, () => removeDeletedLeftovers(host.doc, ids, RELAY_ORIGIN))
      return update ? { update, source: "relay" } : undefined
    })
    if (entries.length > 0) broadcast(host, encodeSyncUpdate(entries[0]!.update), undefined, caughtUp)
    if (positions.length > 0)
      ctx.extensions.afterSaved({ name: host.key, doc: host.doc, actor: RELAY, positions, events: [] })
    if (ctx.history) await purgeSealed(ctx, ctx.history, host, ids)
  } catch (error) {
    failed = true
    ctx.log.error({ err: error, doc: host.key }, "could not purge deleted messages: tried again later")
  }
  // Apart: the stored events are redacted even when re-sealing failed (a fenced write, say).
  try {
    const scope = { kind: "messages", ids: new Set<string>(ids) } as const
    await ctx.extensions.recorded(host.key)
    tellPurged(ctx, { name: host.key, conversationId: conversation, scope })
    if (ctx.purge) await ctx.purge.redactEvents(host.key, conversation, scope)
  } catch (error) {
    failed = true
    ctx.log.error(
      { err: error, doc: host.key },
      "could not redact the deleted messages' stored events: tried again later",
    )
  }
  try {
    // The log still holding the deleted text is a failed purge too.
    if (!failed && !(await foldLog(ctx, host, { wait: true }))) failed = true
    if (!failed) await ctx.purge?.scrub()
  } catch (error) {
    failed = true
    ctx.log.error({ err: error, doc: host.key }, "could not purge deleted messages: tried again later")
  }
  if (failed) purgeAgainLater(ctx, host, ids)
  else {
    purgeFailures.get(ctx)?.delete(host.key)
    await purgesPaid(ctx, host)
    // A seal that waited for this purge (see `seal`).
    if (ctx.history && sealDue(host.doc, ctx.history.sealing)) sealAgainLater(ctx, ctx.history, host)
  }
}

/**
 * Re-seals the segments holding sealed messages among `ids` that are now
 * deleted (tombstoned), with placeholders in place of their records: the new
 * segment is stored under the same index first, then the live document names
 * its new hash (a relay write, broadcast like any), and the relay's directory
 * holds the new one. A device that fetches the page in between gets bytes
 * that do not match the old hash, refuses them and fetches again.
 */
async function purgeSealed(
  ctx: PathContext,
  history: HistoryKeeper,
  host: DocumentHost,
  ids: readonly MessageId[],
): Promise<void> {
  if (sealedThrough(host.doc) === 0) return
  const deletions = new Map<MessageId, SealedDeletion>()
  for (const id of ids) {
    const tombstone = tombstoneOf(host.doc, id)
    if (tombstone) deletions.set(id, tombstone)
  }
  if (deletions.size === 0) return
  // Reads the segments holding the deleted messages' numbers, not held already (see planPurge).
  const plan = await planPurge(history, host, deletions)
  if (!plan) return
  await storePurge(history, host.key, plan)
  await nameResealed(ctx, host, plan, () => {
    // A pinned copy of a deleted message holds its text: gone with it, whichever client deleted it.
    const pins = typesOf(host.doc).pins
    for (const id of deletions.keys()) if (pins.has(id)) pins.delete(id)
  })
}

/**
 * Names the segments (and directory pages) `plan` re-sealed, stored already,
 * in the live document, with `also` in the same relay change: stored,
 * broadcast, and told to the hooks as no event (a summary's new hash is none;
 * the positions move their watermark past it); then holds the new versions.
 * Resolves whether a change was stored.
 */
async function nameResealed(
  ctx: PathContext,
  host: DocumentHost,
  plan: PurgePlan,
  also: () => void,
): Promise<boolean> {
  const { entries, positions, caughtUp } = await applyAndStore(ctx, host, () => {
    const update = captureUpdate(host.doc, () =>
      host.doc.transact(() => {
        applyPurge(host.doc, plan)
        also()
      }, RELAY_ORIGIN),
    )
    return update ? { update, source: "relay" } : undefined
  })
  holdPurged(host.doc, plan)
  if (entries.length > 0) broadcast(host, encodeSyncUpdate(entries[0]!.update), undefined, caughtUp)
  if (positions.length > 0)
    ctx.extensions.afterSaved({ name: host.key, doc: host.doc, actor: RELAY, positions, events: [] })
  return entries.length > 0
}

/**
 * Segments one turn of the document's queue seals at most: as many as one
 * frame at the default caps makes due (2,000 messages on a live document just
 * under the threshold: four of 500). A longer backlog is sealed in later turns.
 */
const SEALS_PER_TURN = 4

/**
 * Seals the oldest messages of a conversation into history segments once its
 * live document holds enough (see `planSeal`): each segment is stored first,
 * then the live document drops what it sealed and names the segment. A large
 * batch makes several segments due; they are planned together (each as on
 * the document the one before leaves, see `planSeals`), stored together
 * with their id filters in one commit, then applied in one transaction (one
 * pass of the deletions and of the message index's observers, and no
 * intermediate rest records), and the live document's change is stored,
 * broadcast and told to the hooks once, as one change: one storage commit
 * instead of one per segment. Nothing applied is shown to anyone before it is
 * durable (the document is held unsaved throughout). A crash in between
 * leaves unreferenced segments that the next sealing rewrites. Call inside
 * the document's queue. A failed write of the segments leaves the live
 * document with all of their messages (the commit stores all or none).
 */
async function seal(ctx: PathContext, history: HistoryKeeper, host: DocumentHost): Promise<number> {
  if (host.name.kind !== "conversation" || host.destroyed) return 0
  if (!sealDue(host.doc, history.sealing)) return 0
  const conversation = host.name.id
  const updates: Uint8Array[] = []
  let failed = false
  // Held from the first seal applied in memory until the change holding all of them is durable
  // (not while the first segment is written: nothing is applied yet).
  let release: (() => void) | undefined
  let garbage = 0
  let purgedFirst = false
  let waitsForPurge = false
  try {
    for (let n = 0; n < SEALS_PER_TURN && !host.destroyed; ) {
      // The segments due, planned together and applied in one transaction (see `planSeals`).
      const plans = planSeals(host.doc, conversation, history.sealing, SEALS_PER_TURN - n)
      if (plans.length === 0) break
      if (sealsOwedPurge(ctx, host, plans)) {
        // Deleted messages whose purge is due would leave the live document with this seal, and a
        // load after a crash could no longer tell that their purge is owed (see `purgesOwed`): purged
        // first, now; if that fails, the seal waits for the purge's retry (see `purgeMessages`).
        // Segments applied already: the rest in a follow-up seal, which purges first.
        if (updates.length > 0) break
        if (!purgedFirst) {
          purgedFirst = true
          await purgeDue(ctx, host)
          if (!owesPurge(ctx, host.key)) continue
        }
        waitsForPurge = true
        break
      }
      n += plans.length
      // Each stored plan with its segment's id filter (held once the live document names the segment).
      let stored: { plan: SealPlan; filter: IdFilter }[]
      // The reactions the seals fold, from the document before they are applied (see FoldedReactions).
      const folds = reactionsFolded(host.doc, plans)
      try {
        // The segments, their id filters, the reactions they fold and a fold's page in one commit,
        // durable before the live document names them: the rules trust them.
        const filters = await history.storeSeals(host.key, plans, folds, epochOf(host.doc) ?? 0)
        stored = plans.map((plan, i) => ({ plan, filter: filters[i]! }))
      } catch (error) {
        ctx.log.error({ err: error, doc: host.key }, "sealing failed: the live document keeps its messages")
        failed = true
        break
      }
      if (host.destroyed || stored.length === 0) break
      release ??= host.holdUnsaved()
      foldedReactionsOf(host).hold(folds.flat())
      // Those stored, each as if applied alone after the ones before it.
      const update = captureUpdate(host.doc, () =>
        applySeals(
          host.doc,
          stored.map((s) => s.plan),
          RELAY_ORIGIN,
        ),
      )
      if (update) updates.push(update)
      garbage += sealGarbageBound(stored.map((s) => s.plan))
      // Named now (in memory; a failure to store the change evicts the document, and these with it).
      for (const { plan, filter } of stored) history.holdIdFilter(host.doc, plan.segment.index, filter)
      history.sealedNow(
        host.doc,
        stored.map((s) => s.plan.segment.index),
      )
      for (const { plan } of stored)
        ctx.log.debug(
          { doc: host.key, segment: plan.segment.index, from: plan.segment.from, to: plan.segment.to },
          "sealed history",
        )
    }
    if (updates.length === 0 || host.destroyed) return 0
    const update = updates.length === 1 ? updates[0]! : Y.mergeUpdates(updates)
    const { entries, positions, events, caughtUp } = await applyAndStore(ctx, host, () => ({
      update,
      source: "relay",
    }))
    if (entries.length === 0) return 0
    broadcast(host, encodeSyncUpdate(entries[0]!.update), undefined, caughtUp)
    // A seal numbers nothing: a `messages.sequenced` here is the rest of a record it cut (the same
    // numbers again), no news for the hooks. Told all the same, as of any saved change: the hooks'
    // watermark then passes the seal, so that the compaction after it may fold the log.
    const news = events.filter((e) => e.type !== "messages.sequenced")
    ctx.extensions.afterSaved({ name: host.key, doc: host.doc, actor: RELAY, positions, events: news })
  } finally {
    release?.()
  }
  // After a failed segment write the next change seals again (no retry loop of follow-ups); a seal
  // waiting for a purge, after the purge (see `purgeMessages`).
  if (!failed && !waitsForPurge && sealDue(host.doc, history.sealing)) sealAgainLater(ctx, history, host)
  return garbage
}

/** Whether `plans` seal a deleted message whose purge is still due. */
function sealsOwedPurge(ctx: PathContext, host: DocumentHost, plans: readonly SealPlan[]): boolean {
  const due = purgesDue.get(ctx)?.get(host.key)?.ids
  if (!due || due.size === 0) return false
  for (const id of due) if (plans.some((plan) => plan.ids.has(id))) return true
  return false
}

/** The reactions each loaded document's seals folded (see `FoldedReactions`). */
const foldedReactions = new WeakMap<DocumentHost, FoldedReactions>()

/**
 * Segments whose folded reactions a document loaded again reads before its
 * first deletion (see {@link loadFolds}): 16 segments of 300 are
 * thousands of messages sealed while a device was offline.
 */
const FOLDS_READ_SEGMENTS = 16

/**
 * Whether `host`'s folded reactions still lack those its latest segments'
 * rows hold (a document the seals of another process, or of this one before
 * an unload, sealed): read once per loaded document, by {@link loadFolds}.
 * Synchronous, so that the update path awaits nothing once they are read.
 */
function foldsUnread(ctx: PathContext, host: DocumentHost): boolean {
  return (
    ctx.history !== undefined &&
    host.name.kind === "conversation" &&
    foldedReactions.get(host)?.loaded !== true &&
    sealedThrough(host.doc) > 0
  )
}

/**
 * Reads the folded reactions of `host`'s latest segments and its fold
 * directory; a failed read is tried again at the next deletion.
 */
async function loadFolds(ctx: PathContext, host: DocumentHost): Promise<void> {
  const folded = foldedReactionsOf(host)
  const history = ctx.history!
  try {
    const latest = history.latestSegments(host, FOLDS_READ_SEGMENTS)
    const [folds, directory] = await Promise.all([
      history.foldsOf(host.key, latest),
      history.foldDirectory(host.key, epochOf(host.doc) ?? 0),
    ])
    for (const index of latest) folded.read.add(index)
    folded.hold(folds)
    folded.directory = directory
    folded.loaded = true
  } catch (error) {
    // The update is not refused for it: only a removal made offline across a seal may stay unseen.
    ctx.log.warn({ err: error, doc: host.key }, "could not read the reactions the seals folded")
  }
}

/** Segments of older folds one update reads at most (see {@link olderFolds}). */
const OLDER_FOLD_SEGMENTS = 64

/**
 * Whether the fold directory lists segments not read yet for a client whose
 * items `deleteSet` deletes (see {@link olderFolds}). Synchronous, so that an
 * update awaits nothing when there are none, as nearly always.
 */
function olderFoldsUnread(host: DocumentHost, deleteSet: ReturnType<typeof decodeOnce>["ds"]): boolean {
  const folded = foldedReactions.get(host)
  const directory = folded?.directory
  if (!folded || !directory) return false
  for (const client of deleteSet.clients.keys())
    if (directory.segmentsOf(client).some((index) => !folded.read.has(index))) return true
  return false
}

/**
 * Reads the folds, not read yet, of the segments the fold directory lists
 * for the clients of `user` whose items `deleteSet` deletes: a device away
 * while more segments were sealed than a load reads ({@link loadFolds}).
 * Only `user`'s own clients (a user removes only their own reactions) and
 * the relay's, so that the whole delete set every sync sends (everyone's
 * deletions) reads no one else's, and each segment once per loaded document, at most
 * {@link OLDER_FOLD_SEGMENTS} per update, the newest first (a reaction is
 * usually taken back soon after it was made; the rest wait for the next
 * update naming those clients).
 */
async function olderFolds(
  ctx: PathContext,
  host: DocumentHost,
  deleteSet: ReturnType<typeof decodeOnce>["ds"],
  user: UserId,
): Promise<void> {
  const folded = foldedReactions.get(host)
  const directory = folded?.directory
  if (!folded || !directory) return
  try {
    const unread = new Set<number>()
    let owners: ClientIdOwners | undefined
    for (const client of deleteSet.clients.keys()) {
      const segments = directory.segmentsOf(client).filter((index) => !folded.read.has(index))
      if (segments.length === 0) continue
      owners ??= await ctx.extensions.clientIdOwners({ name: host.name, doc: host.doc })
      // The relay's own: a fresh epoch rewrites every reaction under its client id, so a reaction from
      // before the epoch is the relay's item (a few segments' worth: what the epoch's document held).
      const owner = owners?.owner(client)
      if (owner !== describePrincipal({ kind: "user", user }) && owner !== describePrincipal(RELAY)) continue
      for (const index of segments) unread.add(index)
    }
    if (unread.size === 0) return
    const wanted = [...unread].sort((a, b) => b - a).slice(0, OLDER_FOLD_SEGMENTS)
    const folds = await ctx.history!.foldsOf(host.key, wanted)
    for (const index of wanted) folded.read.add(index)
    folded.hold(folds)
  } catch (error) {
    ctx.log.warn({ err: error, doc: host.key }, "could not read the reactions older seals folded")
  }
}

function foldedReactionsOf(host: DocumentHost): FoldedReactions {
  let folded = foldedReactions.get(host)
  if (!folded) {
    folded = new FoldedReactions()
    foldedReactions.set(host, folded)
  }
  return folded
}

/**
 * Writes, as the relay, the removals of folded reactions that devices removed
 * without knowing of their seal (see `FoldedReactions`): stored, broadcast
 * and told to the hooks as any relay change. Keys written since are left as
 * they are. Call inside the document's queue.
 */
async function removeFolded(ctx: PathContext, host: DocumentHost, keys: readonly string[]): Promise<void> {
  const reactions = typesOf(host.doc).reactions
  try {
    const { entries, positions, events, counts, caughtUp } = await applyAndStore(ctx, host, () => {
      const update = captureUpdate(host.doc, () =>
        host.doc.transact(() => {
          const now = Date.now()
          for (const key of keys) if (reactions.get(key) === undefined) reactions.set(key, -now)
        }, RELAY_ORIGIN),
      )
      return update ? { update, source: "relay" } : undefined
    })
    if (entries.length === 0) return
    broadcast(host, encodeSyncUpdate(entries[0]!.update), undefined, caughtUp)
    if (events.length > 0 || positions.length > 0)
      ctx.extensions.afterSaved({ name: host.key, doc: host.doc, actor: RELAY, positions, events, counts })
  } catch (error) {
    // The device's change is stored; what is lost is the removal it meant (a reaction that stays).
    ctx.log.error(
      { err: error, doc: host.key, reactions: keys.length },
      "could not write the removal of folded reactions",
    )
  }
}

/** Characters of edits of sealed messages from which a compaction folds them into their segments (or `refoldMessages`). */
const REFOLD_MIN_EDIT_CHARS = 64 * 1024
/** Segments one refold re-seals at most (those holding the most overlays). */
const REFOLD_SEGMENTS = 4
/** Sealed messages with overlays one refold looks up at most. */
const REFOLD_IDS = 512

/**
 * The sealed messages the live document holds overlays of (reactions,
 * removals of folded ones, edits: written after the message was sealed), and
 * the characters of those edits.
 */
function sealedOverlays(doc: Y.Doc): { ids: MessageId[]; editChars: number } {
  const index = messageIndex(doc)
  const inLive = (id: MessageId) => index.records.has(id) || index.deleted.has(id)
  const ids = new Set<MessageId>()
  for (const id of index.reactions.keys()) if (!inLive(id)) ids.add(id)
  for (const id of index.reactionRemovals.keys()) if (!inLive(id)) ids.add(id)
  let editChars = 0
  for (const [id, edit] of typesOf(doc).edits.entries())
    if (!inLive(id as MessageId)) {
      ids.add(id as MessageId)
      editChars += typeof (edit as EditRecord)?.body === "string" ? (edit as EditRecord).body.length : 0
    }
  return { ids: [...ids], editChars }
}

/**
 * Folds the overlays the live document holds of sealed messages into their
 * segments, once there are enough of them (`SealingOptions.refoldMessages`):
 * a seal folds what a message had when it was sealed, and this what was
 * written after (reactions to old messages, removals of folded ones, edits),
 * so that the live document stays bounded however long the conversation.
 * Re-seals at most {@link REFOLD_SEGMENTS} segments per call, as a purge
 * re-seals (the segment stored under its index first, then the live
 * document names its new hash and drops the overlays it folded, in one
 * relay change). Called after a compaction. A failure leaves the overlays
 * live, to be folded after a later compaction.
 */
async function refoldOverlays(ctx: PathContext, history: HistoryKeeper, host: DocumentHost): Promise<void> {
  if (host.destroyed || sealedThrough(host.doc) === 0) return
  const { ids, editChars } = sealedOverlays(host.doc)
  const least = history.sealing.refoldMessages ?? HistoryDefaults.refoldMessages
  if (ids.length < least && editChars < REFOLD_MIN_EDIT_CHARS) return
  try {
    const named = ids.slice(0, REFOLD_IDS)
    await history.holdNamed(host, named, SealedReads.relay())
    const directory = sealedHistory(host.doc)
    const seqs = named.flatMap((id) => {
      const entry = directory.entry(id)
      return entry ? [entry.seq] : []
    })
    const plan = await planRefold(history, host, seqs, REFOLD_SEGMENTS)
    if (!plan || host.destroyed) return
    await storePurge(history, host.key, plan)
    // A device that removes a reaction while it is folded sends a deletion Yjs cannot see (see FoldedReactions).
    const replaced = replacedSummaryItems(host.doc, plan.fold !== undefined)
    const folded: { index: number; folds: FoldedReaction[] }[] = []
    for (const { index, keys } of plan.folded) {
      const record = replaced.summaries.get(index) ?? replaced.fold
      if (record) folded.push({ index, folds: keysFolded(host.doc, keys, record) })
    }
    // Kept beside their segments before the change that folds them: a device may come back after a restart.
    await history.storeFolds(host.key, folded, epochOf(host.doc) ?? 0)
    if (host.destroyed) return
    foldedReactionsOf(host).hold(folded.flatMap((f) => f.folds))
    const stored = await nameResealed(ctx, host, plan, () => {
      const t = typesOf(host.doc)
      for (const { keys, edits } of plan.folded) {
        for (const key of keys) t.reactions.delete(key)
        for (const id of edits) t.edits.delete(id)
      }
    })
    // More than one turn's worth (overlays spread over many segments): the rest in later turns of the
    // queue, each as bounded as this one; this one made progress, so the follow-ups end.
    if (stored) refoldAgainLater(ctx, history, host)
  } catch (error) {
    ctx.log.error(
      { err: error, doc: host.key },
      "could not fold sealed messages' overlays into their segments",
    )
  }
}

/** Documents with a follow-up refold queued. */
const refoldsQueued = new WeakSet<DocumentHost>()

/** Queues another {@link refoldOverlays} behind what the document's queue holds now (it returns at once when none is due). */
function refoldAgainLater(ctx: PathContext, history: HistoryKeeper, host: DocumentHost): void {
  if (refoldsQueued.has(host) || host.destroyed) return
  refoldsQueued.add(host)
  void host
    .enqueue(async () => {
      refoldsQueued.delete(host)
      if (!host.destroyed) await refoldOverlays(ctx, history, host)
    })
    .catch((error: unknown) => {
      refoldsQueued.delete(host)
      ctx.log.warn(
        { err: error, doc: host.key },
        "a follow-up refold failed; the next compaction tries again",
      )
    })
}

/** The items of `segments` a re-sealing replaces: each live summary's, by segment index, and the folded record's. */
function replacedSummaryItems(
  doc: Y.Doc,
  withFold: boolean,
): { summaries: Map<number, ItemId>; fold?: ItemId } {
  const summaries = new Map<number, ItemId>()
  let fold: ItemId | undefined
  for (let item = typesOf(doc).segments._start; item !== null; item = item.right) {
    if (item.deleted || !(item.content instanceof Y.ContentAny)) continue
    item.content.getContent().forEach((value, j) => {
      const id = { client: item.id.client, clock: item.id.clock + j }
      const summary = decodeSegmentSummary(value)
      if (summary) summaries.set(summary.index, id)
      else if (withFold && decodeFoldedHistory(value)) fold = id
    })
  }
  return fold ? { summaries, fold } : { summaries }
}

/** Documents with a follow-up seal queued. */
const sealsQueued = new WeakSet<DocumentHost>()

/**
 * Queues another seal behind what the document's queue holds now: a backlog
 * larger than one turn seals ({@link SEALS_PER_TURN} segments) would
 * otherwise wait for the next change, leaving the live document that much
 * larger for as long as the conversation stays quiet. A bounded number of
 * segments per turn keeps each turn, and so each frame's wait, bounded.
 */
function sealAgainLater(ctx: PathContext, history: HistoryKeeper, host: DocumentHost): void {
  if (sealsQueued.has(host)) return
  sealsQueued.add(host)
  host
    .enqueue(async () => {
      sealsQueued.delete(host)
      if (!host.destroyed) await sealAndRenew(ctx, history, host)
    })
    .catch((error: unknown) => {
      sealsQueued.delete(host)
      ctx.log.warn({ err: error, doc: host.key }, "a follow-up seal failed; the next change seals again")
    })
}

/**
 * Replaces the stored document with a fresh epoch of it (`startEpoch`: the
 * same values under one client id) and reloads it: every connection is
 * closed (retryable) and rejoins the new epoch; a replica of the old one is
 * told to rebuild when it rejoins (see `Connection`). Only for a document
 * that has sealed history (a short conversation's live document stays small)
 * and once the hooks have every event of the log (the snapshot replaces it);
 * otherwise after a later change. Call inside the document's queue, last.
 */
async function startNewEpoch(
  ctx: PathContext,
  host: DocumentHost,
  reason: "client-ids" | "garbage",
  settle = false,
): Promise<void> {
  if (!ctx.restart || host.destroyed || host.hasUnsaved) return
  // For its client ids, only a document with sealed history: a short conversation's live document stays small.
  if (reason === "client-ids" && sealedThrough(host.doc) === 0) return
  // The deletions waiting for their purge are purged by this host, which knows their segments.
  await purgeDue(ctx, host)
  // A fresh epoch folds the log: not before an owed purge is done (see owesPurge).
  if (owesPurge(ctx, host.key)) return
  try {
    if (settle) await settled(ctx, host)
    if ((await ctx.extensions.compactionLimit(host.key)) < host.lastPosition) {
      if (!settle) epochLater(ctx, host, reason)
      return
    }
    // What a replica of this document needs to rebase onto any later epoch, stored before anything names it.
    const stateVector = Y.encodeStateVector(host.doc)
    const record =
      ctx.history && host.name.kind === "conversation"
        ? endOfEpoch(host.doc, host.name.id, Y.decodeStateVector(stateVector))
        : undefined
    if (record) {
      await ctx.history!.storeEpochRecord(host.key, record)
      // The record must hold everything the fresh epoch does: a change meanwhile (none should come
      // inside the queue) leaves this epoch to the next seal, which writes the record again.
      if (host.destroyed || !equalBytes(stateVector, Y.encodeStateVector(host.doc))) return
    }
    const fresh = startEpoch(host.doc, record)
    const clientIds = host.doc.store.clients.size
    const encoded = Y.encodeStateAsUpdate(fresh)
    await ctx.storage.compact(host.key, encoded, host.lastPosition)
    // What a fold waiting for its records took before is stale now (see foldLater).
    host.compacted()
    fresh.destroy()
    ctx.metrics.epochs.inc({ reason })
    epochStarted(ctx, host)
    ctx.shareEpoch?.(host.key)
    // The last snapshot's size (the compaction before a garbage epoch wrote it): not encoded again for a log line.
    const before = snapshotSizes.get(host)?.snapshot
    ctx.restart(
      host,
      `started a fresh epoch of the live document (${clientIds} client ids → 1, ${before ?? "?"} bytes at its last snapshot → ${encoded.length})`,
    )
  } catch (error) {
    // Storage still holds the old epoch (compaction is atomic): it stays loaded and in use.
    ctx.log.error({ err: error, doc: host.key }, "could not start a fresh epoch")
  }
}

/** Documents with a fresh epoch waiting for their extensions' records (see {@link epochLater}). */
const epochsWaiting = new WeakSet<DocumentHost>()

/**
 * Longest a fresh epoch waits inside the document's queue for the records of the changes saved
 * since its records last caught up (see {@link epochLater}): one outbox transaction, normally.
 */
const EPOCH_SETTLE_MS = 1_000

/**
 * A fresh epoch due while the extensions have not recorded the latest changes (the snapshot
 * replaces the whole log, so it cannot fold only what is recorded, as {@link foldLater} does):
 * tried again once those records are done, outside the queue. A busy document has a change or two
 * saved by then whose records are in flight: the attempt waits for them inside the queue, up to
 * {@link EPOCH_SETTLE_MS} (a transaction, not a backlog), and leaves the epoch to a later change
 * when they take longer.
 */
function epochLater(ctx: PathContext, host: DocumentHost, reason: "client-ids" | "garbage"): void {
  if (epochsWaiting.has(host)) return
  epochsWaiting.add(host)
  ctx.extensions
    .recorded(host.key)
    .then(() => (host.destroyed ? undefined : host.enqueue(() => startNewEpoch(ctx, host, reason, true))))
    .catch((error: unknown) => {
      if (!host.destroyed) ctx.log.error({ err: error, doc: host.key }, "could not start a fresh epoch")
    })
    .finally(() => epochsWaiting.delete(host))
}

/** Resolves once the extensions recorded `host`'s changes so far, or after {@link EPOCH_SETTLE_MS}. */
async function settled(ctx: PathContext, host: DocumentHost): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([
      ctx.extensions.recorded(host.key),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, EPOCH_SETTLE_MS)
      }),
    ])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * Folds the document's log into a snapshot, once the extensions recorded what
 * they record of every change so far (the hooks' events): for a document
 * nobody writes to any more (an unload, a shutdown, a purge asked for). Call
 * inside the document's queue. Resolves false when the log is still there
 * (the compaction failed, a change's events could not be recorded, or a purge
 * of the document is owed: the purge folds it, last).
 */
export async function compact(ctx: PathContext, host: DocumentHost): Promise<boolean> {
  if (host.logSinceSnapshot.entries === 0) return true
  if (owesPurge(ctx, host.key)) return false
  return foldLog(ctx, host, { wait: true })
}

/**
 * The compaction a change makes due: folds the log now when the extensions
 * recorded every change's events, else through the latest position later,
 * once they did ({@link foldLater}), without holding the document's queue
 * meanwhile. Resolves true only when the log is folded now.
 */
async function compactOrDefer(ctx: PathContext, host: DocumentHost): Promise<boolean> {
  if (host.logSinceSnapshot.entries === 0) return true
  if (owesPurge(ctx, host.key) || foldsWaiting.has(host)) return false
  let limit: number
  try {
    limit = await ctx.extensions.compactionLimit(host.key)
  } catch (error) {
    ctx.log.error({ err: error, doc: host.key }, "compaction failed")
    return false
  }
  if (limit >= host.lastPosition) return foldNow(ctx, host)
  foldLater(ctx, host)
  return false
}

/** {@link compact}, also while a purge is owed: the purges' own last step. */
async function foldLog(ctx: PathContext, host: DocumentHost, { wait }: { wait: boolean }): Promise<boolean> {
  if (host.logSinceSnapshot.entries === 0) return true
  try {
    if (wait) await ctx.extensions.recorded(host.key)
    // The snapshot holds everything applied, so compact only once nothing newer waits for its events.
    if ((await ctx.extensions.compactionLimit(host.key)) < host.lastPosition) return false
  } catch (error) {
    ctx.log.error({ err: error, doc: host.key }, "compaction failed")
    return false
  }
  return foldNow(ctx, host)
}

/** Folds the whole log into a snapshot of the document as it is; the caller checked that it may. */
async function foldNow(ctx: PathContext, host: DocumentHost): Promise<boolean> {
  try {
    const snapshot = Y.encodeStateAsUpdate(host.doc)
    await ctx.storage.compact(host.key, snapshot, host.lastPosition)
    host.compacted()
    snapshotSizes.set(host, { sealedSince: 0, ...snapshotSizes.get(host), snapshot: snapshot.length })
    ctx.metrics.compactions.inc()
    return true
  } catch (error) {
    // The log still holds everything; compaction is retried after the next change.
    ctx.log.error({ err: error, doc: host.key }, "compaction failed")
    return false
  }
}

/** Documents with a fold waiting for their extensions' records (see {@link foldLater}): one at a time each. */
const foldsWaiting = new WeakSet<DocumentHost>()

/**
 * A compaction due while the extensions have not recorded the latest changes
 * yet (the hooks' outbox behind the writes): the snapshot of the document as
 * it is now is taken in the queue, and folded through the current position
 * once those changes' events are recorded; the changes stored meanwhile stay
 * in the log after it. Writes go on in between: before, the compaction waited
 * inside the queue, and the document's writes waited as long as the outbox
 * was behind (10–20 s on PostgreSQL at 75 messages a second, an outside tester).
 * Nothing is folded whose events are not recorded (a load derives them from
 * the log past the watermark); a fold or fresh epoch meanwhile, a purge owed,
 * or an unload makes this one moot. Call inside the document's queue.
 */
function foldLater(ctx: PathContext, host: DocumentHost): void {
  const through = host.lastPosition
  const folded = host.logSinceSnapshot
  const folds = host.folds
  const snapshot = Y.encodeStateAsUpdate(host.doc)
  const moot = () => host.destroyed || host.folds !== folds || owesPurge(ctx, host.key)
  foldsWaiting.add(host)
  ctx.extensions
    .recorded(host.key)
    .then(() => (moot() ? undefined : ctx.extensions.compactionLimit(host.key)))
    .then((limit) => {
      // Not recorded after all (the relay stops, another relay orders the document): a later change tries again.
      if (limit === undefined || limit < through || moot()) return
      return host.enqueue(async () => {
        if (moot()) return
        await ctx.storage.compact(host.key, snapshot, through)
        host.compacted(folded)
        snapshotSizes.set(host, { sealedSince: 0, ...snapshotSizes.get(host), snapshot: snapshot.length })
        ctx.metrics.compactions.inc()
        if (!host.destroyed && garbageEpochDue(ctx, host)) await startNewEpoch(ctx, host, "garbage")
      })
    })
    .catch((error: unknown) => {
      // The log still holds everything; compaction is tried again after a later change.
      if (!host.destroyed) ctx.log.error({ err: error, doc: host.key }, "compaction failed")
    })
    .finally(() => foldsWaiting.delete(host))
}

/**
 * THE update path for an update from a connection (sync step 2 or update):
 * size and decodability → policy → apply in memory and sequence, shown to
 * nobody → one durable append of both → broadcast → "saved" to the sender →
 * the extensions' observers. Serial per document; updates waiting behind one
 * another go through it together (see {@link storeBatch}). Rejects with a
 * ParleyError (nothing of the update stored) when the update is refused.
 */
export function submitUpdate(
  ctx: PathContext,
  host: DocumentHost,
  principal: Principal,
  update: Uint8Array,
  from?: Connection,
  seen?: ReplicaView,
): Promise<number[]> {
  // Fail fast: behind a change that waits for storage, this one would wait as long.
  if (waitingForStorage.has(host)) {
    try {
      refuseWhileStorageFails(ctx, host)
    } catch (error) {
      return Promise.reject(error)
    }
  }
  return joinBatch(host, { principal, update, from, seen }, (items) => storeBatch(ctx, host, items))
}

/** A client update the checks let through. */
type Admitted =
  /** The document holds all of it already: nothing to store, only "saved" to send. */
  | { readonly noop: true; readonly ends: ReadonlyMap<number, number> }
  | {
      readonly noop: false
      /** What to apply and store (without structs the document holds already). */
      readonly update: Uint8Array
      readonly clientIds: ReadonlySet<number>
      /** Its clients and the clock after their last struct (a pending sender's "saved"). */
      readonly ends: ReadonlyMap<number, number>
      readonly decision: Decision
      /** Its values (the cost scan's count): what applying, storing and its hook work grow with. */
      readonly values: number
    }

/**
 * Checks a client update against the document as it is now (in a batch: with
 * the batch's earlier updates applied): the document is loaded, the update's
 * size, cost and decodability, storage, the user's client-id and growth
 * budgets, the policy. Changes nothing but the budgets it charges. Throws a
 * ParleyError when the update is refused; a refusal for the update itself
 * (its bytes, its cost, the rules) is charged what its checks cost, as an
 * accepted update of that size and those values is (see {@link chargeRefused}).
 */
async function admitUpdate(
  ctx: PathContext,
  host: DocumentHost,
  principal: Principal,
  update: Uint8Array,
  seen?: ReplicaView,
): Promise<Admitted> {
  const scanned: ScanProgress = { values: 0 }
  try {
    return await checkAndCharge(ctx, host, principal, update, scanned, seen)
  } catch (error) {
    chargeRefused(ctx, principal, error, scanned.values, update.length)
    throw error
  }
}

/**
 * Refusals of an update for what it is (its size, its cost, its bytes, the
 * rules, the user's growth budgets): the relay did the checking that the
 * update's size and values buy. Not those of a relay that cannot take it now
 * (unloaded, storage failing, changes missing), which the client is asked to
 * send again.
 */
const CHARGED_REFUSALS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  ErrorCode.FORBIDDEN,
  ErrorCode.INVALID_UPDATE,
  ErrorCode.TOO_LARGE,
  ErrorCode.RATE_LIMITED,
])

/**
 * Charges a refused update of `bytes` the `values` its checks read, as an
 * accepted one is charged (its bytes at arrival, its values once checked):
 * charged nothing beyond its arrival, a refused frame of a hundred messages
 * cost its user one token, and a client re-sending it in a loop kept 45 % of
 * a core checking it while the same frame accepted was held to the budget.
 * The budget may go into debt; the user's next frame waits for it like after
 * an accepted one (refused 4429 `updates-per-user` until it is paid off).
 */
function chargeRefused(
  ctx: PathContext,
  principal: Principal,
  error: unknown,
  values: number,
  bytes: number,
): void {
  if (!ctx.users || !(error instanceof ParleyError)) return
  // Built on a change the relay never got: retryable, but anyone can make one (any client id, the
  // second of two transactions), and the relay scanned and decoded it; an honest client meets it once
  // per lost change, then sends again whole (an outside probe: 12 times the refusals of a forged frame).
  if (!CHARGED_REFUSALS.has(error.code) && error.rule !== Rule.missingChanges) return
  ctx.users.chargeValues(principal, values, bytes)
}

/** {@link admitUpdate}'s checks, and the budgets an accepted update is charged; `scanned` follows the cost scan. */
async function checkAndCharge(
  ctx: PathContext,
  host: DocumentHost,
  principal: Principal,
  update: Uint8Array,
  scanned: ScanProgress,
  seen?: ReplicaView,
): Promise<Admitted> {
  if (host.destroyed) throw new ParleyError(ErrorCode.UNAVAILABLE, "the document was unloaded")
  if (update.length > ctx.limits.maxUpdateBytes)
    throw new ParleyError(ErrorCode.TOO_LARGE, `updates are limited to ${ctx.limits.maxUpdateBytes} bytes`)
  // A user who spent the day's bytes is refused before anything is decoded.
  ctx.users?.checkStored(principal, update.length)
  // What Yjs would spend on it is bounded before anything decodes it into objects.
  const cost = checkUpdateCost(host.doc, update, ctx.limits, scanned)
  // Refused by the rules whatever else it holds: before anything decodes it (a delete set of 10,000
  // made-up ranges cost a decode and the rules' pass over them), storage's refusal first as before.
  if (cost.deletesUnknown) {
    refuseWhileStorageFails(ctx, host)
    refuseUnknownDeletions()
  }
  const inspected = inspectUpdate(host.doc, update)
  let clientIds = inspected.clientIds
  // Typically a reconnecting client's sync step 2: it learns everything that is durable,
  // unless its access is not known yet: then only what its own update holds.
  if (inspected.noop) {
    // A removal of a participant's record that a concurrent write replaced changes nothing either: the
    // rules tell it from a re-sent one (before: acknowledged as saved, and the participant stayed).
    if (seen && inspected.redeletesParticipants) {
      const input = { name: host.name, doc: host.doc, update, principal, clientIds, seen }
      let decision = await membershipPolicy.checkUpdate(input)
      if (decision.allowed) decision = await ctx.extensions.checkUpdate(input)
      if (!decision.allowed)
        throw new ParleyError(ErrorCode.FORBIDDEN, decision.reason, { rule: decision.rule })
    }
    return { noop: true, ends: inspected.ends }
  }
  refuseWhileStorageFails(ctx, host)
  // Built on earlier changes of its own client that never got here (refused while storage failed, or
  // lost with a relay that had not acknowledged them): the sender has them, so sending its pending work
  // again whole fixes it — a retryable refusal, not a reason to rebuild the replica.
  if (inspected.gaps.size > 0)
    throw new ParleyError(
      ErrorCode.UNAVAILABLE,
      "the update follows changes of its client that the relay does not have: send the pending work again",
      { rule: Rule.missingChanges },
    )
  // Checked before the policy binds the new ids to the user, taken once it accepted them.
  const user = principal.kind === "user" ? principal.user : undefined
  const newIds = cost.newClientIds.length
  if (user && ctx.clientIds && !ctx.clientIds.allows(host.key, user, newIds))
    throw new ParleyError(ErrorCode.RATE_LIMITED, "too many new client ids from this user in this document", {
      rule: CostRule.clientIdGrowth,
    })
  // Each id it writes under first is a binding stored for good (until a group's deletion is purged):
  // disk its user adds like the update's own bytes, up to 256 rows of ~150 bytes for a few hundred
  // update bytes (an outside probe stored 5.7 times its updates' bytes so, past the daily budget).
  const bindingCost = newIds > 0 && user ? await newBindingBytes(ctx, host, principal, cost.newClientIds) : 0
  if (bindingCost > 0) ctx.users?.checkStored(principal, update.length + bindingCost)
  // A client re-sending pending work may include some the document has by now: store only the rest.
  const fresh = withoutKnownStructs(update, inspected.known)
  if (fresh !== update) {
    update = fresh
    clientIds = clientIdsOf(update)
  }
  const input = { name: host.name, doc: host.doc, update, principal, clientIds, ...(seen ? { seen } : {}) }
  // What the update may make the relay read of sealed history: a bounded number of segments, each
  // paid for by its sender (see HistoryKeeper, SealedReads).
  const history = ctx.history && host.name.kind === "conversation" ? ctx.history : undefined
  const reads = history?.readsFor(sealedReadsPaidBy(ctx, principal))
  // A new message's id must be no sealed message's: the rules ask the filters of sealed ids, and a
  // segment that may hold one is read first (rarely: see HistoryKeeper.settleSealedIds).
  if (history) {
    const settling = history.settleSealedIds(host, recordIdsIn(update), reads)
    if (settling) await settling.catch(sealedReadFailed)
  }
  // Read-only access holds whatever policy is plugged in; the extensions' policy adds the document rules.
  let decision = await membershipPolicy.checkUpdate(input)
  if (decision.allowed) decision = await ctx.extensions.checkUpdate(input)
  // An edit, reaction or deletion of a sealed message: the rules need the segment holding it, read
  // only now (most conversations never touch their old messages), and only the segments that may
  // hold a sealed message the update names (not the conversation's whole history).
  if (!decision.allowed && history && reads) {
    const held = await history
      .holdNamed(host, sealedIdsNamed(host.doc, update), reads)
      .catch(sealedReadFailed)
    if (held) {
      decision = await membershipPolicy.checkUpdate(input)
      if (decision.allowed) decision = await ctx.extensions.checkUpdate(input)
    }
  }
  if (!decision.allowed) throw new ParleyError(ErrorCode.FORBIDDEN, decision.reason, { rule: decision.rule })
  // A reopen the rules accept, of a conversation whose purge failed again just now (see purgeBeforeReopen).
  if (owesConversationPurge(ctx, host) && writesAnything(update)) throw purgeStillOwed()
  if (user) ctx.clientIds?.take(host.key, user, newIds)
  // After the rules (a refused update costs no budget), before anything changes: refused whole.
  if (ctx.users && principal.kind === "user" && host.name.kind === "conversation")
    ctx.users.chargeGrowth(principal, growthOf(host.doc, update, principal.user))
  // What it costs downstream (hook events, stored rows, pushes, purges) grows with its values, not its bytes.
  const later = host.name.kind === "conversation" ? laterValues(host, chargedWorkIn(update)) : 0
  ctx.users?.chargeValues(principal, cost.values + later, update.length)
  ctx.users?.chargeStored(principal, update.length + bindingCost)
  return { noop: false, update, clientIds, ends: inspected.ends, decision, values: cost.values }
}

/**
 * Bytes the bindings of `ids` (client ids new to the document) would add to storage for
 * `principal`: those not bound yet (an id claimed through presence was charged then), each at
 * {@link bindingBytes}. Nothing when no extension binds client ids, and for inboxes (not bound).
 */
async function newBindingBytes(
  ctx: PathContext,
  host: DocumentHost,
  principal: Principal,
  ids: readonly number[],
): Promise<number> {
  if (host.name.kind !== "conversation") return 0
  const owners = await ctx.extensions.clientIdOwners({ name: host.name, doc: host.doc })
  if (!owners) return 0
  let unbound = 0
  for (const id of ids) if (owners.owner(id) === undefined) unbound++
  return unbound * bindingBytes(host.name.id, describePrincipal(principal))
}

/**
 * What a change to a conversation makes the relay do later, in values beyond
 * its own: a fleeting message's expiry (a deletion nobody sends) one value;
 * a deletion one update's worth per {@link UPDATE_COST_RECIPIENTS} members,
 * for the inboxes that preview it (an outside probe: deleting the latest
 * message in a room of 100 cost 2.7 times its send); deleting the
 * conversation one update per {@link PURGED_INBOXES_PER_UPDATE} members, whose
 * inboxes are each loaded, rewritten and compacted (a probe: a 30-byte frame
 * bought 0.5–0.95 s of CPU in a room of 200).
 */
function laterValues(host: DocumentHost, work: ChargedWork): number {
  const members = work.deletions > 0 || work.deletesConversation ? typesOf(host.doc).participants.size : 0
  return (
    work.fleeting +
    work.deletions * Math.floor(members / UPDATE_COST_RECIPIENTS) * UPDATE_COST_VALUES +
    (work.deletesConversation ? Math.ceil(members / PURGED_INBOXES_PER_UPDATE) * UPDATE_COST_VALUES : 0)
  )
}

/** Members whose inbox purge a conversation's deletion is charged one update for (see {@link laterValues}). */
const PURGED_INBOXES_PER_UPDATE = 2

/** Who pays for the sealed segments a change of `principal` makes the relay read: a user, from their budget. */
/** What reading sealed segments for `principal`'s change is charged to: the user it acts for. */
export function sealedReadsPaidBy(
  ctx: PathContext,
  principal: Principal,
): ((wanted: number) => number) | undefined {
  const users = ctx.users
  return users && principal.kind === "user" ? (wanted) => users.takeSealedReads(principal, wanted) : undefined
}

/** A failed read of sealed history: a typed refusal as it is; the store failing to answer is retryable. */
function sealedReadFailed(error: unknown): never {
  throw error instanceof ParleyError
    ? error
    : storageUnavailable(`the sealed history could not be read: ${(error as Error).message}`, error)
}

/** A batch's update, checked and applied in memory. */
interface Applied {
  readonly item: QueuedUpdate
  readonly admitted: Extract<Admitted, { noop: false }>
  /** The change events its apply produced. */
  readonly events: ChangeEvent[]
  /**
   * What is stored and sent in its place when the relay numbered its messages
   * in the same transaction (see {@link applyNumbered}): the update with the
   * numbers, which its sender is sent too.
   */
  readonly numbered?: Uint8Array
}

/**
 * Applies a client's `admitted` update (the last of its batch; `before`: the
 * batch's updates applied before it) and numbers the messages the batch
 * brought in ONE Yjs transaction, and returns that transaction's update (the
 * client's structs and the relay's sequence record): one update stored, one
 * frame per connection, one round of observers, where applying then
 * sequencing cost two transactions, two stored updates and, for the
 * broadcast, a merge (still made for a batch of several). Only with a
 * sequencer that answers at once, and for an update small enough to be
 * echoed to its sender with its numbers (a large one goes as it came, see
 * {@link broadcastBatch}). Returns nothing when nothing was numbered (the
 * client's bytes are stored as they came; so too when some of the update
 * waits for missing structs, which the transaction's update would leave out):
 * what is left unnumbered then (a deletion placeholder) is sequenced as before.
 */
function applyNumbered(
  ctx: PathContext,
  host: DocumentHost,
  admitted: Extract<Admitted, { noop: false }>,
  origin: unknown,
  before: readonly Applied[],
): Uint8Array | undefined {
  const sequencer = ctx.sequencer
  const name = host.name
  const doc = host.doc
  // The batch's earlier messages still without a number: numbered first, in the same record.
  const earlier =
    before.length > 0 ? unsequencedMessages(doc, messageIdsIn(before.flatMap((a) => a.events))) : []
  const index = earlier.length > 0 ? messageIndex(doc) : undefined
  if (
    name.kind !== "conversation" ||
    !sequencer.reserveNow ||
    admitted.update.length > MERGE_FOR_BROADCAST_BYTES ||
    // A placeholder may stand for a sealed message: numbered as before (see `sequence`).
    earlier.some((id) => !index!.records.has(id))
  ) {
    Y.applyUpdate(doc, admitted.update, origin)
    return undefined
  }
  let update: Uint8Array | undefined
  const capture = (bytes: Uint8Array) => {
    update = bytes
  }
  let writer: number | undefined
  doc.on("update", capture)
  try {
    doc.transact((transaction) => {
      Y.applyUpdate(doc, admitted.update)
      if (doc.store.pendingStructs !== null || doc.store.pendingDs !== null) return
      const ids = sequenceAddedMessages(
        doc,
        transaction,
        admitted.clientIds,
        (count) => sequencer.reserveNow!(name.id, count),
        RELAY_ORIGIN,
        earlier,
      )
      if (ids.length === 0) return
      // Applying an update marks the transaction remote, and Yjs gives a document a new client id when
      // a remote transaction wrote under its own (it takes it for another client using the id): the
      // numbers were written under it. Until the transaction ends the document stands under the
      // relay's other sequence writer id (bound to the relay as well, and not written now).
      writer = doc.clientID
      doc.clientID = sequenceWriterIds(doc).find((id) => id !== writer) ?? writer
    }, origin)
  } finally {
    doc.off("update", capture)
    if (writer !== undefined) doc.clientID = writer
  }
  return writer !== undefined ? update : undefined
}

/**
 * Changes after which access is decided before anything else is applied:
 * they end a batch (see {@link storeBatch}). Rare next to messages.
 */
const ENDS_A_BATCH: ReadonlySet<ChangeEvent["type"]> = new Set<ChangeEvent["type"]>([
  "conversation.created",
  "conversation.deleted",
  "conversation.reopened",
  "participants.added",
  "participants.removed",
  "participants.roleChanged",
])

/**
 * Stores a batch of client updates that waited in the document's queue (see
 * `update-batch.ts`): each is checked on its own against the document as the
 * ones before it left it and applied in memory, shown to nobody; one refused
 * is refused alone, with its own error, and leaves the others be. Then what
 * they brought is sequenced and everything is stored in ONE append (one
 * commit, one sequencing, one set of hook events per writer's run), and only
 * after that commit is it broadcast and its senders sent "saved". A crash
 * before the commit loses only updates nobody was told are saved; a failed
 * commit stores none of them (see {@link storeSomeOfBatch}).
 *
 * A change of who may read the document (creation, deletion, participants)
 * ends a batch: access is decided right after it, and the updates after it
 * go as the next batch.
 */
async function storeBatch(
  ctx: PathContext,
  host: DocumentHost,
  items: readonly QueuedUpdate[],
): Promise<void> {
  let rest = items
  while (rest.length > 0) rest = await storeSomeOfBatch(ctx, host, rest)
}

/** Applies and stores `items` up to one that ends a batch; returns those after it. */
async function storeSomeOfBatch(
  ctx: PathContext,
  host: DocumentHost,
  items: readonly QueuedUpdate[],
): Promise<readonly QueuedUpdate[]> {
  const applied: Applied[] = []
  // Updates the document held already: "saved" only after the commit (the batch may be what holds them).
  const held: { readonly item: QueuedUpdate; readonly ends: ReadonlyMap<number, number> }[] = []
  let next = items.length
  /** Values of the updates applied so far (see {@link storeSomeOfBatch}'s end of a batch). */
  let values = 0
  let release: (() => void) | undefined
  let applying: QueuedUpdate | undefined
  /** Folded reactions the batch's senders removed without knowing of their seal (see `FoldedReactions`). */
  const removals: string[] = []
  let stored: { positions: number[]; sequencing: Entry | undefined; caughtUp: ReadonlySet<Connection> }
  let relayEvents: ChangeEvent[] = []
  /** The batch's change events, then the sequencing's: for access and the upkeep (one array for both). */
  let allEvents: readonly ChangeEvent[] = []
  try {
    for (let i = 0; i < items.length; i++) {
      const item = items[i]!
      let admitted: Admitted
      try {
        // Every change a deleted conversation accepts (leaving it, reopening it) ends a batch: while it is
        // deleted, nothing of this batch is applied before the update to admit.
        if (applied.length === 0) await purgeBeforeReopen(ctx, host)
        admitted = await admitUpdate(ctx, host, item.principal, item.update, item.seen)
      } catch (error) {
        item.reject(error)
        continue
      }
      // Before the no-op check: such a removal deletes only what the relay deleted already.
      if (item.principal.kind === "user") {
        const { ds } = decodeOnce(item.update)
        if (ds.clients.size > 0) {
          if (foldsUnread(ctx, host)) await loadFolds(ctx, host)
          if (olderFoldsUnread(host, ds)) await olderFolds(ctx, host, ds, item.principal.user)
          const folded = foldedReactions.get(host)
          if (folded) removals.push(...folded.removedBy(ds, item.principal.user))
        }
      }
      if (admitted.noop) {
        held.push({ item, ends: admitted.ends })
        continue
      }
      release ??= host.holdUnsaved()
      applying = item
      // The batch's last update is applied in one Yjs transaction with the numbers of every message the
      // batch brought (a live chat's batch is nearly always one update).
      let numbered: Uint8Array | undefined
      if (i === items.length - 1)
        numbered = applyNumbered(ctx, host, admitted, item.from ?? item.principal, applied)
      else Y.applyUpdate(host.doc, admitted.update, item.from ?? item.principal)
      applying = undefined
      const events = host.takeEvents()
      applied.push({ item, admitted, events, ...(numbered ? { numbered } : {}) })
      values += admitted.values
      // About one at-cap update's worth per commit: a burst of large updates to one document (one
      // sender's, on many sockets) is then stored and answered one part at a time, with every other
      // document's frames read in between, not checked and applied in one run of the event loop
      // (a batch of twelve at-cap frames held everyone else for over a second).
      if (events.some((e) => ENDS_A_BATCH.has(e.type)) || values >= ctx.limits.maxUpdateValues) {
        next = i + 1
        break
      }
    }
    if (applied.length === 0) {
      if (removals.length > 0) await removeFolded(ctx, host, removals)
      ackBatch(applied, held)
      for (const { item } of held) item.resolve([])
      return items.slice(next)
    }
    const events = applied.flatMap((a) => a.events)
    const sequencing = await sequence(ctx, host, messageIdsIn(events))
    relayEvents = sequencingEvents(host, sequencing)
    const entries: Entry[] = applied.map(({ item, admitted, numbered }) => ({
      update: numbered ?? admitted.update,
      source: item.principal.kind === "relay" ? "relay" : "client",
    }))
    if (sequencing) entries.push(sequencing)
    allEvents = relayEvents.length > 0 ? [...events, ...relayEvents] : events
    const deleting = allEvents.some(deletes)
    let positions: number[]
    try {
      positions = await persist(ctx, host, entries, deleting)
    } catch (error) {
      if (!ctx.storageHealth || !isStorageFailure(error)) throw error
      positions = await storeWhenBack(
        ctx,
        ctx.storageHealth,
        host,
        entries,
        deleting,
        error,
        sendersOf(applied),
      )
    }
    // Still held unsaved, so that no sync answer goes out before access is decided for what is now durable.
    // Only the last update may change access (it ends the batch): its sender is the one who may have left.
    const last = applied.at(-1)!
    const caughtUp = ctx.settleAccess(host, {
      events: allEvents,
      update: last.admitted.update,
      ...(last.item.from ? { from: last.item.from } : {}),
      clientIds: last.admitted.clientIds,
    })
    stored = { positions, sequencing, caughtUp }
  } catch (cause) {
    // A retryable refusal (the relay shutting down while a change waited for storage) stays retryable.
    const error =
      cause instanceof ParleyError && isRetryable(cause.code)
        ? cause
        : new ParleyError(ErrorCode.INTERNAL, "the relay failed to store a change", { cause })
    // The senders learn why before eviction closes their connections.
    for (const connection of sendersOf(applied)) connection.refuse(error)
    ctx.evict(host, cause)
    applying?.reject(error)
    for (const { item } of applied) item.reject(error)
    for (const { item } of held) item.reject(error)
    // Those not reached find the document unloaded.
    return items.slice(next)
  } finally {
    release?.()
  }
  const { positions, sequencing, caughtUp } = stored
  // Skipped whole when no extension observes stored changes (the usual): no await per change.
  if (ctx.extensions.observeStored)
    for (const { item, admitted } of applied)
      await ctx.extensions.updateStored({
        name: host.name,
        doc: host.doc,
        principal: item.principal,
        clientIds: admitted.clientIds,
        decision: admitted.decision,
      })
  // Each connection's frames of this change (its update, the sequencing, a sender's "saved") in one
  // write, with what the observers send at once: a member whose inbox is a channel of the same
  // multiplexed socket gets the conversation's update and the inbox's new entry in that one write.
  const releaseHeld = holdConnections(host)
  try {
    broadcastBatch(host, applied, sequencing?.update, caughtUp)
    ackBatch(applied, held)
    notifyBatch(ctx, host, applied, relayEvents, positions, sequencing !== undefined)
  } finally {
    releaseHeld()
  }
  if (removals.length > 0) await removeFolded(ctx, host, removals)
  await upkeep(ctx, host, allEvents)
  const sequenced = sequencing ? [positions.at(-1)!] : []
  for (const [k, { item }] of applied.entries()) item.resolve([positions[k]!, ...sequenced])
  for (const { item } of held) item.resolve([])
  return items.slice(next)
}

/** Whether `update` writes anything (a participant leaving a deleted conversation writes nothing, a reopen does). */
function writesAnything(update: Uint8Array): boolean {
  return Y.decodeUpdate(update).structs.some((struct) => struct instanceof Y.Item)
}

/**
 * The events of the relay's sequencing, taken from the document after it.
 * The placeholder's arrival already said "deleted" of a sealed message it
 * turned into a tombstone: the tombstone does not say it again.
 */
function sequencingEvents(host: DocumentHost, sequencing: Entry | undefined): ChangeEvent[] {
  const converted = new Set(sequencing?.sealedDeletions ?? [])
  return host
    .takeEvents()
    .filter(
      (event) =>
        !(
          event.type === "message.deleted" &&
          converted.has(event.messageId) &&
          converted.delete(event.messageId)
        ),
    )
}

/** The connections that sent `applied`, each once. */
function sendersOf(applied: readonly Applied[]): Set<Connection> {
  const senders = new Set<Connection>()
  for (const { item } of applied) if (item.from) senders.add(item.from)
  return senders
}

/** Largest run of small updates merged into one broadcast frame. */
const MERGE_BATCH_FOR_BROADCAST_BYTES = 256 * 1024

/**
 * Sends a stored batch to every connection not caught up already: its
 * sequencing, and its updates (a writer's own large ones left out), merged
 * into one frame while they are small (a backlog of chat messages: one frame
 * per batch to fan out). A message and its number arrive in one frame, so a
 * replica never shows a small message unnumbered (sent apart, the demo's
 * reader marked read before the number came and never after: its sender
 * never saw "read"). Merging re-encodes every struct, so a large update (an
 * offline device's backlog) goes as it came.
 */
function broadcastBatch(
  host: DocumentHost,
  applied: readonly Applied[],
  sequencing: Uint8Array | undefined,
  caughtUp: ReadonlySet<Connection>,
): void {
  // Only small updates (the usual): everyone gets the same frames, its own updates merged in too (Yjs
  // skips what it holds; y-websocket's server echoes every update too), so the batch is merged once,
  // not once per writer and once for the others (a backlog of four writers: five merges before).
  const small = applied.every((a) => (a.numbered ?? a.admitted.update).length <= MERGE_FOR_BROADCAST_BYTES)
  const writers = small ? new Set<Connection>() : sendersOf(applied)
  const framesFor = new Map<Connection | undefined, Uint8Array[]>()
  const frames = (connection: Connection | undefined): Uint8Array[] => {
    let built = framesFor.get(connection)
    if (!built) {
      // A sender is sent its own update back only when it carries the relay's numbers.
      const parts = applied
        .filter((a) => a.item.from !== connection || !connection || a.numbered)
        .map((a) => a.numbered ?? a.admitted.update)
      if (sequencing) parts.push(sequencing)
      built = mergedFrames(parts)
      framesFor.set(connection, built)
    }
    return built
  }
  for (const connection of host.connections) {
    if (caughtUp.has(connection)) continue
    for (const frame of frames(writers.has(connection) ? connection : undefined)) connection.send(frame)
  }
}

/** Sync-update frames of `parts` in order: consecutive small ones merged, large ones alone. */
function mergedFrames(parts: readonly Uint8Array[]): Uint8Array[] {
  const frames: Uint8Array[] = []
  let run: Uint8Array[] = []
  let bytes = 0
  const flush = () => {
    if (run.length > 0) frames.push(encodeSyncUpdate(run.length === 1 ? run[0]! : Y.mergeUpdates(run)))
    run = []
    bytes = 0
  }
  for (const part of parts) {
    if (part.length > MERGE_FOR_BROADCAST_BYTES) {
      flush()
      frames.push(encodeSyncUpdate(part))
      continue
    }
    if (bytes + part.length > MERGE_BATCH_FOR_BROADCAST_BYTES) flush()
    run.push(part)
    bytes += part.length
  }
  flush()
  return frames
}

/**
 * "saved" to each sender of a stored batch, once: the durable state of the
 * client ids it wrote for (everything durable when it re-sent what the
 * document held); a connection whose access is still pending learns only
 * what its own updates hold.
 */
function ackBatch(
  applied: readonly Applied[],
  held: readonly { readonly item: QueuedUpdate; readonly ends: ReadonlyMap<number, number> }[],
): void {
  const acks = new Map<Connection, Set<number> | "all">()
  for (const { item, admitted } of applied) {
    const connection = item.from
    if (!connection) continue
    if (connection.pending) {
      connection.savedOwn(admitted.ends)
      continue
    }
    const ids = acks.get(connection) ?? new Set<number>()
    if (ids === "all") continue
    for (const id of admitted.clientIds) ids.add(id)
    acks.set(connection, ids)
  }
  for (const { item, ends } of held) {
    const connection = item.from
    if (!connection) continue
    if (connection.pending) connection.savedOwn(ends)
    else acks.set(connection, "all")
  }
  for (const [connection, ids] of acks) connection.saved(ids === "all" ? undefined : ids)
}

/**
 * The extensions' observers of a stored batch (the document's upkeep comes
 * after, once). Observers hear one change per run of updates by the same
 * writer (hook events name one actor), each event once; the relay's
 * sequencing goes with the last run.
 */
function notifyBatch(
  ctx: PathContext,
  host: DocumentHost,
  applied: readonly Applied[],
  relayEvents: readonly ChangeEvent[],
  positions: readonly number[],
  sequenced: boolean,
): void {
  let start = 0
  for (let k = 0; k < applied.length; k++) {
    const actor = applied[k]!.item.principal
    if (k + 1 < applied.length && applied[k + 1]!.item.principal === actor) continue
    const run = applied.slice(start, k + 1)
    const runPositions = positions.slice(start, k + 1)
    const runEvents = run.flatMap((a) => a.events)
    const counts = run.map((a) => a.events.length)
    if (k + 1 === applied.length) {
      if (sequenced) {
        runPositions.push(positions.at(-1)!)
        counts.push(relayEvents.length)
      } else counts[counts.length - 1]! += relayEvents.length
      runEvents.push(...relayEvents)
    }
    notifySaved(ctx, host, actor, runPositions, runEvents, counts)
    start = k + 1
  }
}

/**
 * Holds what each of `host`'s connections is sent (see `Connection.hold`)
 * until the returned function is called, in the same synchronous stretch.
 * Held on a multiplexed socket, it holds the socket's other channels too.
 */
function holdConnections(host: DocumentHost): () => void {
  const releases = [...host.connections].map((connection) => connection.hold())
  return () => {
    for (const release of releases) release()
  }
}

/**
 * A trusted server-side change (hooks, bots) through the same path: `change`
 * runs against the live document (the shared operations check the rules for
 * the actor before writing), then what it wrote is stored, sequenced,
 * broadcast and given to the extensions' observers. Resolves with the log positions once durable.
 *
 * While storage fails it rejects at once with the retryable STORAGE_UNAVAILABLE,
 * also when an earlier change to the document waits for storage: such a write
 * is not queued behind that one (an HTTP request would get no answer until
 * storage is back). A change whose own append fails waits in memory and is
 * stored once storage is back, as a client's does; its caller is told at once,
 * with STORAGE_UNAVAILABLE whose message says the change is held, and a retry
 * under the same ids finds it.
 */
export function writeOnServer(
  ctx: PathContext,
  host: DocumentHost,
  actor: Principal,
  change: (doc: Y.Doc) => void,
): Promise<number[]> {
  try {
    refuseWhileStorageFails(ctx, host)
  } catch (error) {
    return Promise.reject(error)
  }
  return new Promise<number[]>((resolve, reject) => {
    const held = (failure: ParleyError) =>
      reject(
        new ParleyError(
          ErrorCode.STORAGE_UNAVAILABLE,
          "storage is failing: the change is held in memory and is stored once storage answers again (a retry under the same ids finds it)",
          { cause: failure },
        ),
      )
    // Settling an already rejected promise does nothing: a held change's later outcome is the log's.
    writeInQueue(ctx, host, actor, change, held).then(resolve, reject)
  })
}

function writeInQueue(
  ctx: PathContext,
  host: DocumentHost,
  actor: Principal,
  change: (doc: Y.Doc) => void,
  held: (failure: ParleyError) => void,
): Promise<number[]> {
  return host.enqueue(async () => {
    if (host.destroyed) throw new ParleyError(ErrorCode.UNAVAILABLE, "the document was unloaded")
    refuseWhileStorageFails(ctx, host)
    // A reopen (through the HTTP API) only once the deletion's purge is done; what else a deleted
    // conversation accepts (leaving it) waits the moment too, it is rare.
    if (actor.kind !== "relay" && (await purgeBeforeReopen(ctx, host))) throw purgeStillOwed()
    const relayClientId = host.doc.clientID
    const history = ctx.history && host.name.kind === "conversation" ? ctx.history : undefined
    /** The sealed messages the change looked for and the relay does not hold (see `recordMisses`). */
    let missed: MessageId[] = []
    const attempt = async () => {
      let failure: unknown
      const stored = await applyAndStore(
        ctx,
        host,
        () => {
          // Each actor writes under client ids of its own, never the relay's (a policy binds ids to writers).
          if (actor.kind !== "relay") host.doc.clientID = host.clientIdFor(actor)
          const recording = history ? sealedHistory(host.doc).recordMisses() : undefined
          const update = captureUpdate(host.doc, () => {
            try {
              host.doc.transact(() => change(host.doc), actor)
            } catch (error) {
              // What was written before the throw is in memory, so it is stored too.
              failure = error
            } finally {
              if (actor.kind !== "relay") host.doc.clientID = relayClientId
              missed = recording?.() ?? []
            }
          })
          if (!update) return undefined
          // The change may build on derived data held in memory only (an entry it replaces or removes;
          // the relay's items after them in its clock): stored with it, or the stored change would hang
          // on items no other replica gets (another relay's copy, this one's after a crash) and be lost.
          const unstored = ctx.unstoredSince?.(host)
          return { update: unstored ? Y.encodeStateAsUpdate(host.doc, unstored) : update, source: "server" }
        },
        { held },
      )
      return { ...stored, failure }
    }
    let run = await attempt()
    // A change naming a sealed message (an edit, reaction or read marker from the HTTP API or a hook)
    // finds it only in the segment holding it, read only now as for clients' updates: only the
    // segments that may hold the messages it looked for, within what one change may read, paid for
    // by the user it acts for. Tried again only when the refusal wrote nothing.
    if (
      history &&
      missed.length > 0 &&
      run.entries.length === 0 &&
      run.failure instanceof ParleyError &&
      run.failure.code === ErrorCode.NOT_FOUND
    ) {
      const reads = history.readsFor(sealedReadsPaidBy(ctx, actor))
      if (await history.holdNamed(host, missed, reads).catch(sealedReadFailed)) run = await attempt()
    }
    const { entries, positions, events, counts, caughtUp, failure } = run
    if (entries.length > 0) {
      await ctx.extensions.updateStored({
        name: host.name,
        doc: host.doc,
        principal: actor,
        clientIds: clientIdsOf(entries[0]!.update),
      })
      const merged = entries.length === 1 ? entries[0]!.update : Y.mergeUpdates(entries.map((e) => e.update))
      // The update and what the observers send at once in one write per socket (see storeSomeOfBatch).
      const release = holdConnections(host)
      try {
        broadcast(host, encodeSyncUpdate(merged), undefined, caughtUp)
        notifySaved(ctx, host, actor, positions, events, counts)
      } finally {
        release()
      }
      await upkeep(ctx, host, events)
    }
    if (failure !== undefined) throw failure
    return positions
  })
}

/** Documents whose leftovers wait for storage to be back (see {@link sequenceLeftovers}). */
const leftoversWaiting = new WeakSet<DocumentHost>()

/**
 * Sequences every message left unsequenced (after a crash between storing an
 * update and sequencing it). While storage refuses writes, the messages stay
 * as stored (unnumbered) and are numbered once it is back: numbering them now
 * would hold the document unsaved, and every reader's sync with it, until
 * then. Content a purge left behind is never served meanwhile: its purge is
 * run (and fails) here. A conversation purge a load found owed runs here too
 * (once storage answers).
 */
export function sequenceLeftovers(ctx: PathContext, host: DocumentHost): Promise<number[]> {
  const health = ctx.storageHealth
  if (
    health &&
    !health.available &&
    !(host.name.kind === "conversation" && holdsPurgeableContent(host.doc))
  ) {
    if (!leftoversWaiting.has(host)) {
      leftoversWaiting.add(host)
      health.whenAvailable().then(
        () => {
          leftoversWaiting.delete(host)
          if (host.destroyed) return
          sequenceLeftovers(ctx, host).catch((error: unknown) =>
            ctx.log.error({ err: error, doc: host.key }, "could not sequence messages left unsequenced"),
          )
        },
        // The relay shuts down: whoever loads the document next numbers them.
        () => leftoversWaiting.delete(host),
      )
    }
    return Promise.resolve([])
  }
  return host.enqueue(async () => {
    const { entries, positions, events, counts, caughtUp } = await applyAndStore(ctx, host, () => undefined, {
      sequenceLeftovers: true,
    })
    if (entries.length > 0) {
      ctx.log.info({ doc: host.key, positions }, "sequenced messages left unsequenced")
      broadcast(host, encodeSyncUpdate(entries[0]!.update), undefined, caughtUp)
      await finish(ctx, host, RELAY, positions, events, counts)
    } else if (host.name.kind === "conversation" && owesConversationPurge(ctx, host)) {
      // A purge that a crash or a failure interrupted: done now, before anyone reads the content.
      await purgeConversation(ctx, host, host.name.id)
    }
    return positions
  })
}

/**
 * `update` without the structs the document already holds (`known`: the
 * document's clock of each client the update re-sends; its delete set is kept
 * whole). Unchanged, without re-encoding, when it re-sends none: the usual case.
 */
function withoutKnownStructs(update: Uint8Array, known: ReadonlyMap<number, number>): Uint8Array {
  return known.size === 0 ? update : Y.diffUpdate(update, Y.encodeStateVector(new Map(known)))
}

function clientIdsOf(update: Uint8Array): Set<number> {
  return new Set(Y.decodeUpdate(update).structs.map((struct) => struct.id.client))
}
