import type { IncomingMessage, ServerResponse } from "node:http"
import type { ChangeEvent, Decision, DocumentName, MessageId, UserId } from "@parley/shared"
import type * as Y from "yjs"
import type { DeferTarget } from "./deferred-change.js"
import type { HistoryKeeper } from "./history/keeper.js"
import type { DeliveryHolds } from "./hooks/dispatcher.js"
import type { EventLogReader } from "./hooks/event-log.js"
import type { HookEvent } from "./hooks/events.js"
import type { Logger } from "./log.js"
import type { Principal } from "./principal.js"
import type { PurgedContent } from "./purge/redact.js"
import type { ReplicaView } from "./replica-view.js"
import type { UserLedger } from "./user-limits.js"

/** What the update path asks a policy about, before anything is stored. */
export interface PolicyInput {
  /** The document, parsed. */
  readonly name: DocumentName
  /** The document as loaded, before the update. */
  readonly doc: Y.Doc
  /** The update (Yjs v1 encoding); already known to decode. */
  readonly update: Uint8Array
  /** Who sent it. */
  readonly principal: Principal
  /** The Yjs client ids that wrote the structs in the update. */
  readonly clientIds: ReadonlySet<number>
  /**
   * What the sender's replica had seen, from the frame the update came in (a
   * sync update or a sync step 2 and the request before it); absent for the
   * relay's and its API's own writes. The document rules use it to tell a
   * removal from a delete set re-sent on reconnect.
   */
  readonly seen?: ReplicaView
}

/** Who owns each Yjs client id of one loaded document (see {@link RelayExtension.clientIdOwners}). */
export interface ClientIdOwners {
  /** The principal key (`user:<id>`, `service:<subject>`, `relay`) owning `clientId`, if any. */
  owner(clientId: number): string | undefined
  /**
   * Binds `clientId`, which has no owner here, to `key`, durably by the time the
   * promise resolves, with the id's owner: `key`, or whoever bound it first
   * where this relay did not see it (another relay of a cluster). `owner`
   * answers that from then on.
   */
  claim(clientId: number, key: string): Promise<string>
}

/** A change that was stored, as {@link RelayExtension.updateStored} receives it. */
export interface StoredChange {
  readonly name: DocumentName
  readonly doc: Y.Doc
  readonly principal: Principal
  readonly clientIds: ReadonlySet<number>
  /** For a client update: what the policy decided. */
  readonly decision?: Decision
}

/** How a {@link RunningCore.write} is made. */
export interface ServerWriteOptions {
  /**
   * Every check the change makes is one the rules make again where it is
   * ordered (a message under an id of its own: the writer a participant, the
   * id not taken): in a cluster, a relay that does not order the document
   * forwards it without holding it to the state its copy was made from, so
   * that the other changes of a busy conversation do not make it be made
   * again and again (before: API sends through such a relay answered 503
   * "the document changed while this write was made, 8 times" at ten
   * messages a second, an outside probe). A conflict its checks missed is
   * refused by the rules instead.
   */
  readonly checkedByRules?: boolean
}

/**
 * What an extension may do with the running core (`RelayCore` implements it):
 * read a document, and write through the one update path.
 */
