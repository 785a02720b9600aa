import {
  type ChangeEvent,
  ErrorCode,
  encodeSaved,
  type MessageId,
  MessageType,
  ParleyError,
  unsequencedMessages,
  writeSequenceNumbers,
} from "@parley/shared"
import * as encoding from "lib0/encoding"
import * as syncProtocol from "y-protocols/sync"
import * as Y from "yjs"
import type { Connection } from "./connection.js"
import type { DocumentHost } from "./document-host.js"
import type { Logger } from "./log.js"
import type { RelayMetrics } from "./metrics.js"
import { membershipPolicy, type UpdatePolicy } from "./policy.js"
import { type Principal, RELAY } from "./principal.js"
import type { Sequencer } from "./sequencer.js"
import type { RelayStorage } from "./storage/types.js"
import { inspectUpdate } from "./yjs-updates.js"

/** A change that is saved (durable, applied, broadcast), as listeners receive it. */
export interface AfterSaved {
  /** The document's name as in the URL (`g~...`, `inbox~alice`). */
  readonly name: string
  readonly doc: Y.Doc
  /** Who made the change (the sequencing that followed it is the relay's, and included). */
  readonly actor: Principal
  /** Log positions of everything stored for it. */
  readonly positions: readonly number[]
  /** What changed, including `messages.sequenced` from the relay's own change. */
  readonly events: readonly ChangeEvent[]
}

/**
 * Called after every saved change, in order per document. Never awaited by
 * the sender's acknowledgement; a listener that throws is logged and skipped.
 */
export interface AfterSavedListener {
  afterSaved(change: AfterSaved): void
}

/** Limits the update path enforces. */
export interface PathLimits {
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
  readonly policy: UpdatePolicy
  readonly listeners: readonly AfterSavedListener[]
  readonly metrics: RelayMetrics
  readonly log: Logger
  readonly limits: PathLimits
  /** Re-checks who may stay connected after participants changed. */
  recheckAccess(host: DocumentHost): void
  /** The document's memory may no longer match its storage: drop it. */
  evict(host: DocumentHost, error: unknown): void
  /** Highest log position compaction may fold into a snapshot (hooks: entries whose events are recorded). */
  compactionLimit?(name: string): Promise<number>
}

/** Transaction origin of the relay's own writes. */
export const RELAY_ORIGIN = Symbol("parley-relay")

/** Encodes a sync "update" frame. */
export function syncUpdateFrame(update: Uint8Array): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.sync)
  syncProtocol.writeUpdate(encoder, update)
  return encoding.toUint8Array(encoder)
}

function broadcast(host: DocumentHost, frame: Uint8Array, except?: Connection): void {
  for (const connection of host.connections) if (connection !== except) connection.send(frame)
}

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

async function persist(
  ctx: PathContext,
  host: DocumentHost,
  updates: Uint8Array[],
  source: "client" | "relay" | "server",
): Promise<number[]> {
  const stop = ctx.metrics.persistence.startTimer()
  const positions = await ctx.storage.append(host.key, updates)
  stop()
  const bytes = updates.reduce((sum, u) => sum + u.length, 0)
  ctx.metrics.updates.inc({ source }, updates.length)
  ctx.metrics.updateBytes.inc(bytes)
  host.logEntries += updates.length
  host.logBytes += bytes
  host.lastPosition = Math.max(host.lastPosition, ...positions)
  return positions
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
 * all), as the relay's own change: stored, then broadcast to every connection.
 */
async function sequence(
  ctx: PathContext,
  host: DocumentHost,
  candidates: readonly MessageId[] | undefined,
): Promise<number[]> {
  if (host.name.kind !== "conversation") return []
  if (candidates && candidates.length === 0) return []
  const ids = unsequencedMessages(host.doc, candidates)
  if (ids.length === 0) return []
  const from = await ctx.sequencer.reserve(host.name.id, ids.length)
  const update = captureUpdate(host.doc, () => writeSequenceNumbers(host.doc, from, ids, RELAY_ORIGIN))
  if (!update) return []
  const positions = await persist(ctx, host, [update], "relay")
  await ctx.policy.stored?.({
    name: host.name,
    doc: host.doc,
    principal: RELAY,
    clientIds: clientIdsOf(update),
  })
  broadcast(host, syncUpdateFrame(update))
  return positions
}

/** After a change is stored, applied and broadcast: access, listeners, compaction. */
async function finish(
  ctx: PathContext,
  host: DocumentHost,
  actor: Principal,
  positions: number[],
  events: ChangeEvent[],
): Promise<void> {
  if (events.some((e) => e.type === "participants.removed" || e.type === "conversation.created")) {
    ctx.recheckAccess(host)
  }
  if (events.length > 0 || positions.length > 0) {
    const change: AfterSaved = { name: host.key, doc: host.doc, actor, positions, events }
    for (const listener of ctx.listeners) {
      try {
        listener.afterSaved(change)
      } catch (error) {
        ctx.log.error({ err: error, doc: host.key }, "afterSaved listener failed")
      }
    }
  }
  if (host.logEntries >= ctx.limits.compactAfterUpdates || host.logBytes >= ctx.limits.compactAfterBytes) {
    await compact(ctx, host)
  }
}

