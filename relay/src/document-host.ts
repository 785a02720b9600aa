import { type ChangeEvent, type DocumentName, encodeSyncStep2, observeChanges } from "@parley/shared"
import * as awarenessProtocol from "y-protocols/awareness"
import * as Y from "yjs"
import type { Connection, ConnectionHost } from "./connection.js"
import { describePrincipal, type Principal } from "./principal.js"
import { RELAY_DOC_OPTIONS } from "./replica-view.js"

/** A connection attached to a {@link DocumentHost}. */
export type HostedConnection = Connection<DocumentHost>

/** What the stored log holds beyond the last snapshot, as a {@link DocumentHost} counts it. */
export interface LogFigures {
  /** Log entries stored since the last snapshot. */
  readonly entries: number
  /** Their bytes. */
  readonly bytes: number
}

/**
 * One loaded document: its Y.Doc, awareness, connected sessions, the serial
 * queue every change goes through, and what compaction needs to know about the
 * stored log. Its state changes only through its methods, each of which keeps
 * it consistent (the log figures move together; an unloading or destroyed
 * host holds no idle timer).
 */
/**
 * Writes the relay made to a document and sent to its connections without
 * applying them to the document yet (see {@link DocumentHost.deferred}).
 */
export interface DeferredWrites {
  /** Bytes held, for the bound on what waits. */
  readonly bytes: number
  /** Applies the writes to `doc` (the document as it is), in one transaction. */
  apply(doc: Y.Doc): void
}

/** Bytes of deferred writes one document holds before they are applied (about twenty inbox entries). */
const MAX_DEFERRED_BYTES = 8 * 1024

export class DocumentHost implements ConnectionHost {
  private readonly ydoc = new Y.Doc(RELAY_DOC_OPTIONS)
  private pendingWrites: DeferredWrites | undefined
  /** Created on first use (see {@link awareness}). */
  private presence: awarenessProtocol.Awareness | undefined
  /** Sets up what follows the awareness once it exists (the core's gate and fan-out). */
  private wirePresence: (() => void) | undefined
  private readonly attached = new Set<HostedConnection>()
  private log: LogFigures = { entries: 0, bytes: 0 }
  private position = 0
  private foldCount = 0
  private unloadBegun = false
  private dropped = false
  private idleTimer: NodeJS.Timeout | undefined
  private queue: Promise<unknown> = Promise.resolve()
  private pendingTasks = 0
  private enqueuedTasks = 0
  private coldJoin: Uint8Array | undefined
  private events: ChangeEvent[] = []
  private stopObserving: (() => void) | undefined

  /**
   * @param onDeferredFailure told when {@link deferred} writes no longer fit the
   *   document and are dropped (not expected: a log line for the operator).
   */
  constructor(
    readonly key: string,
    readonly name: DocumentName,
    private readonly onDeferredFailure?: (error: unknown) => void,
  ) {
    // After every transaction, not on "update": an "update" listener makes Yjs encode every
    // transaction's update, which the relay never needs here (it costs as much as the apply).
    this.ydoc.on("afterTransaction", () => {
      this.coldJoin = undefined
    })
  }

  /**
   * The document, with every deferred write applied first: whoever reads or
   * changes it sees the state its connections were sent.
   */
  get doc(): Y.Doc {
    if (this.pendingWrites !== undefined) this.applyDeferred()
    return this.ydoc
  }

  /**
   * The document without the {@link deferred} writes applied: only for the
   * writer that defers them, to encode its next write on top of them.
   */
  get docAsIs(): Y.Doc {
    return this.ydoc
  }

  /**
   * Writes sent to the connections and not yet applied: a message in a big
   * room changes each connected member's inbox entry, and a Yjs transaction
   * per member and message cost more than encoding the entry, so the entries
   * of successive messages wait here and are applied in one transaction when
   * anything next reads the document ({@link doc}), or once they hold
   * {@link MAX_DEFERRED_BYTES}. Setting it replaces what was deferred (the
   * writer's new state includes it).
   */
  get deferred(): DeferredWrites | undefined {
    return this.pendingWrites
  }

  set deferred(writes: DeferredWrites | undefined) {
    this.pendingWrites = writes
    // The document the cached frame holds is no longer what its connections were sent.
    this.coldJoin = undefined
    if (writes !== undefined && writes.bytes >= MAX_DEFERRED_BYTES) this.applyDeferred()
  }