export interface RunningCore {
  /**
   * Reads a document's current state (loading it if needed); `read` must not write.
   * A read waits behind the document's queued changes; while one of them waits in
   * memory for storage that is failing, that can be until storage is back, unless
   * `failFast` is set: then it rejects at once with the retryable STORAGE_UNAVAILABLE
   * (what an HTTP request wants, rather than no answer).
   */
  read<T>(name: string, read: (doc: Y.Doc) => T, options?: { readonly failFast?: boolean }): Promise<T>
  /** Runs `change` on the document as `actor`, then checks, saves, sequences and broadcasts what it wrote. */
  write(
    name: string,
    actor: Principal,
    change: (doc: Y.Doc) => void,
    options?: ServerWriteOptions,
  ): Promise<void>
  /**
   * Writes data the relay derives from other documents (and can derive again)
   * to a document someone is connected to: broadcast at once, stored only
   * when it unloads. Resolves false, writing nothing, when nobody is connected.
   * With `encodes`, `change` runs its own transaction (with the `origin` it
   * is given) and returns that transaction's update, or undefined when it
   * wrote nothing, sparing Yjs's generic encoding of it.
   */
  derive(
    name: string,
    change: (doc: Y.Doc, origin: unknown) => unknown,
    options?: { readonly encodes?: boolean },
  ): Promise<boolean>
  /**
   * Like {@link derive}, for writes to many documents at once (a change's
   * connected members' inboxes) that each encode their update without a
   * transaction and leave applying it to the document for later, together
   * with the writes after it (see `DeferringChange`): `change(index, target,
   * origin)` runs for each of `names` that is loaded with someone connected
   * (the others are skipped: derived when they connect) and returns its
   * frame, then every frame is sent, back to back. No promise per document:
   * `failed(index)` is told of a change that threw.
   */
  deriveDeferredEach(
    names: readonly string[],
    change: (index: number, target: DeferTarget, origin: unknown) => Uint8Array | undefined,
    failed: (index: number) => void,
  ): void
  /**
   * Makes the document's sealed history tell for certain whether it holds
   * `ids` (reading a segment only when its id filter says it may): before a
   * server-side write of messages with given ids, so that `getMessage` and
   * `sendMessage` find a sealed one rather than write a second message
   * under its id. Does nothing when the core does not seal. What it reads
   * is bounded like a change's (RATE_LIMITED beyond) and paid for by
   * `principal` when that is a user.
   */
  settleSealedIds?(name: string, ids: readonly MessageId[], principal?: Principal): Promise<void>
  /** Whether someone is connected to the document now. */
  isConnected(name: string): boolean
  /** Whether the document is in this relay's memory now (loaded, or unloading). */
  isLoaded?(name: string): boolean
  /**
   * Stores what was derived for a loaded document and folds its log into a
   * snapshot now, whatever the log's size: a purge (the relay's documents
   * collect garbage, so the snapshot holds no deleted content), then scrubs
   * storage of the old pages (see {@link scrub}) unless `options.scrub` is
   * false: a pass that compacts many documents scrubs once, after the last.
   * Does nothing for a document that is not loaded.
   */
  compact?(name: string, options?: { readonly scrub?: boolean }): Promise<void>
  /**
   * Has storage drop the old copies of what purges overwrote (SQLite: its
   * write-ahead log checkpointed and truncated), when it keeps a purge.
   */
  scrub?(): Promise<void>
  /**
   * Removes what the hook events of conversation `name` say of `user` beyond
   * their messages (an erasure): the display name and picture they carry, in
   * the stored events (outbox, event log) and in those waiting in memory on
   * every relay. Their messages are purged as any deleted message is.
   */
  forgetUser?(name: string, user: UserId): Promise<void>
  /**
   * Which of the documents `names` show one of the message ids `ids` in
   * their stored form (snapshot and log, not what is only in memory): a
   * purge passes over the documents that never stored a deleted message (a
   * big room's inboxes). The cost is a pass over their stored bytes, the
   * same for one id as for a thousand; none is decoded or loaded as a
   * document.
   */
  storedShowing?(names: readonly string[], ids: ReadonlySet<string>): Promise<ReadonlySet<string>>
  /**
   * The documents whose purge is owed, whose hook deliveries wait for it (see `PurgeHolds`): what a
   * delivery read or recorded before a deletion carries of the deleted content leaves the relay only
   * redacted.
   */
  readonly purgeHolds?: DeliveryHolds
  /**
   * Reads stored hook events (`read()`'s items: dead letters, a page of the outbox) as the relay
   * lets them out while purges are owed: a deleted message's or conversation's events without the
   * deleted content, from the acknowledgement of the deletion on, before its purge rewrote them
   * (see `OwedContent`). Absent: a core that purges nothing.
   */
  withholdOwed?<T extends { readonly event: HookEvent }>(read: () => Promise<T[]>): Promise<T[]>
  /**
   * The durable log of hook events (what `GET /v1/events` streams), when the
   * relay keeps one (`startRelay` always does; a bare core without it does not).
   * Its reads withhold what owed purges remove (see {@link withholdOwed}).
   */
  readonly events?: EventLogReader
  /**
   * Where the core keeps sealed history, when it seals: extensions read
   * sealed segments through it (the HTTP API's message listings).
   */
  readonly historyKeeper?: HistoryKeeper
  /**
   * The per-user limits across connections (the relay core's ledger), when
   * the core keeps them: HTTP routes that take users' own tokens spend their
   * request budget here ({@link UserLedger.admitRequest}).
   */
  readonly users?: UserLedger
}

/** A connection opened or closed, as {@link RelayExtension.connectionChanged} receives it. */
export interface ConnectionChange {
  readonly name: string
  readonly principal: Principal
  /** True when it opened (access granted), false when it closed. */
  readonly open: boolean
}

