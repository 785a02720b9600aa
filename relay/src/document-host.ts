import { type ChangeEvent, type DocumentName, MessageType, observeChanges } from "@parley/shared"
import * as encoding from "lib0/encoding"
import * as awarenessProtocol from "y-protocols/awareness"
import * as syncProtocol from "y-protocols/sync"
import * as Y from "yjs"
import type { Connection } from "./connection.js"
import { describePrincipal, type Principal } from "./principal.js"

/**
 * One loaded document: its Y.Doc, awareness, connected sessions, the serial
 * queue every change goes through, and what compaction needs to know about the
 * stored log.
 */
export class DocumentHost {
  readonly doc = new Y.Doc()
  readonly awareness: awarenessProtocol.Awareness
  readonly connections = new Set<Connection>()
  /** Log entries and bytes stored since the last snapshot. */
  logEntries = 0
  logBytes = 0
  /** Highest log position stored and applied. */
  lastPosition = 0
  /** Set once an unload has begun: no new connection may attach. */
  unloading = false
  /** Set once the document is dropped from memory. */
  destroyed = false
  idleTimer: NodeJS.Timeout | undefined
  private queue: Promise<unknown> = Promise.resolve()
  private pendingTasks = 0
  private coldJoin: Uint8Array | undefined
  private events: ChangeEvent[] = []
  private stopObserving: (() => void) | undefined

  constructor(
    readonly key: string,
    readonly name: DocumentName,
  ) {
    this.awareness = new awarenessProtocol.Awareness(this.doc)
    // The relay itself has no presence.
    this.awareness.setLocalState(null)
    this.doc.on("update", () => {
      this.coldJoin = undefined
    })
  }

  /** Starts collecting change events (after the stored state is applied, so loading emits none). */
  observe(): void {
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
    const run = this.queue.then(task).finally(() => {
      this.pendingTasks--
    })
    this.queue = run.catch(() => {})
    return run
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
    if (!this.coldJoin) {
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, MessageType.sync)
      syncProtocol.writeSyncStep2(encoder, this.doc)
      this.coldJoin = encoding.toUint8Array(encoder)
    }
    return this.coldJoin
  }

  private readonly actorClientIds = new Map<string, number>()

  /** The Yjs client id server-side writes of `actor` use in this document (one per actor and load). */
  clientIdFor(actor: Principal): number {
    const key = describePrincipal(actor)
    let id = this.actorClientIds.get(key)
    if (id === undefined) {
      id = crypto.getRandomValues(new Uint32Array(1))[0]!
      this.actorClientIds.set(key, id)
    }
    return id
  }

  destroy(): void {
    this.destroyed = true
    clearTimeout(this.idleTimer)
    this.stopObserving?.()
    this.awareness.destroy()
    this.doc.destroy()
  }
}