  private applyDeferred(): void {
    const writes = this.pendingWrites
    this.pendingWrites = undefined
    try {
      writes?.apply(this.ydoc)
    } catch (error) {
      // Derived data that no longer fits the document (nothing writes it behind the writer's back, so
      // this is not expected): dropped rather than failing whoever reads the document; it is derived
      // again when its user next connects.
      this.onDeferredFailure?.(error)
    }
  }

  /**
   * The document's awareness (presence, typing), created the first time it is
   * read: an awareness is a few kilobytes and a 3-second timer, which most
   * loaded documents (every connected user's inbox, conversations open without
   * presence) never need. Read {@link awarenessIfAny} to look without creating it.
   */
  get awareness(): awarenessProtocol.Awareness {
    if (this.presence) return this.presence
    const awareness = new awarenessProtocol.Awareness(this.doc)
    // The relay itself has no presence.
    awareness.setLocalState(null)
    if (this.dropped) {
      // Asked for after the document was dropped: an empty one, with no timer left running.
      awareness.destroy()
      return awareness
    }
    this.presence = awareness
    this.wirePresence?.()
    return awareness
  }

  /** The awareness if it was created, without creating it (none: nobody is present). */
  get awarenessIfAny(): awarenessProtocol.Awareness | undefined {
    return this.presence
  }

  /** Calls `wire` when the awareness is created (now, if it already is). */
  whenAwareness(wire: () => void): void {
    this.wirePresence = wire
    if (this.presence) wire()
  }

  /** The connections attached to this document. */
  get connections(): ReadonlySet<HostedConnection> {
    return this.attached
  }

  /** Attaches `connection`; a document with a connection is not idle. */
  attach(connection: HostedConnection): void {
    this.cancelIdle()
    this.attached.add(connection)
  }

  /** Detaches `connection`; false when it was not attached. */
  detach(connection: HostedConnection): boolean {
    return this.attached.delete(connection)
  }

  /** Log entries and bytes stored since the last snapshot. */
  get logSinceSnapshot(): LogFigures {
    return this.log
  }

  /** Highest log position stored and applied. */
  get lastPosition(): number {
    return this.position
  }

  /** The stored state was just loaded: `log` follows the snapshot, up to `lastPosition`. */
  loaded(log: LogFigures, lastPosition: number): void {
    this.log = log
    this.position = lastPosition
  }

  /** `entries` updates of `bytes` bytes in all were appended to the log at `positions`. */
  recordAppend(entries: number, bytes: number, positions: readonly number[]): void {
    this.log = { entries: this.log.entries + entries, bytes: this.log.bytes + bytes }
    for (const position of positions) if (position > this.position) this.position = position
  }

  /**
   * The log was folded into a snapshot: up to {@link lastPosition}, or only its first `folded`
   * entries (a fold through an earlier position, whose snapshot was taken then: see `foldLater`).
   */
  compacted(folded?: LogFigures): void {
    this.log = folded
      ? {
          entries: Math.max(0, this.log.entries - folded.entries),
          bytes: Math.max(0, this.log.bytes - folded.bytes),
        }
      : { entries: 0, bytes: 0 }
    this.foldCount++
  }

  /**
   * How many times the log was folded (or replaced, a fresh epoch) while loaded: unchanged between
   * two reads means that the stored snapshot is still the one of the first read.
   */
  get folds(): number {
    return this.foldCount
  }

  /** Set once an unload has begun: no new connection may attach. */
  get unloading(): boolean {
    return this.unloadBegun
  }

  /** Set once the document is dropped from memory. */
  get destroyed(): boolean {
    return this.dropped
  }

  /** Begins unloading (idle, evicted or shutting down): no idle timer runs from now on. */
  beginUnload(): void {
    this.unloadBegun = true
    this.cancelIdle()
  }