/** A change that is saved (durable, applied, broadcast), as {@link RelayExtension.afterSaved} receives it. */
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
  /**
   * How many of {@link events} each entry of {@link positions} brought, in
   * order: hook event ids are keyed by the entry holding the change, as a
   * recovery from the stored log derives them. Absent: all of them belong to
   * the first entry.
   */
  readonly counts?: readonly number[]
}

/** A loaded document, as {@link RelayExtension.clientIdOwners} is asked about it. */
export interface LoadedDocument {
  readonly name: DocumentName
  readonly doc: Y.Doc
}

/** A document's stored log, as {@link RelayExtension.loadStoredLog} receives it. */
export interface StoredLog {
  readonly name: string
  /** The document, holding its snapshot. */
  readonly doc: Y.Doc
  readonly updates: readonly { readonly position: number; readonly update: Uint8Array }[]
  /**
   * Read by a relay taking the document over from another (several relays), not loaded for its
   * clients: what the extension derives from the log may be finished in the background, in the
   * document's order, as long as the document's later changes come after it.
   */
  readonly takingOver?: boolean
  /**
   * Taking over: how far the document's hook events were recorded when this relay claimed it.
   * Events of log entries past it are derived even if the watermark has moved on since (a change
   * ordered here while the takeover was still reading the log recorded its own): only the claimant
   * records a document's events, so nothing else records those (see `recordingFence`).
   */
  readonly recordedThrough?: number
}

/** An awareness change of a user's connection, as {@link RelayExtension.awarenessChanged} receives it. */
export interface AwarenessChange {
  readonly name: string
  readonly doc: Y.Doc
  readonly user: UserId
  /** The new awareness state of one of the user's client ids. */
  readonly state: unknown
}

/** An HTTP request the transport offers to extensions before its own routes. */
export interface HttpRequest {
  readonly req: IncomingMessage
  readonly res: ServerResponse
}

/**
 * The relay's one extension seam: policies, hooks, inbox upkeep, metrics and
 * admin routes are extensions. Every hook is optional and takes one payload
 * object. Extensions run in the order of the list the core is given, every
 * hook alike (`stop` in reverse). There are two kinds of positions:
 *
 * - rejecting, inside the document's serial queue, before or while a change is
 *   stored: {@link checkUpdate} (a refusal or a throw refuses the update, and
 *   later extensions are not asked), {@link beforeAppend}, {@link updateStored}, {@link clientIdOwners},
 *   {@link loadStoredLog}, {@link compactionLimit}, {@link recorded}, {@link conversationPurged};
 * - observing, after the change is saved and acknowledged:
 *   {@link afterSaved}, {@link awarenessChanged}. They are never awaited; one
 *   that throws is logged and the next one still runs.
 *
 * The core calls {@link start} with itself once it exists, before it serves
 * anyone, so an extension never holds a core that is not there yet, and
 * {@link started} once every extension has started.
 */