/** Folds the document's log into a snapshot. Call inside the document's queue. */
export async function compact(ctx: PathContext, host: DocumentHost): Promise<void> {
  if (host.logEntries === 0) return
  try {
    // The snapshot holds everything applied, so compact only once nothing newer waits for its events.
    if (ctx.compactionLimit && (await ctx.compactionLimit(host.key)) < host.lastPosition) return
    await ctx.storage.compact(host.key, Y.encodeStateAsUpdate(host.doc), host.lastPosition)
    host.logEntries = 0
    host.logBytes = 0
    ctx.metrics.compactions.inc()
  } catch (error) {
    // The log still holds everything; compaction is retried after the next change.
    ctx.log.error({ err: error, doc: host.key }, "compaction failed")
  }
}

/**
 * THE update path for an update from a connection (sync step 2 or update):
 * size and decodability → policy → durable append → apply → sequence →
 * broadcast → "saved" to the sender → listeners. Serial per document. Throws a
 * ParleyError (nothing stored) when the update is refused.
 */
export function submitUpdate(
  ctx: PathContext,
  host: DocumentHost,
  principal: Principal,
  update: Uint8Array,
  from?: Connection,
): Promise<number[]> {
  return host.enqueue(async () => {
    if (host.destroyed) throw new ParleyError(ErrorCode.UNAVAILABLE, "the document was unloaded")
    if (update.length > ctx.limits.maxUpdateBytes)
      throw new ParleyError(ErrorCode.TOO_LARGE, `updates are limited to ${ctx.limits.maxUpdateBytes} bytes`)
    const { clientIds, noop } = inspectUpdate(host.doc, update)
    if (noop) {
      from?.saved()
      return []
    }
    const input = { name: host.name, doc: host.doc, update, principal, clientIds }
    // Read-only access holds whatever policy is plugged in; the plugged-in one adds the document rules.
    let decision = await membershipPolicy.check(input)
    if (decision.allowed && ctx.policy !== membershipPolicy) decision = await ctx.policy.check(input)
    if (!decision.allowed)
      throw new ParleyError(ErrorCode.FORBIDDEN, decision.reason, { rule: decision.rule })
    const positions = await persist(ctx, host, [update], principal.kind === "relay" ? "relay" : "client")
    let events: ChangeEvent[]
    const all = [...positions]
    try {
      await ctx.policy.stored?.({ name: host.name, doc: host.doc, principal, clientIds, decision })
      Y.applyUpdate(host.doc, update, from ?? principal)
      events = host.takeEvents()
      broadcast(host, syncUpdateFrame(update), from)
      all.push(...(await sequence(ctx, host, messageIdsIn(events))))
      events.push(...host.takeEvents())
    } catch (error) {
      ctx.evict(host, error)
      throw new ParleyError(ErrorCode.INTERNAL, "the relay failed to apply a stored update", { cause: error })
    }
    from?.saved()
    await finish(ctx, host, principal, all, events)
    return all
  })
}

/**
 * A trusted server-side change (hooks, bots) through the same path: `change`
 * runs against the live document (the shared operations check the rules for
 * the actor before writing), then what it wrote is stored, sequenced,
 * broadcast and given to listeners. Resolves with the log positions once durable.
 */
export function writeOnServer(
  ctx: PathContext,
  host: DocumentHost,
  actor: Principal,
  change: (doc: Y.Doc) => void,
): Promise<number[]> {
  return host.enqueue(async () => {
    if (host.destroyed) throw new ParleyError(ErrorCode.UNAVAILABLE, "the document was unloaded")
    let failure: unknown
    const relayClientId = host.doc.clientID
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
    const all: number[] = []
    if (update) {
      try {
        all.push(...(await persist(ctx, host, [update], "server")))
        await ctx.policy.stored?.({
          name: host.name,
          doc: host.doc,
          principal: actor,
          clientIds: clientIdsOf(update),
        })
        const events = host.takeEvents()
        broadcast(host, syncUpdateFrame(update))
        all.push(...(await sequence(ctx, host, messageIdsIn(events))))
        events.push(...host.takeEvents())
        await finish(ctx, host, actor, all, events)
      } catch (error) {
        ctx.evict(host, error)
        throw error
      }
    }
    if (failure !== undefined) throw failure
    return all
  })
}

/** Sequences every message left unsequenced (after a crash between storing an update and sequencing it). */
export function sequenceLeftovers(ctx: PathContext, host: DocumentHost): Promise<number[]> {
  return host.enqueue(async () => {
    const positions = await sequence(ctx, host, undefined)
    if (positions.length > 0) {
      ctx.log.info({ doc: host.key, positions }, "sequenced messages left unsequenced")
      await finish(ctx, host, RELAY, positions, host.takeEvents())
    }
    return positions
  })
}

function clientIdsOf(update: Uint8Array): Set<number> {
  return new Set(Y.decodeUpdate(update).structs.map((struct) => struct.id.client))
}

/** Sends the "saved" acknowledgement with the document's current state vector. */
export const savedFrame = (host: DocumentHost): Uint8Array => encodeSaved(Y.encodeStateVector(host.doc))