  /**
   * Calls `onIdle` after `ms` unless a connection attaches or an unload
   * begins first; replaces any timer set before. Does nothing while
   * connections are attached or once an unload has begun.
   */
  whenIdle(ms: number, onIdle: () => void): void {
    if (this.attached.size > 0 || this.unloadBegun || this.dropped) return
    clearTimeout(this.idleTimer)
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined
      onIdle()
    }, ms)
    // An idle document must not keep a stopping process alive.
    this.idleTimer.unref()
  }

  private cancelIdle(): void {
    clearTimeout(this.idleTimer)
    this.idleTimer = undefined
  }

  /**
   * Starts collecting change events (after the stored state is applied, so
   * loading emits none). Only a conversation has any: an inbox holds entries
   * and mute flags, which the inbox policy keeps it to, and observing it would
   * create the nine conversation types in it (about 9 KB per loaded inbox).
   */
  observe(): void {
    if (this.name.kind !== "conversation") return
    this.stopObserving ??= observeChanges(this.doc, (events) => this.events.push(...events))
  }

  /** The events collected since the last call. */
  takeEvents(): ChangeEvent[] {
    const events = this.events
    this.events = []
    return events
  }

  /**
   * Runs `task` after every task queued before it: the one serial order of
   * changes to this document.
   */
  enqueue<T>(task: () => Promise<T>): Promise<T> {
    this.pendingTasks++
    this.enqueuedTasks++
    const run = this.queue.then(task).finally(() => {
      this.pendingTasks--
    })
    this.queue = run.catch(() => {})
    return run
  }

  /**
   * How many tasks were ever queued: unchanged between two reads means no
   * task was queued in between (an update batch may still take updates
   * without passing anything queued after it; see `update-batch.ts`).
   */
  get queuedSoFar(): number {
    return this.enqueuedTasks
  }

  /** True while a change is queued or running. */
  get busy(): boolean {
    return this.pendingTasks > 0
  }

  private unsaved: Promise<void> | undefined

  /**
   * Marks the document as holding a change applied in memory but not yet
   * durable, until the returned function is called. The update path applies a
   * change, sequences it and stores both in one commit; meanwhile nobody may
   * be shown that state (see {@link settled}).
   */
  holdUnsaved(): () => void {
    let release!: () => void
    const held = new Promise<void>((resolve) => {
      release = resolve
    })
    this.unsaved = held
    return () => {
      if (this.unsaved === held) this.unsaved = undefined
      release()
    }
  }

  /** True while a change is applied in memory but not yet durable. */
  get hasUnsaved(): boolean {
    return this.unsaved !== undefined
  }

  /**
   * Resolves when the document holds nothing unsaved. State read synchronously
   * right after is durable: what a joining client is sent never includes a
   * change a crash could still lose.
   */
  async settled(): Promise<void> {
    while (this.unsaved) await this.unsaved
  }

  /** Resolves once every task queued so far has finished. */
  drain(): Promise<void> {
    return this.enqueue(async () => {})
  }

  /**
   * The sync-step-2 frame holding the whole document, for clients joining with
   * an empty state vector. Encoded once and sent as is to every such joiner
   * until the document changes: on a large conversation the encoding and its
   * copies are most of a cold join's cost.
   */
  coldJoinFrame(): Uint8Array {
    this.coldJoin ??= encodeSyncStep2(Y.encodeStateAsUpdate(this.doc))
    return this.coldJoin
  }

  /**
   * The state vector a "saved" acknowledgement carries: the document's
   * durable state vector, whole or (for the acknowledgement of one update)
   * only the entries of `clientIds`, the clients that update wrote for. A
   * conversation gains a client id with every device session, so the whole
   * vector grows to kilobytes; an update's acknowledgement needs only the
   * writer's own entries. Read it when nothing is unsaved.
   */
  savedStateVector(clientIds?: Iterable<number>): Uint8Array {
    if (!clientIds) return Y.encodeStateVector(this.doc)
    const entries = new Map<number, number>()
    for (const client of clientIds) entries.set(client, Y.getState(this.doc.store, client))
    return Y.encodeStateVector(entries)
  }

  /** Made on the first server-side write: most loaded documents get none. */
  private actorClientIds: Map<string, number> | undefined

  /** The Yjs client id server-side writes of `actor` use in this document (one per actor and load). */
  clientIdFor(actor: Principal): number {
    const key = describePrincipal(actor)
    this.actorClientIds ??= new Map()
    let id = this.actorClientIds.get(key)
    if (id === undefined) {
      id = crypto.getRandomValues(new Uint32Array(1))[0]!
      this.actorClientIds.set(key, id)
    }
    return id
  }

  /**
   * Makes {@link clientIdFor} draw a new id for `actor`: after a write under
   * the old one that the owner may have stored without this replica holding
   * it, a next write from this replica would reuse its items' ids (and the
   * owner would skip them as already known).
   */
  retireClientIdFor(actor: Principal): void {
    this.actorClientIds?.delete(describePrincipal(actor))
  }

  /** Drops the document from memory. */
  destroy(): void {
    this.dropped = true
    this.cancelIdle()
    this.stopObserving?.()
    this.presence?.destroy()
    this.wirePresence = undefined
    // What was deferred is derived data: derived again when its user next connects.
    this.pendingWrites = undefined
    this.ydoc.destroy()
  }
}