export interface RelayExtension {
  /** Names the extension in logs. */
  readonly name?: string
  /** The core is running: keep it to read and write documents. Awaited, in order, before anyone connects. */
  start?(core: RunningCore): void | Promise<void>
  /** Decides whether an update may be stored (the policy). */
  checkUpdate?(input: PolicyInput): Decision | Promise<Decision>
  /** A change was stored (before it is broadcast); awaited inside the document's queue. */
  updateStored?(change: StoredChange): void | Promise<void>
  /**
   * A change is about to be appended to the document's log (a device's, or
   * one the relay made itself: sequence numbers, a seal, a purge, an epoch);
   * awaited inside the document's queue, before the append. Returns nothing
   * when there is nothing to do first (the usual: the append then awaits
   * nothing more). The policy stores here the bindings of the relay's own
   * client ids, which a load binds in memory only.
   */
  beforeAppend?(document: LoadedDocument): undefined | Promise<void>
  /**
   * Who owns the document's Yjs client ids, loaded once with it (awareness
   * consults and extends them); the first extension answering wins. Without
   * one, the core keeps awareness owners in memory for the loaded document.
   */
  clientIdOwners?(document: LoadedDocument): Promise<ClientIdOwners | undefined>
  /**
   * Applies the stored log entries to the document in place of the core (the
   * hooks re-derive events a crash lost). At most one extension may have it.
   */
  loadStoredLog?(log: StoredLog): Promise<void>
  /**
   * Several relays: this relay has just claimed the document (its lease and fencing token) and may
   * order its changes from now on, before its takeover read the stored log ({@link StoredLog.takingOver}).
   * Only the extension that has {@link loadStoredLog} is told: it may hold what it records of the
   * changes ordered meanwhile until the takeover's recovered work is in line before them. Returns
   * what the core calls once the takeover ended, done or given up (so that nothing stays held): a
   * takeover that fails is tried again while the relay holds the lease, the gate still closed.
   */
  claimed?(document: { readonly name: string }): () => void
  /**
   * Highest log position compaction may fold into a snapshot now; the lowest answer wins. Asked
   * inside the document's queue: answers at once, without waiting for work in flight (the hooks'
   * records of the latest changes), since every write to the document would wait with it. A
   * compaction that finds the log not yet folded that far folds later (see {@link recorded}).
   */
  compactionLimit?(document: { readonly name: string }): Promise<number>
  /**
   * Resolves once what the extension records of every change saved so far is recorded (the hooks'
   * events), or given up. Purges wait for it before they redact what was recorded, and a
   * compaction due meanwhile waits for it outside the document's queue.
   */
  recorded?(document: { readonly name: string }): Promise<void>
  /**
   * Several relays: this relay has just begun ordering the document (taken its
   * lease, caught up, recovered its events): resume the work owed for it.
   */
  tookOver?(document: { readonly name: string }): Promise<void>
  /**
   * A change was saved; called in order per document, never awaited. For a
   * device's update or a {@link RunningCore.write}, called while the
   * document's connections are held (their frames of the change written in
   * one go once every observer returned), so what an observer sends at once
   * to a socket one of them is on leaves in the same write; long synchronous
   * work here delays the change's frames.
   */
  afterSaved?(change: AfterSaved): void
  /**
   * A purge removed content of a conversation (a deleted conversation, deleted
   * or erased messages; relay README, "Deletion and erasure"): what the
   * extension holds of it in memory (hook events waiting for delivery,
   * notifications waiting for a device) must lose it too. Called inside the
   * document's queue before storage is purged, and again at each try of a
   * purge; never awaited. In a cluster, every relay's extensions are told
   * (the others over Redis, at most once: a relay that misses it while Redis
   * is away keeps what it held).
   */
  contentPurged?(purge: PurgedContent): void
  /**
   * A deleted conversation's purge is about to finish (its content is gone from the live document,
   * its segments and stored events; the log's fold into a snapshot comes next, last): drop what is
   * kept for the conversation only while it can be written to (the policy's client-id bindings).
   * Awaited inside the document's queue, in order; a throw fails the purge, which is tried again
   * (so this runs again, also after a relay stopped before the fold: a load finds the purge owed).
   */
  conversationPurged?(document: LoadedDocument): Promise<void>
  /** A user's connection set or changed an awareness state. */
  awarenessChanged?(change: AwarenessChange): void
  /** A connection to a document opened or closed; never awaited. */
  connectionChanged?(change: ConnectionChange): void
  /** Answers an HTTP request and resolves true, or resolves false to let the next route try. */
  httpRequest?(request: HttpRequest): Promise<boolean>
  /**
   * Every extension has started: background work that goes through the core
   * (loading documents) begins here, so that it sees every extension running.
   * Never awaited.
   */
  started?(): void
  /** The relay stops: after the core finished its last changes, before storage closes. */
  stop?(): void | Promise<void>
}

/** An extension with only {@link RelayExtension.afterSaved}: an observer of saved changes. */
export type AfterSavedListener = Required<Pick<RelayExtension, "afterSaved">> & RelayExtension

const ALLOW: Decision = { allowed: true }

/**
 * The core's list of extensions, running each hook over them with the
 * semantics {@link RelayExtension} documents.
 */
export class Extensions {
  private readonly list: readonly RelayExtension[]
  private readonly loader: RelayExtension | undefined
  /** Those with {@link RelayExtension.updateStored}: most relays have none, and a change then awaits nothing. */
  private readonly storedObservers: readonly RelayExtension[]
  /** Those with {@link RelayExtension.beforeAppend}. */
  private readonly appendObservers: readonly RelayExtension[]

  constructor(
    extensions: readonly RelayExtension[],
    private readonly log: Logger,
  ) {
    this.list = [...extensions]
    const loaders = this.list.filter((e) => e.loadStoredLog)
    if (loaders.length > 1)
      throw new Error(
        `only one extension may apply stored logs: ${loaders.map((e) => e.name ?? "unnamed").join(", ")}`,
      )
    this.loader = loaders[0]
    this.storedObservers = this.list.filter((e) => e.updateStored)
    this.appendObservers = this.list.filter((e) => e.beforeAppend)
  }

  /** True when an extension has {@link RelayExtension.updateStored} (else the update path skips the call). */
  get observeStored(): boolean {
    return this.storedObservers.length > 0
  }

