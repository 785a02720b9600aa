import {
  type ChangeEvent,
  decodeSegmentSummary,
  ErrorCode,
  encodeSegmentSummary,
  encodeSyncUpdate,
  isRetryable,
  type MessageId,
  messageIndex,
  ParleyError,
  purgeFromSegment,
  type SealedDeletion,
  sealedHistory,
  sealedSegments,
  sealedThrough,
  tombstoneOf,
  typesOf,
  unsequencedMessages,
  writeSequenceNumbers,
} from "@parley/shared"
import * as Y from "yjs"
import type { ClientIdAllowance } from "./client-id-allowance.js"
import type { Connection } from "./connection.js"
import type { DocumentHost } from "./document-host.js"
import type { AfterSaved, Extensions } from "./extension.js"
import { growthOf } from "./growth.js"
import { startEpoch } from "./history/epoch.js"
import type { HistoryKeeper } from "./history/keeper.js"
import { applySeal, placeholdersToTombstones, planSeal } from "./history/sealing.js"
import type { Logger } from "./log.js"
import type { RelayMetrics } from "./metrics.js"
import { membershipPolicy } from "./policy.js"
import { type Principal, RELAY } from "./principal.js"
import type { ContentPurge } from "./purge/content-purge.js"
import { holdsPurgeableContent, purgeConversationContent } from "./purge/purge-conversation.js"
import type { Sequencer } from "./sequencer.js"
import { isStorageFailure, storageUnavailable } from "./storage/guard.js"
import type { RelayStorage } from "./storage/types.js"
import { CostRule, checkUpdateCost, type UpdateCostLimits } from "./update-cost.js"
import type { UserLedger } from "./user-limits.js"
import { inspectUpdate } from "./yjs-updates.js"