  /** Starts every extension in order, each awaited, then tells each that all have started. */
  async start(core: RunningCore): Promise<void> {
    for (const extension of this.list) await extension.start?.(core)
    for (const extension of this.list) {
      try {
        extension.started?.()
      } catch (error) {
        this.log.error({ err: error, extension: extension.name }, "extension failed after start")
      }
    }
  }

  /** Stops every extension in reverse order; a failing one is logged and the others still stop. */
  async stop(): Promise<void> {
    for (const extension of [...this.list].reverse()) {
      try {
        await extension.stop?.()
      } catch (error) {
        this.log.error({ err: error, extension: extension.name }, "extension failed to stop")
      }
    }
  }

  /** The first refusal, or the last decision that allowed the update. */
  async checkUpdate(input: PolicyInput): Promise<Decision> {
    let decision = ALLOW
    for (const extension of this.list) {
      if (!extension.checkUpdate) continue
      decision = await extension.checkUpdate(input)
      if (!decision.allowed) return decision
    }
    return decision
  }

  async updateStored(change: StoredChange): Promise<void> {
    for (const extension of this.storedObservers) await extension.updateStored?.(change)
  }

  /** Runs every extension's {@link RelayExtension.beforeAppend}, in order; undefined when none had work. */
  beforeAppend(document: LoadedDocument): undefined | Promise<void> {
    const pending: Promise<void>[] = []
    for (const extension of this.appendObservers) {
      const work = extension.beforeAppend?.(document)
      if (work) pending.push(work)
    }
    if (pending.length === 0) return undefined
    return Promise.all(pending).then(() => undefined)
  }

  async clientIdOwners(document: LoadedDocument): Promise<ClientIdOwners | undefined> {
    for (const extension of this.list) {
      const owners = await extension.clientIdOwners?.(document)
      if (owners) return owners
    }
    return undefined
  }

  async conversationPurged(document: LoadedDocument): Promise<void> {
    for (const extension of this.list) await extension.conversationPurged?.(document)
  }

  /** Tells the extension that applies stored logs of a claim; returns what ends it (see `RelayExtension.claimed`). */
  claimed(name: string): () => void {
    return this.loader?.claimed?.({ name }) ?? (() => undefined)
  }

  /** Applies the stored log through the extension that has the hook; false when none has it. */
  async loadStoredLog(log: StoredLog): Promise<boolean> {
    if (!this.loader?.loadStoredLog) return false
    await this.loader.loadStoredLog(log)
    return true
  }

  async compactionLimit(name: string): Promise<number> {
    let limit = Number.POSITIVE_INFINITY
    for (const extension of this.list) {
      if (extension.compactionLimit) limit = Math.min(limit, await extension.compactionLimit({ name }))
    }
    return limit
  }

  async recorded(name: string): Promise<void> {
    for (const extension of this.list) await extension.recorded?.({ name })
  }

  async tookOver(name: string): Promise<void> {
    for (const extension of this.list) await extension.tookOver?.({ name })
  }

  /** Never throws: an observer that fails is logged and the next one runs. */
  afterSaved(change: AfterSaved): void {
    this.notify(change.name, "afterSaved", (extension) => extension.afterSaved?.(change))
  }

  /** Never throws, as {@link afterSaved}. */
  contentPurged(purge: PurgedContent): void {
    this.notify(purge.name, "contentPurged", (extension) => extension.contentPurged?.(purge))
  }

  /** Never throws, as {@link afterSaved}. */
  awarenessChanged(change: AwarenessChange): void {
    this.notify(change.name, "awarenessChanged", (extension) => extension.awarenessChanged?.(change))
  }

  /** Never throws, as {@link afterSaved}. */
  connectionChanged(change: ConnectionChange): void {
    this.notify(change.name, "connectionChanged", (extension) => extension.connectionChanged?.(change))
  }

  private notify(doc: string, hook: string, call: (extension: RelayExtension) => void): void {
    for (const extension of this.list) {
      try {
        call(extension)
      } catch (error) {
        this.log.error({ err: error, doc, extension: extension.name }, `${hook} hook failed`)
      }
    }
  }
}

/** The HTTP routes the extensions contribute, tried in order; true when one answered. */
export function extensionRoutes(
  extensions: readonly RelayExtension[],
): (req: IncomingMessage, res: ServerResponse) => Promise<boolean> {
  return async (req, res) => {
    for (const extension of extensions) if (await extension.httpRequest?.({ req, res })) return true
    return false
  }
}