/** Limits the update path enforces. */
export interface PathLimits extends UpdateCostLimits {
  /** Largest update accepted, in bytes. */
  readonly maxUpdateBytes: number
  /** Compact once this many log entries follow the snapshot... */
  readonly compactAfterUpdates: number
  /** ...or once they hold this many bytes. */
  readonly compactAfterBytes: number
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
}

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
async function persist(ctx: PathContext, host: DocumentHost, entries: readonly Entry[]): Promise<number[]> {
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
  // that still held it live): the directory of sealed messages says, loaded only for such a case.
  let sealed: MessageId[] = []
  if (ctx.history && sealedThrough(host.doc) > 0) {
    const index = messageIndex(host.doc)
    const orphans = (candidates ?? index.unsequenced()).filter(
      (id) => index.deleted.has(id) && !index.seqOf.has(id) && !index.records.has(id),
    )
    if (orphans.length > 0) {
      await ctx.history.loadDirectory(host)
      const history = sealedHistory(host.doc)
      sealed = orphans.filter((id) => history.entry(id) !== undefined)
    }
  }
  const ids = unsequencedMessages(host.doc, candidates)
  if (ids.length === 0 && sealed.length === 0) return undefined
  const from = ids.length > 0 ? await ctx.sequencer.reserve(host.name.id, ids.length) : 0
  const update = captureUpdate(host.doc, () => {
    if (sealed.length > 0) placeholdersToTombstones(host.doc, sealed, RELAY_ORIGIN)
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
  options: { sequenceLeftovers?: boolean; from?: Connection; clientIds?: Iterable<number> } = {},
): Promise<{
  entries: Entry[]
  positions: number[]
  events: ChangeEvent[]
  caughtUp: ReadonlySet<Connection>
}> {
  const release = host.holdUnsaved()
  try {
    const first = change()
    const events = host.takeEvents()
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
      return { entries, positions: [], events, caughtUp: ctx.settleAccess(host, { events }) }
    let positions: number[]
    try {
      positions = await persist(ctx, host, entries)
    } catch (error) {
      if (!ctx.storageHealth || !isStorageFailure(error)) throw error
      positions = await storeWhenBack(ctx, ctx.storageHealth, host, entries, error, options.from)
    }
    // Still held unsaved, so that no sync answer goes out before access is decided for what is now durable.
    const caughtUp = ctx.settleAccess(host, {
      events,
      ...(first ? { update: first.update } : {}),
      ...(options.from ? { from: options.from } : {}),
      ...(options.clientIds ? { clientIds: options.clientIds } : {}),
    })
    return { entries, positions, events, caughtUp }
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

/** Documents holding a change that is applied in memory but waits for storage to come back. */
const waitingForStorage = new WeakSet<DocumentHost>()

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
  failure: ParleyError,
  from: Connection | undefined,
): Promise<number[]> {
  ctx.log.warn(
    { err: failure, doc: host.key },
    "storage failed: the change waits in memory, unseen, until storage is back",
  )
  ctx.metrics.errors.inc({ code: failure.code })
  from?.refuse(failure)
  waitingForStorage.add(host)
  try {
    for (;;) {
      await health.whenAvailable()
      try {
        const landed = await alreadyStored(ctx, host, entries)
        if (landed) {
          account(ctx, host, entries, landed)
          return landed
        }
        const positions = await persist(ctx, host, entries)
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
  if (!same) throw new Error("the stored log holds changes this relay's memory does not")
  return beyond.map((u) => u.position)
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** Refuses a write at once while the document or the storage cannot take it (retryable). */
function refuseWhileStorageFails(ctx: PathContext, host: DocumentHost): void {
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
): Promise<void> {
  if (events.length > 0 || positions.length > 0) {
    const change: AfterSaved = { name: host.key, doc: host.doc, actor, positions, events }
    ctx.extensions.afterSaved(change)
  }
  if (host.name.kind === "conversation" && holdsPurgeableContent(host.doc)) {
    await purgeConversation(ctx, host, host.name.id)
    return
  }
  const deletedMessages = events.flatMap((e) => (e.type === "message.deleted" ? [e.messageId] : []))
  if (host.name.kind === "conversation" && deletedMessages.length > 0)
    await purgeMessages(ctx, host, host.name.id, deletedMessages)
  if (ctx.history && host.name.kind === "conversation") {
    await seal(ctx, ctx.history, host)
    if (host.doc.store.clients.size > ctx.history.sealing.epochClientIds) await startNewEpoch(ctx, host)
  }
  const log = host.logSinceSnapshot
  if (log.entries >= ctx.limits.compactAfterUpdates || log.bytes >= ctx.limits.compactAfterBytes) {
    await compact(ctx, host)
  }
}

/**
 * Purges a deleted conversation (relay README, "Deletion and erasure"), once
 * its deletion is stored: a relay write removes its content from the live
 * document (stored, then broadcast: every replica deletes it too), the
 * backend drops its segments and redacts its stored hook events, and the log
 * is folded into a snapshot of the garbage-collected document, so that no
 * log entry or snapshot holds the text. Call inside the document's queue.
 * A failure is logged; the next change or load of the document purges again.
 */
async function purgeConversation(ctx: PathContext, host: DocumentHost, conversation: string): Promise<void> {
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
    await compact(ctx, host)
    if (ctx.purge) {
      // After the hooks recorded the deletion's own events (they carry the title): compaction waited for them.
      await ctx.extensions.compactionLimit(host.key)
      await ctx.purge.dropSegments(host.key)
      await ctx.purge.redactEvents(host.key, conversation, { kind: "conversation" })
    }
    await ctx.purge?.scrub()
    ctx.log.info({ doc: host.key }, "purged a deleted conversation")
  } catch (error) {
    ctx.log.error({ err: error, doc: host.key }, "could not purge a deleted conversation")
  }
}

/**
 * Purges deleted messages' text from storage once their deletion is stored:
 * the log is folded into a snapshot of the garbage-collected live document
 * (which no longer holds the text), and their stored hook events are
 * redacted. Call inside the document's queue.
 */
async function purgeMessages(
  ctx: PathContext,
  host: DocumentHost,
  conversation: string,
  ids: readonly MessageId[],
): Promise<void> {
  try {
    if (ctx.history) await purgeSealed(ctx, ctx.history, host, ids)
    await compact(ctx, host)
    if (ctx.purge) {
      await ctx.extensions.compactionLimit(host.key)
      await ctx.purge.redactEvents(host.key, conversation, { kind: "messages", ids: new Set(ids) })
      await ctx.purge.scrub()
    }
  } catch (error) {
    ctx.log.error({ err: error, doc: host.key }, "could not purge deleted messages")
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
  await history.loadDirectory(host)
  const directory = sealedHistory(host.doc)
  const seqs = [...deletions.values()].map((d) => d.seq)
  const plans: NonNullable<ReturnType<typeof purgeFromSegment>>[] = []
  for (const summary of sealedSegments(host.doc)) {
    if (!seqs.some((seq) => seq >= summary.from && seq <= summary.to)) continue
    const segment = directory.segment(summary.index)
    const purged = segment && purgeFromSegment(segment, summary, deletions)
    if (purged) plans.push(purged)
  }
  if (plans.length === 0) return
  for (const { segment, summary, bytes } of plans)
    await history.store.put(host.key, {
      index: segment.index,
      from: segment.from,
      to: segment.to,
      hash: summary.hash,
      bytes,
    })
  const { entries, positions, caughtUp } = await applyAndStore(ctx, host, () => {
    const update = captureUpdate(host.doc, () =>
      host.doc.transact(() => {
        const segments = typesOf(host.doc).segments
        for (const { summary } of plans) {
          const at = segments.toArray().findIndex((v) => decodeSegmentSummary(v)?.index === summary.index)
          if (at < 0) continue
          segments.delete(at, 1)
          segments.insert(at, [encodeSegmentSummary(summary)])
        }
        // A pinned copy of a deleted message holds its text: gone with it, whichever client deleted it.
        const pins = typesOf(host.doc).pins
        for (const id of deletions.keys()) if (pins.has(id)) pins.delete(id)
      }, RELAY_ORIGIN),
    )
    return update ? { update, source: "relay" } : undefined
  })
  for (const { segment } of plans) directory.replace(segment)
  if (entries.length > 0) broadcast(host, encodeSyncUpdate(entries[0]!.update), undefined, caughtUp)
  // A summary's new hash is no hook event; the positions move the hooks' watermark past it.
  if (positions.length > 0)
    ctx.extensions.afterSaved({ name: host.key, doc: host.doc, actor: RELAY, positions, events: [] })
}

/**
 * Seals the oldest messages of a conversation into a history segment once its
 * live document holds enough (see `planSeal`): the segment is stored first,
 * then the live document drops what it sealed and names the segment, through
 * the same store-then-broadcast as every change. A crash in between leaves an
 * unreferenced segment that the next sealing rewrites. Call inside the
 * document's queue. A failure leaves the live document as it was.
 */
async function seal(ctx: PathContext, history: HistoryKeeper, host: DocumentHost): Promise<void> {
  if (host.name.kind !== "conversation" || host.destroyed) return
  const plan = planSeal(host.doc, host.name.id, history.sealing)
  if (!plan) return
  try {
    await history.store.put(host.key, {
      index: plan.segment.index,
      from: plan.segment.from,
      to: plan.segment.to,
      hash: plan.summary.hash,
      bytes: plan.bytes,
    })
  } catch (error) {
    ctx.log.error({ err: error, doc: host.key }, "sealing failed: the live document keeps its messages")
    return
  }
  const { entries, positions, events, caughtUp } = await applyAndStore(ctx, host, () => {
    const update = captureUpdate(host.doc, () => applySeal(host.doc, plan, RELAY_ORIGIN))
    return update ? { update, source: "relay" } : undefined
  })
  if (entries.length === 0) return
  ctx.log.debug(
    { doc: host.key, segment: plan.segment.index, from: plan.segment.from, to: plan.segment.to },
    "sealed history",
  )
  broadcast(host, encodeSyncUpdate(entries[0]!.update), undefined, caughtUp)
  // A seal numbers nothing: a `messages.sequenced` here is the rest of a record it cut (the same
  // numbers again), no news for the hooks.
  const news = events.filter((e) => e.type !== "messages.sequenced")
  if (news.length > 0)
    ctx.extensions.afterSaved({ name: host.key, doc: host.doc, actor: RELAY, positions, events: news })
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
async function startNewEpoch(ctx: PathContext, host: DocumentHost): Promise<void> {
  if (!ctx.restart || host.destroyed || host.hasUnsaved || sealedThrough(host.doc) === 0) return
  try {
    if ((await ctx.extensions.compactionLimit(host.key)) < host.lastPosition) return
    const fresh = startEpoch(host.doc)
    const clientIds = host.doc.store.clients.size
    await ctx.storage.compact(host.key, Y.encodeStateAsUpdate(fresh), host.lastPosition)
    fresh.destroy()
    ctx.restart(host, `started a fresh epoch of the live document (${clientIds} client ids → 1)`)
  } catch (error) {
    // Storage still holds the old epoch (compaction is atomic): it stays loaded and in use.
    ctx.log.error({ err: error, doc: host.key }, "could not start a fresh epoch")
  }
}

/** Folds the document's log into a snapshot. Call inside the document's queue. */
export async function compact(ctx: PathContext, host: DocumentHost): Promise<void> {
  if (host.logSinceSnapshot.entries === 0) return
  try {
    // The snapshot holds everything applied, so compact only once nothing newer waits for its events.
    if ((await ctx.extensions.compactionLimit(host.key)) < host.lastPosition) return
    await ctx.storage.compact(host.key, Y.encodeStateAsUpdate(host.doc), host.lastPosition)
    host.compacted()
    ctx.metrics.compactions.inc()
  } catch (error) {
    // The log still holds everything; compaction is retried after the next change.
    ctx.log.error({ err: error, doc: host.key }, "compaction failed")
  }
}

/**
 * THE update path for an update from a connection (sync step 2 or update):
 * size and decodability → policy → apply in memory and sequence, shown to
 * nobody → one durable append of both → broadcast → "saved" to the sender →
 * the extensions' observers. Serial per document. Throws a ParleyError (nothing stored) when
 * the update is refused.
 */
export function submitUpdate(
  ctx: PathContext,
  host: DocumentHost,
  principal: Principal,
  update: Uint8Array,
  from?: Connection,
): Promise<number[]> {
  // Fail fast: behind a change that waits for storage, this one would wait as long.
  if (waitingForStorage.has(host)) {
    try {
      refuseWhileStorageFails(ctx, host)
    } catch (error) {
      return Promise.reject(error)
    }
  }
  return host.enqueue(async () => {
    if (host.destroyed) throw new ParleyError(ErrorCode.UNAVAILABLE, "the document was unloaded")
    if (update.length > ctx.limits.maxUpdateBytes)
      throw new ParleyError(ErrorCode.TOO_LARGE, `updates are limited to ${ctx.limits.maxUpdateBytes} bytes`)
    // What Yjs would spend on it is bounded before anything decodes it into objects.
    const cost = checkUpdateCost(host.doc, update, ctx.limits)
    const inspected = inspectUpdate(host.doc, update)
    let clientIds = inspected.clientIds
    if (inspected.noop) {
      // Typically a reconnecting client's sync step 2: it learns everything that is durable,
      // unless its access is not known yet: then only what its own update holds.
      if (from?.pending) from.savedOwn(inspected.ends)
      else from?.saved()
      return []
    }
    refuseWhileStorageFails(ctx, host)
    // Checked before the policy binds the new ids to the user, taken once it accepted them.
    const user = principal.kind === "user" ? principal.user : undefined
    const newIds = cost.newClientIds.length
    if (user && ctx.clientIds && !ctx.clientIds.allows(host.key, user, newIds))
      throw new ParleyError(
        ErrorCode.RATE_LIMITED,
        "too many new client ids from this user in this document",
        {
          rule: CostRule.clientIdGrowth,
        },
      )
    // A client re-sending pending work may include some the document has by now: store only the rest.
    const fresh = withoutKnownStructs(update, inspected.known)
    if (fresh !== update) {
      update = fresh
      clientIds = clientIdsOf(update)
    }
    const input = { name: host.name, doc: host.doc, update, principal, clientIds }
    // Read-only access holds whatever policy is plugged in; the extensions' policy adds the document rules.
    let decision = await membershipPolicy.checkUpdate(input)
    if (decision.allowed) decision = await ctx.extensions.checkUpdate(input)
    // An edit, reaction or deletion of a sealed message: the rules need the directory of sealed
    // messages, loaded only now (most conversations never touch their old messages).
    if (!decision.allowed && ctx.history && !ctx.history.hasDirectory(host.doc)) {
      await ctx.history.loadDirectory(host)
      decision = await membershipPolicy.checkUpdate(input)
      if (decision.allowed) decision = await ctx.extensions.checkUpdate(input)
    }
    if (!decision.allowed)
      throw new ParleyError(ErrorCode.FORBIDDEN, decision.reason, { rule: decision.rule })
    if (user) ctx.clientIds?.take(host.key, user, newIds)
    // After the rules (a refused update costs no budget), before anything changes: refused whole.
    if (ctx.users && principal.kind === "user" && host.name.kind === "conversation")
      ctx.users.chargeGrowth(principal, growthOf(host.doc, update, principal.user))
    const source = principal.kind === "relay" ? "relay" : "client"
    const { entries, positions, events, caughtUp } = await applyAndStore(
      ctx,
      host,
      () => {
        Y.applyUpdate(host.doc, update, from ?? principal)
        return { update, source }
      },
      from ? { from, clientIds } : {},
    )
    await ctx.extensions.updateStored({ name: host.name, doc: host.doc, principal, clientIds, decision })
    const sequencing = entries[1]?.update
    // The sender has its own update: it gets only the numbers; everyone else both, in one frame
    // when the update is small (a chat message: one frame per message to fan out). Merging
    // re-encodes every struct, so a large update (an offline device's backlog) goes as it came,
    // followed by its numbers.
    if (sequencing) {
      const frame = encodeSyncUpdate(sequencing)
      const both =
        update.length <= MERGE_FOR_BROADCAST_BYTES
          ? [encodeSyncUpdate(Y.mergeUpdates([update, sequencing]))]
          : [encodeSyncUpdate(update), frame]
      for (const connection of host.connections) {
        if (caughtUp.has(connection)) continue
        if (connection === from) connection.send(frame)
        else for (const f of both) connection.send(f)
      }
    } else {
      broadcast(host, encodeSyncUpdate(update), from, caughtUp)
    }
    // Still pending (a plugged-in policy let it write without creating the conversation): its own part only.
    if (from?.pending) from.savedOwn(inspected.ends)
    else from?.saved(clientIds)
    await finish(ctx, host, principal, positions, events)
    return positions
  })
}

/**
 * A trusted server-side change (hooks, bots) through the same path: `change`
 * runs against the live document (the shared operations check the rules for
 * the actor before writing), then what it wrote is stored, sequenced,
 * broadcast and given to the extensions' observers. Resolves with the log positions once durable.
 */
export function writeOnServer(
  ctx: PathContext,
  host: DocumentHost,
  actor: Principal,
  change: (doc: Y.Doc) => void,
): Promise<number[]> {
  return host.enqueue(async () => {
    if (host.destroyed) throw new ParleyError(ErrorCode.UNAVAILABLE, "the document was unloaded")
    refuseWhileStorageFails(ctx, host)
    let failure: unknown
    const relayClientId = host.doc.clientID
    const { entries, positions, events, caughtUp } = await applyAndStore(ctx, host, () => {
      // Each actor writes under client ids of its own, never the relay's (a policy binds ids to writers).
      if (actor.kind !== "relay") host.doc.clientID = host.clientIdFor(actor)
      const update = captureUpdate(host.doc, () => {
        try {
          host.doc.transact(() => change(host.doc), actor)
        } catch (error) {
          // What was written before the throw is in memory, so it is stored too.
          failure = error
        } finally {
          if (actor.kind !== "relay") host.doc.clientID = relayClientId
        }
      })
      return update ? { update, source: "server" } : undefined
    })
    if (entries.length > 0) {
      await ctx.extensions.updateStored({
        name: host.name,
        doc: host.doc,
        principal: actor,
        clientIds: clientIdsOf(entries[0]!.update),
      })
      const merged = entries.length === 1 ? entries[0]!.update : Y.mergeUpdates(entries.map((e) => e.update))
      broadcast(host, encodeSyncUpdate(merged), undefined, caughtUp)
      await finish(ctx, host, actor, positions, events)
    }
    if (failure !== undefined) throw failure
    return positions
  })
}

/** Sequences every message left unsequenced (after a crash between storing an update and sequencing it). */
export function sequenceLeftovers(ctx: PathContext, host: DocumentHost): Promise<number[]> {
  return host.enqueue(async () => {
    const { entries, positions, events, caughtUp } = await applyAndStore(ctx, host, () => undefined, {
      sequenceLeftovers: true,
    })
    if (entries.length > 0) {
      ctx.log.info({ doc: host.key, positions }, "sequenced messages left unsequenced")
      broadcast(host, encodeSyncUpdate(entries[0]!.update), undefined, caughtUp)
      await finish(ctx, host, RELAY, positions, events)
    } else if (host.name.kind === "conversation" && holdsPurgeableContent(host.doc)) {
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
