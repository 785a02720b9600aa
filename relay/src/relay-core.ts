import {
  CloseCode,
  type ConversationId,
  ErrorCode,
  encodeDirectoryPageFrame,
  encodeEpochRecordFrame,
  encodeHistoryPage,
  encodeSyncUpdate,
  epochCount,
  epochOf,
  foldedHistory,
  type HistoryPage,
  isRetryable,
  lastSequence,
  type MessageId,
  ParleyError,
  parseDocumentName,
  Rule,
  sealedHistory,
  sealedSegments,
  sealedThrough,
  toParleyError,
  typesOf,
  type UserId,
  unsequencedMessages,
} from "@parley/shared"
import { applyAwarenessUpdate, encodeAwarenessUpdate } from "y-protocols/awareness"
import * as Y from "yjs"
import { accessOf, outsiderOfDirect } from "./access.js"
import { AwarenessFanout } from "./awareness-fanout.js"
import { AwarenessGate, type AwarenessLimits, DEFAULT_AWARENESS_LIMITS } from "./awareness-gate.js"
import { ClientIdAllowance } from "./client-id-allowance.js"
import { type RoutedCore, STALE_COPY, type TakeoverClaim, type UpdateRouter } from "./cluster/router.js"
import type { WireEntry } from "./cluster/wire.js"
import { Connection, type ConnectionOwner, type Session } from "./connection.js"
import type { DeferTarget } from "./deferred-change.js"
import { DerivedWrites } from "./derived-write.js"
import { DocumentHost, type HostedConnection } from "./document-host.js"
import { closeOf } from "./errors.js"
import { Extensions, type RelayExtension, type RunningCore, type ServerWriteOptions } from "./extension.js"
import { HEAVY_FRAME_BYTES } from "./fair-share.js"
import { watchHeldSegments } from "./history/held-segments.js"
import type { HistoryKeeper } from "./history/keeper.js"
import { summaryOf } from "./history/sealing.js"
import type { StoredSegment } from "./history/store.js"
import type { EventLogReader } from "./hooks/event-log.js"
import type { HookEvent } from "./hooks/events.js"
import type { Logger } from "./log.js"
import { LogThrottle } from "./log-throttle.js"
import type { RelayMetrics } from "./metrics.js"
import { bindingBytes, ClientBindings, RELAY_KEY } from "./policy/client-bindings.js"
import type { ClientIdOwners } from "./policy.js"
import { describePrincipal, type Principal } from "./principal.js"
import type { ContentPurge } from "./purge/content-purge.js"
import { OwedContent } from "./purge/owed-content.js"
import { deletedInSnapshot, purgesOwed } from "./purge/owed-purges.js"
import { PurgeHolds } from "./purge/purge-holds.js"
import type { PurgedContent } from "./purge/redact.js"
import type { ReplicaView } from "./replica-view.js"
import { LocalSequencer, type Sequencer } from "./sequencer.js"
import { storedShowsId } from "./storage/holding.js"
import { applyStored, findDamage } from "./storage/integrity.js"
import type { RelayStorage } from "./storage/types.js"
import { DEFAULT_UPDATE_COST_LIMITS } from "./update-cost.js"
import {
  type AccessChange,
  adoptDuePurge,
  clearPurgesNotOwed,
  compact,
  equalBytes,
  notePurgesOwed,
  type PathContext,
  type PathLimits,
  purgeDue,
  refuseWhileStorageFails,
  releaseUnlessOwed,
  type StorageHealth,
  sealedReadsPaidBy,
  sequenceLeftovers,
  stockProviderSeen,
  submitUpdate,
  unlessHeld,
  writeOnServer,
} from "./update-path.js"
import { ANSWER_BASE_BYTES, DEFAULT_USER_LIMITS, UserLedger, type UserLimits } from "./user-limits.js"
import { UserTurns } from "./user-turns.js"

const EVICTED = Symbol("evicted")
/** Limits of the core. */
export interface CoreLimits extends PathLimits, AwarenessLimits, UserLimits {
  /** Unload a document this long after its last connection left. */
  readonly idleUnloadMs: number
  /** Most documents loaded at once; beyond, idle ones are unloaded or new ones refused (4503). */
  readonly maxDocuments: number
  /** Most update bytes one connection may have waiting in a document's queue; beyond, it is closed (4429). */
  readonly maxPendingBytes: number
}

/** Defaults of {@link CoreLimits}. */
export const DEFAULT_CORE_LIMITS: CoreLimits = {
  idleUnloadMs: 30_000,
  maxDocuments: 10_000,
  maxPendingBytes: 16 * 1024 * 1024,
  maxUpdateBytes: 1024 * 1024,
  compactAfterUpdates: 500,
  compactAfterBytes: 8 * 1024 * 1024,
  epochGarbageBytes: 32 * 1024,
  epochGarbageIntervalMs: 10 * 60_000,
  epochStockGraceMs: 5 * 60_000,
  purgeDelayMs: 100,
  ...DEFAULT_AWARENESS_LIMITS,
  ...DEFAULT_UPDATE_COST_LIMITS,
  ...DEFAULT_USER_LIMITS,
}

/** History requests one connection may have waiting at once. */
const HISTORY_REQUESTS_IN_FLIGHT = 4

/** Reads of a sealed page rewritten while it was read for a request, before it is answered NOT_FOUND. */
const PAGE_REREADS = 4
/** How often the relay checks whether it takes writes again, while clients refused for a failing dependency wait. */
const ASK_AGAIN_CHECK_MS = 250

/** Longest a refused connect keeps its document counted against the user (see `holdUntilUnloaded`). */
const REFUSED_HOLD_MS = 60_000
/** Most sealed segments a load holds for the read markers inside them (see `holdMarkerSegments`). */
const MARKER_SEGMENTS_HELD = 16
/** Most ids {@link RelayCore.storedShowing} has storage search for, one pass over the bytes each. */
const SEARCHED_IDS_MOST = 32

/** What the core is made of. */
export interface RelayCoreOptions {
  readonly storage: RelayStorage
  readonly log: Logger
  readonly metrics: RelayMetrics
  /** Defaults to a {@link LocalSequencer} over the loaded documents. */
  readonly sequencer?: Sequencer
  readonly limits?: Partial<CoreLimits>
  /**
   * The policy, hooks, inbox upkeep, metrics and admin routes, in the order
   * their hooks run (see {@link RelayExtension}). Each is started with the
   * core by {@link RelayCore.start} and stopped by {@link RelayCore.close}.
   */
  readonly extensions?: readonly RelayExtension[]
  /** The durable event log, offered to the extensions as {@link RunningCore.events}. */
  readonly events?: EventLogReader
  /**
   * Whether `storage` answers (the {@link StorageGuard} wrapping it): writes
   * then fail fast and retryably while it fails, and a change whose append
   * failed waits for it instead of evicting its document.
   */
  readonly storageHealth?: {
    readonly available: boolean
    whenAvailable(signal?: AbortSignal): Promise<void>
  }
  /** Sealed history (segments, when to seal); without it the live document keeps every message. */
  readonly history?: HistoryKeeper
  /**
   * Where each document's changes are ordered when several relays serve the
   * same documents (`cluster/`); without one, this core orders everything.
   */
  readonly router?: UpdateRouter
  /** The backend's part of purges (hook events, segments, free pages), when it has one. */
  readonly purge?: ContentPurge
}

/** Origin of changes and awareness that another relay made. */
const REMOTE_ORIGIN = Symbol("parley-remote-relay")

/**
 * The relay without sockets: loads documents on demand, attaches sessions,
 * runs every change through the update path, unloads idle documents. A
 * transport turns sockets into {@link Session}s and calls {@link connect}.
 */
export class RelayCore implements ConnectionOwner<DocumentHost>, RunningCore, RoutedCore {
  readonly limits: CoreLimits
  /** Per-user limits across connections (the transport counts sockets and send queues here too). */
  readonly users: UserLedger
  /** Refusals are logged at most once per kind and source per window (see LogThrottle). */
  readonly logThrottle = new LogThrottle()
  private readonly hosts = new Map<string, Promise<DocumentHost>>()
  private readonly unloads = new Map<string, Promise<void>>()
  /**
   * Documents found damaged, with why: refused without touching storage again.
   * Only an operator's restore (relay stopped) clears one, so it stays here for
   * the life of the process; it holds only names storage knows.
   */
  private readonly damaged = new Map<string, string>()
  /** Each connection's release of its document in the user's count. */
  private readonly openDocuments = new Map<Connection, () => void>()
  private readonly extensions: Extensions
  private readonly ctx: PathContext
  /**
   * The documents whose hook deliveries wait for their owed purges (see `PurgeHolds`). A single
   * relay with a durable store holds every document until its start has read which ones storage
   * records as owing one; a cluster's relays hold a document from its claim until its takeover
   * looked (the only way a relay comes to deliver a document's events); the memory backend
   * outlives no process.
   */
  readonly purgeHolds = new PurgeHolds()
  private closing = false
  /** Aborted when the relay stops: changes waiting for storage give up (they were never acknowledged). */
  private readonly stopping = new AbortController()
  /** Each loaded document's owned awareness. */
  private readonly gates = new Map<DocumentHost, AwarenessGate>()
  /** Connections refused for storage or Redis failing, asked again once writes are taken (see {@link askAgainOnceWritable}). */
  private readonly owedAsking = new Set<HostedConnection>()
  private askingTimer: ReturnType<typeof setInterval> | undefined
  /** Each loaded document's awareness broadcast (coalesced in large rooms). */
  private readonly fanouts = new Map<DocumentHost, AwarenessFanout>()
  private readonly derived = new DerivedWrites()
  /** One update of each user in flight at a time (see `user-turns.ts`). */
  private readonly turns = new UserTurns()

  /** What readers of stored hook events withhold while purges are owed (see `OwedContent`). */
  private readonly owedContent: OwedContent
  private withholdingLog: EventLogReader | undefined

  /** The durable event log, when the core was given one, as readers may see it (see {@link withholdOwed}). */
  get events(): EventLogReader | undefined {
    if (!this.options.events) return undefined
    this.withholdingLog ??= this.owedContent.reader(this.options.events)
    return this.withholdingLog
  }

  /** @internal */
  withholdOwed<T extends { readonly event: HookEvent }>(read: () => Promise<T[]>): Promise<T[]> {
    return this.owedContent.read(read)
  }

  /**
   * The documents that may owe a purge now. A single relay knows (see {@link purgeHolds}: held from
   * before a deleting change is stored until its purges are done) once its start read the durable
   * record; before that, and in a cluster (another relay, alive or dead, may owe one), the durable
   * record says, which every relay writes before it stores a deleting change.
   */
  private async owingPurges(): Promise<ReadonlySet<string>> {
    const owing = this.purgeHolds.documents()
    if (this.options.router || !this.purgeHolds.settled)
      for (const name of (await this.options.purge?.owed()) ?? []) owing.add(name)
    return owing
  }

  /** Sealed history, when the core seals. */
  get historyKeeper(): HistoryKeeper | undefined {
    return this.options.history
  }

  constructor(private readonly options: RelayCoreOptions) {
    this.limits = { ...DEFAULT_CORE_LIMITS, ...options.limits }
    this.owedContent = new OwedContent({
      owing: () => this.owingPurges(),
      load: (name) => options.storage.load(name),
      log: options.log,
    })
    this.extensions = new Extensions(options.extensions ?? [], options.log)
    this.users = new UserLedger(this.limits, undefined, (limit, user) => {
      options.metrics.userLimits.inc({ limit })
      const held = this.logThrottle.admit(`${limit}\u0000${user}`)
      if (held !== undefined)
        options.log.info(
          { user, limit, ...(held > 0 ? { alsoRefused: held } : {}) },
          "refused: per-user limit",
        )
    })
    options.metrics.countUsersWith(() => this.users.size)
    const sequencer =
      options.sequencer ?? new LocalSequencer((conversation) => this.lastSequenceOf(conversation))
    this.ctx = {
      storage: options.storage,
      sequencer,
      extensions: this.extensions,
      metrics: options.metrics,
      log: options.log,
      limits: this.limits,
      settleAccess: (host, change) => this.settleAccess(host, change),
      clientIds: new ClientIdAllowance(this.limits.maxUpdateClientIds, this.limits.clientIdsPerUserPerDay),
      users: this.users,
      evict: (host, error) => this.evict(host, error),
      restart: (host, reason) => this.restart(host, reason),
      unstoredSince: (host) => this.derived.unstoredSince(host),
      ...(options.storageHealth ? { storageHealth: this.storageHealthOf(options.storageHealth) } : {}),
      ...(options.history ? { history: options.history } : {}),
      ...(options.purge ? { purge: options.purge } : {}),
      ...(options.router?.purged ? { sharePurge: options.router.purged.bind(options.router) } : {}),
      purgeHolds: this.purgeHolds,
      ...(options.router?.epochStarted
        ? { shareEpoch: options.router.epochStarted.bind(options.router) }
        : {}),
      ...(options.router ? { orders: (name: string) => options.router!.owns(name) } : {}),
    }
    if (!options.purge || options.router) this.purgeHolds.settle([])
    options.router?.attach(this)
    options.metrics.awarenessSource = () => {
      let records = 0
      for (const gate of this.gates.values()) records += gate.records
      return records
    }
  }

  private storageHealthOf(health: NonNullable<RelayCoreOptions["storageHealth"]>): StorageHealth {
    const signal = this.stopping.signal
    return {
      get available() {
        return health.available
      },
      whenAvailable: () => health.whenAvailable(signal),
    }
  }

  private get log(): Logger {
    return this.options.log
  }

  /** @internal */
  get maxPendingBytes(): number {
    return this.limits.maxPendingBytes
  }

  /**
   * Starts the relay's work: recalls the documents found damaged before, then
   * starts every extension in order with this core. Call once, before anyone
   * connects (`startRelay` does).
   */
  async start(): Promise<void> {
    // Documents found damaged before are refused (and counted) from the start, before anyone connects.
    await this.recallDamaged().catch((error: unknown) =>
      this.log.error({ err: error }, "could not read the damaged documents from storage"),
    )
    // Before the hooks start delivering: the documents a killed relay left owing a purge hold their
    // deliveries (a retry due at once may carry a deleted message's text) until their purge is done.
    const owed = await this.readOwedPurges()
    await this.extensions.start(this)
    void this.sweepOwedPurges(owed)
  }

  /**
   * The documents storage records as possibly owing a purge (a single relay), held (see
   * {@link purgeHolds}); undefined when there is nothing to read or it could not be read (logged:
   * every document's deliveries wait until a later read succeeds).
   */
  private async readOwedPurges(): Promise<string[] | undefined> {
    const purge = this.ctx.purge
    if (!purge || this.options.router) return undefined
    try {
      const names = await purge.owed()
      this.purgeHolds.settle(names)
      return names
    } catch (error) {
      this.log.error(
        { err: error },
        "could not list the documents owing a purge: hook deliveries wait until it is read (trying again later)",
      )
      return undefined
    }
  }

  /**
   * Loads, a few at a time and in the background, the documents storage
   * records as possibly owing a purge (`ContentPurge.owe`): a relay killed
   * between storing a deletion and finishing its purge left the deleted text
   * stored, and nobody may open the conversation again. The load finds what
   * is owed (see `notePurgesOwed`) and the purge runs as usual; a document
   * that owes nothing has its record cleared. A failure is logged and the
   * sweep runs again later. With several relays, the cluster's sweep does
   * this for the documents no running relay orders (`Cluster.sweep`).
   */
  private async sweepOwedPurges(read?: string[]): Promise<void> {
    const purge = this.ctx.purge
    if (!purge || this.options.router || this.closing) return
    const names = read ?? (await this.readOwedPurges())
    if (!names) {
      this.sweepOwedPurgesLater()
      return
    }
    if (names.length === 0) return
    this.log.info({ documents: names.length }, "loading the documents whose purge may not have finished")
    let failed = 0
    const work = async () => {
      for (let name = names.shift(); name !== undefined && !this.closing; name = names.shift()) {
        try {
          await this.finishOwedPurges(name)
        } catch (error) {
          // A damaged document is refused until an operator restores it; loading it again cannot help.
          if (error instanceof ParleyError && error.code === ErrorCode.DAMAGED) continue
          failed++
          this.log.warn({ err: error, doc: name }, "could not load a document that may owe a purge")
        }
      }
    }
    await Promise.all([work(), work()])
    if (failed > 0) this.sweepOwedPurgesLater()
  }

  /** @internal */
  async finishOwedPurges(name: string): Promise<void> {
    const host = await this.activeHost(name)
    try {
      await clearPurgesNotOwed(this.ctx, host)
    } finally {
      this.scheduleIdle(host)
    }
  }

  /** @internal */
  async owedPurges(): Promise<readonly string[]> {
    return (await this.ctx.purge?.owed()) ?? []
  }

  private sweepOwedPurgesLater(): void {
    if (this.closing) return
    setTimeout(() => void this.sweepOwedPurges(), OWED_PURGES_RETRY_MS).unref()
  }

  /** Number of documents loaded (or loading). */
  get loadedDocuments(): number {
    return this.hosts.size
  }

  /**
   * Reads the documents storage records as damaged, so that they are refused
   * without being loaded and counted in `parley_damaged_documents` from the start.
   */
  async recallDamaged(): Promise<void> {
    for (const { name, reason } of await this.options.storage.damaged()) this.damaged.set(name, reason)
    this.options.metrics.damagedDocuments.set(this.damaged.size)
  }

  /**
   * Attaches `session` to the document named `name` (loading it if needed).
   * Throws NOT_FOUND (bad name), FORBIDDEN (no access), DAMAGED (its stored
   * state cannot be loaded; before access is decided, for everyone) or
   * UNAVAILABLE (shutting down, or too many busy documents).
   */
  async connect(name: string, session: Session): Promise<HostedConnection> {
    const parsed = parseName(name)
    // Counted before loading: a user at the limit cannot make the relay load one more document.
    // Decided on the id alone, before loading: no timing says whether the pair's document exists.
    if (outsiderOfDirect(session.principal, parsed))
      throw new ParleyError(ErrorCode.FORBIDDEN, "not a participant of this conversation")
    const closeDocument = this.users.openDocument(session.principal, name)
    let host: DocumentHost
    try {
      host = await this.activeHost(name)
    } catch (error) {
      closeDocument()
      throw error
    }
    // Access is decided on durable state only. While a change is applied but not yet stored (it may
    // be the creation), a user waits as pending; the update path decides once the change is stored.
    const access =
      host.hasUnsaved && session.principal.kind === "user" && parsed.kind === "conversation"
        ? "pending"
        : accessOf(session.principal, parsed, host.doc)
    if (access === "none") {
      // Counted against the refused user until the document unloads, not released at once: otherwise a
      // loop of refused connects (direct ids are guessable) keeps hundreds of documents resident per user,
      // loaded for nobody and counted against no one, evicting others' idle ones.
      this.holdUntilUnloaded(host, session.principal, closeDocument)
      this.scheduleIdle(host)
      throw new ParleyError(ErrorCode.FORBIDDEN, "not a participant of this conversation")
    }
    const connection = new Connection(host, session, access, this)
    const untrim = this.users.closeOnTrim(session.principal, name, () =>
      connection.close(CloseCode.TooManyDocuments.code, CloseCode.TooManyDocuments.reason),
    )
    this.openDocuments.set(connection, () => {
      untrim()
      closeDocument()
    })
    host.attach(connection)
    // The relay that orders it holds its epochs back for a stock provider wherever it is connected.
    if (!session.wantsParley) this.options.router?.stockProvider?.(name)
    this.options.metrics.connections.inc()
    connection.start()
    this.extensions.connectionChanged({ name, principal: session.principal, open: true })
    this.log.debug({ doc: name, principal: describePrincipal(session.principal) }, "connected")
    return connection
  }

  /**
   * A trusted server-side change (hooks, bots) through the one update path.
   * Resolves once it is durable, sequenced and broadcast.
   */
  async write(
    name: string,
    actor: Principal,
    change: (doc: Y.Doc) => void,
    options: ServerWriteOptions = {},
  ): Promise<void> {
    parseName(name)
    for (;;) {
      const host = await this.activeHost(name)
      try {
        const router = this.options.router
        if (router) await this.routedWrite(router, host, actor, change, options)
        else await writeOnServer(this.ctx, host, actor, change)
        return
      } catch (error) {
        // Unloaded (or evicted) before the change ran: nothing was written, so it goes to a fresh load.
        if (!(host.destroyed && error instanceof ParleyError && error.code === ErrorCode.UNAVAILABLE))
          throw error
      } finally {
        this.scheduleIdle(host)
      }
    }
  }

  /**
   * {@link write} through the cluster's router. A relay that does not own
   * the document runs the change on a fresh copy, which holds none of the
   * sealed segments this relay's replica holds: a change that named sealed
   * messages the copy did not hold (an edit, reaction, deletion or read
   * marker of an old message, through the HTTP API or a hook) and wrote
   * nothing has their segments read, and is tried once more on a copy given
   * every segment the replica holds, as the owner's own path does (before,
   * every relay but the owner answered 404). Only then: copying them costs
   * an index of every held entry, on every forwarded write.
   */
  private async routedWrite(
    router: UpdateRouter,
    host: DocumentHost,
    actor: Principal,
    change: (doc: Y.Doc) => void,
    options: ServerWriteOptions,
  ): Promise<void> {
    const keeper = host.name.kind === "conversation" ? this.options.history : undefined
    const local = () => writeOnServer(this.ctx, host, actor, change)
    if (!keeper) return router.write(host, actor, change, local, options)
    let missed: MessageId[] = []
    let wrote = false
    let withHeld = false
    const onCopy = (doc: Y.Doc) => {
      // The owner's path (`doc` is the replica) records its own misses and reads their segments.
      if (doc === host.doc) return change(doc)
      if (withHeld) copyHeldHistory(host.doc, doc)
      const recording = sealedHistory(doc).recordMisses()
      const before = Y.encodeStateVector(doc)
      try {
        change(doc)
      } finally {
        missed = recording()
        // Tried again only when the refusal wrote nothing (what it wrote is forwarded all the same).
        wrote = !equalBytes(before, Y.encodeStateVector(doc)) || deletedIn(doc)
      }
    }
    try {
      await router.write(host, actor, onCopy, local, options)
    } catch (error) {
      const namedSealed = missed.length > 0 && !wrote
      if (!(namedSealed && error instanceof ParleyError && error.code === ErrorCode.NOT_FOUND)) throw error
      // Held already (the copy lacked them only) or read now; none of them anywhere: the refusal stands.
      await keeper.holdNamed(host, missed, keeper.readsFor(sealedReadsPaidBy(this.ctx, actor)))
      withHeld = true
      await router.write(host, actor, onCopy, local, options)
    }
  }

  /**
   * A write of derived data to a document that is loaded with someone
   * connected: applied and broadcast at once, stored when it unloads (see
   * {@link DerivedWrites}). Resolves false, writing nothing, when nobody is
   * connected to it (the data is derived when they connect) or nothing changed.
   */
  async derive(
    name: string,
    change: (doc: Y.Doc, origin: unknown) => unknown,
    options: { readonly encodes?: boolean } = {},
  ): Promise<boolean> {
    const host = this.loadedNow.get(name)
    if (!host || host.connections.size === 0) return false
    return this.derived.apply(host, change, options.encodes === true)
  }

  /** Deferred derived writes to many documents in one call (see {@link RunningCore.deriveDeferredEach}). */
  deriveDeferredEach(
    names: readonly string[],
    change: (index: number, target: DeferTarget, origin: unknown) => Uint8Array | undefined,
    failed: (index: number) => void,
  ): void {
    const hosts: DocumentHost[] = []
    const indexes: number[] = []
    for (let i = 0; i < names.length; i++) {
      const host = this.loadedNow.get(names[i]!)
      if (!host || host.connections.size === 0) continue
      hosts.push(host)
      indexes.push(i)
    }
    if (hosts.length === 0) return
    this.derived.applyEach(
      hosts,
      (i, target, origin) => change(indexes[i]!, target, origin),
      (i) => failed(indexes[i]!),
    )
  }

  /** Stores a loaded document's derived data and folds its log into a snapshot now (a purge). */
  async compact(name: string, options: { readonly scrub?: boolean } = {}): Promise<void> {
    const host = this.loadedNow.get(name)
    if (!host) return
    await host.enqueue(async () => {
      if (host.destroyed) return
      await this.derived.store(this.ctx, host)
      await compact(this.ctx, host)
      if (options.scrub !== false) await this.ctx.purge?.scrub()
    })
  }

  async scrub(): Promise<void> {
    await this.ctx.purge?.scrub()
  }

  async forgetUser(name: string, user: UserId): Promise<void> {
    const parsed = parseName(name)
    if (parsed.kind !== "conversation") return
    const purge: PurgedContent = { name, conversationId: parsed.id, scope: { kind: "user", user } }
    // Once the hooks recorded the events of every change stored so far (the user's last writes
    // included: their events carry the name), as a message's purge waits for them.
    await this.extensions.recorded(name)
    // Held in memory first: a page read from storage meanwhile is redacted as it comes in.
    this.extensions.contentPurged(purge)
    this.ctx.sharePurge?.(purge)
    await this.ctx.purge?.redactEvents(name, parsed.id, purge.scope)
  }

  async storedShowing(names: readonly string[], ids: ReadonlySet<string>): Promise<ReadonlySet<string>> {
    for (const name of names) parseName(name)
    if (ids.size === 0) return new Set()
    const storage = this.options.storage
    // A storage's own search costs a pass over the stored bytes per id: for a few, it is where the bytes
    // are (none come to the relay); for a batch, one pass each document over its loaded bytes, for the key.
    if (storage.holding && ids.size <= SEARCHED_IDS_MOST) {
      const encoder = new TextEncoder()
      return storage.holding(
        names,
        [...ids].map((id) => encoder.encode(id)),
      )
    }
    const found = new Set<string>()
    for (const name of names) if (storedShowsId(await storage.load(name), ids)) found.add(name)
    return found
  }

  isLoaded(name: string): boolean {
    return this.loadedNow.has(name) || this.unloads.has(name)
  }

  /** Whether someone is connected to the document now. */
  isConnected(name: string): boolean {
    return (this.loadedNow.get(name)?.connections.size ?? 0) > 0
  }

  /** Reads a document's current state (loading it if needed); `read` must not write. */
  async read<T>(
    name: string,
    read: (doc: Y.Doc) => T,
    options?: { readonly failFast?: boolean },
  ): Promise<T> {
    parseName(name)
    for (;;) {
      const host = await this.activeHost(name)
      try {
        // A change queued before this read may have failed to store and evicted the document;
        // its memory then holds what storage does not, so the read goes to a fresh load.
        const queued = () => host.enqueue(async () => (host.destroyed ? EVICTED : { value: read(host.doc) }))
        const result = await (options?.failFast ? unlessHeld(host, queued) : queued())
        if (result !== EVICTED) return result.value
      } finally {
        this.scheduleIdle(host)
      }
    }
  }

  async settleSealedIds(name: string, ids: readonly MessageId[], principal?: Principal): Promise<void> {
    const keeper = this.options.history
    if (!keeper || parseName(name).kind !== "conversation") return
    const host = await this.activeHost(name)
    // The prelude of a write: refused as the write would be, not queued behind a change held for storage.
    refuseWhileStorageFails(this.ctx, host)
    const users = this.users
    const reads = keeper.readsFor(
      principal?.kind === "user" ? (wanted) => users.takeSealedReads(principal, wanted) : undefined,
    )
    try {
      await host.enqueue(async () => {
        if (!host.destroyed) await keeper.settleSealedIds(host, ids, reads)
      })
    } finally {
      this.scheduleIdle(host)
    }
  }

  // --- RoutedCore (several relays)

  /** @internal */
  async applyRemote(host: DocumentHost, entries: readonly WireEntry[] | "fetch"): Promise<void> {
    await host.enqueue(async () => {
      if (host.destroyed) return
      let fresh = entries === "fetch" ? [] : entries.filter((e) => e.position > host.lastPosition)
      if (entries === "fetch" || (fresh[0] && fresh[0].position > host.lastPosition + 1)) {
        // A gap (a message lost, or compacted away): storage has everything, in order.
        const stored = await this.options.storage.load(host.key)
        fresh = stored.updates.filter((e) => e.position > host.lastPosition)
        if (stored.snapshot && stored.through > host.lastPosition) {
          // A fresh epoch (whose notice this relay missed: Redis away) is another document's content;
          // merged into this one, its changes would never apply.
          if (host.name.kind === "conversation" && epochOfSnapshot(stored.snapshot) !== epochOf(host.doc)) {
            this.restart(host, "dropped: storage holds a fresh epoch of it")
            return
          }
          fresh = [{ position: stored.through, update: stored.snapshot }, ...fresh]
        }
      }
      if (fresh.length === 0) return
      const release = host.holdUnsaved()
      try {
        let bytes = 0
        for (const { update } of fresh) {
          Y.applyUpdate(host.doc, update, REMOTE_ORIGIN)
          bytes += update.length
        }
        host.recordAppend(
          fresh.length,
          bytes,
          fresh.map((e) => e.position),
        )
        // The owner derived this change's events; here they only decide who may now read it.
        const events = host.takeEvents()
        const merged = fresh.length === 1 ? fresh[0]!.update : Y.mergeUpdates(fresh.map((e) => e.update))
        const caughtUp = this.settleAccess(host, { events, update: merged })
        const frame = encodeSyncUpdate(merged)
        for (const connection of host.connections) if (!caughtUp.has(connection)) connection.send(frame)
      } finally {
        release()
      }
    })
  }

  /** @internal */
  async submitForwarded(
    name: string,
    principal: Principal,
    update: Uint8Array,
    seen?: ReplicaView,
  ): Promise<number> {
    const host = await this.activeHost(name)
    try {
      await submitUpdate(this.ctx, host, principal, update, undefined, seen)
      return host.lastPosition
    } finally {
      this.scheduleIdle(host)
    }
  }

  /** @internal */
  async writeForwarded(
    name: string,
    actor: Principal,
    update: Uint8Array,
    base?: Uint8Array,
  ): Promise<number> {
    const host = await this.activeHost(name)
    try {
      await writeOnServer(this.ctx, host, actor, (doc) => {
        // Checked in the document's queue, against everything applied here (stored or on its way): two
        // relays' API writes made on copies of one state (each creating the conversation, say) must
        // not both be stored, as their checks saw neither.
        if (base && holdsBeyond(doc, base))
          throw new ParleyError(
            ErrorCode.UNAVAILABLE,
            "the change was made on a copy older than the document: it is made again on a fresher one",
            { rule: STALE_COPY },
          )
        Y.applyUpdate(doc, update)
      })
      return host.lastPosition
    } finally {
      this.scheduleIdle(host)
    }
  }

  /** @internal */
  unstoredSince(host: DocumentHost): Uint8Array | undefined {
    return this.derived.unstoredSince(host)
  }

  /** @internal */
  purgedElsewhere(purge: PurgedContent): void {
    this.extensions.contentPurged(purge)
  }

  /** @internal */
  stockProviderElsewhere(name: string): void {
    stockProviderSeen(this.ctx, name)
  }

  /** @internal */
  async epochElsewhere(host: DocumentHost): Promise<void> {
    await host.enqueue(async () => {
      if (!host.destroyed) this.restart(host, "dropped: the relay that orders it started a fresh epoch")
    })
  }

  /** @internal */
  applyAwareness(host: DocumentHost, update: Uint8Array): void {
    if (!host.destroyed) applyAwarenessUpdate(host.awareness, update, REMOTE_ORIGIN)
  }

  /** @internal */
  claimed(name: string): () => void {
    // Its deliveries may be this relay's from now on: they wait until the takeover has looked for
    // purges the last owner left owed (see tookOver).
    this.purgeHolds.hold(name)
    return this.extensions.claimed(name)
  }

  /** @internal */
  async tookOver(name: string, claim: TakeoverClaim = {}): Promise<void> {
    // Events of changes a dead owner stored but did not record: derived from the log, as after a crash.
    const stored = await this.options.storage.load(name)
    const doc = new Y.Doc()
    let unnumbered = false
    try {
      if (stored.snapshot) applyStored(doc, stored.snapshot, 0)
      // Purges the dead owner did not finish, as a load after a crash finds them.
      const conversation = parseName(name).kind === "conversation"
      const snapshot = conversation ? deletedInSnapshot(doc) : undefined
      await this.extensions.loadStoredLog({
        name,
        doc,
        updates: stored.updates,
        takingOver: true,
        ...(claim.recordedThrough !== undefined ? { recordedThrough: claim.recordedThrough } : {}),
      })
      if (snapshot) notePurgesOwed(this.ctx, name, purgesOwed(doc, snapshot))
      unnumbered = conversation && unsequencedMessages(doc).length > 0
    } finally {
      doc.destroy()
    }
    const host = this.loadedNow.get(name)
    if (host) {
      // The owed purges of deleted messages are scheduled; a deleted conversation's runs just below.
      adoptDuePurge(this.ctx, host)
    }
    this.releaseUnlessOwed(name)
    if (host) await sequenceLeftovers(this.ctx, host)
    else if (unnumbered) {
      // Messages the last owner stored and died before numbering: numbered now, by a load (which numbers
      // leftovers, as the recovery sweep's does), so that their events, which wait for those numbers,
      // are recorded now and not at the document's next change (for a quiet conversation, never).
      await this.read(name, () => undefined)
    }
    await this.extensions.tookOver(name)
  }

  /**
   * Lets `name`'s hook deliveries go on unless a purge of it is owed (see {@link purgeHolds}), once
   * no change of it can be on its way to storage: in its host's queue, behind any such change (not
   * waited for); at once when it is not loaded (or unloading: a purge its unload runs counts).
   */
  private releaseUnlessOwed(name: string): void {
    const host = this.loadedNow.get(name)
    if (host && !host.destroyed)
      void host.enqueue(async () => releaseUnlessOwed(this.ctx, name)).catch(() => undefined)
    else releaseUnlessOwed(this.ctx, name)
  }

  // --- ConnectionOwner

  /** @internal */
  submit(connection: HostedConnection, update: Uint8Array, seen: ReplicaView): Promise<unknown> {
    let done: () => void
    try {
      done = this.users.admitUpdate(connection.principal, update.length, connection.host.connections.size)
    } catch (error) {
      // A flood across the user's connections: this one is closed, as a per-connection flood is.
      const close = closeOf(toParleyError(error))
      connection.close(close.code, close.reason)
      return Promise.reject(error)
    }
    const router = this.options.router
    const { host, principal } = connection
    const work = () =>
      router
        ? router.submit(host, principal, update, connection, seen, () =>
            submitUpdate(this.ctx, host, principal, update, connection, seen),
          )
        : submitUpdate(this.ctx, host, principal, update, connection, seen)
    // While the relay is saturated, a user over their share waits (see `FairShare`).
    const fair = this.users.fair
    const heavy = update.length >= HEAVY_FRAME_BYTES
    const submitted =
      principal.kind === "user"
        ? this.turns.run(principal.user, host.key, () => fair.admit(principal.user, heavy, work))
        : work()
    // One reaction, not a `finally` (two closures and a promise more per message); the caller gets
    // the update's own outcome, after the user's budget is released.
    submitted.then(done, done)
    return submitted
  }

  /** @internal */
  awareness(connection: HostedConnection, update: Uint8Array): void {
    const host = connection.host
    if (host.destroyed) return
    // Reading it sets the document's awareness up (and its gate), the first time.
    void host.awareness
    this.gates.get(host)?.receive(connection, update)
  }

  /** @internal */
  refused(connection: HostedConnection, error: ParleyError): void {
    // Not for `missing-changes`: no dependency failed, the part it follows was refused (its own refusal
    // asks again if storage failed; one refused for good, asked for at every later part, was sent again
    // and refused again in a loop, and one over a rate limit was sent again before its backoff).
    if (
      connection.session.wantsParley &&
      (error.code === ErrorCode.UNAVAILABLE || error.code === ErrorCode.STORAGE_UNAVAILABLE) &&
      error.rule !== Rule.missingChanges
    )
      this.askAgainOnceWritable(connection)
    this.options.metrics.errors.inc({ code: error.code })
    const principal = describePrincipal(connection.principal)
    const held = this.logThrottle.admit(`${error.code}\u0000${error.rule ?? ""}\u0000${principal}`)
    if (held === undefined) return
    this.log.info(
      {
        doc: connection.host.key,
        principal,
        code: error.code,
        ...(error.rule ? { rule: error.rule } : {}),
        ...(held > 0 ? { alsoRefused: held } : {}),
      },
      `refused: ${error.message}`,
    )
  }

  /**
   * Asks `connection`'s client for its work again once this relay takes
   * writes (storage answers, and Redis when forwarding needs it): a client
   * refused retryably sends again at the end of its backoff, up to 10 s for
   * the SDK, so an outside probe's messages were stored 5–15 s after Redis
   * came back. Checked every {@link ASK_AGAIN_CHECK_MS} while any is owed.
   */
  private askAgainOnceWritable(connection: HostedConnection): void {
    this.owedAsking.add(connection)
    if (this.askingTimer !== undefined) return
    this.askingTimer = setInterval(() => {
      if (!this.writable()) return
      const owed = [...this.owedAsking]
      this.owedAsking.clear()
      clearInterval(this.askingTimer)
      this.askingTimer = undefined
      for (const owner of owed) owner.askAgain()
    }, ASK_AGAIN_CHECK_MS)
    this.askingTimer.unref()
  }

  /** Whether a change sent now would be taken: storage answers, and Redis does when forwards need it. */
  private writable(): boolean {
    if (this.closing) return false
    if (this.ctx.storageHealth && !this.ctx.storageHealth.available) return false
    return this.options.router?.forwarding ?? true
  }

  /** @internal */
  whenAnswerable(connection: HostedConnection, answer: () => void): (() => void) | undefined {
    return this.users.whenAnswerable(connection.principal, answer)
  }

  /** @internal */
  answered(connection: HostedConnection, bytes: number): void {
    this.users.answered(connection.principal, bytes)
  }

  /** History requests each connection has waiting (at most {@link HISTORY_REQUESTS_IN_FLIGHT}). */
  private readonly historyInFlight = new WeakMap<HostedConnection, number>()

  /**
   * @internal Serves sealed segment `segment` to a connection allowed into
   * its conversation (the connection checked that before calling): only a
   * segment the live document names, with the hash it names. A few requests
   * in flight per connection; more are refused (RATE_LIMITED), not queued.
   */
  history(connection: HostedConnection, request: number, segment: number): void {
    const host = connection.host
    const keeper = this.options.history
    const summary = () => {
      const fold = foldedHistory(host.doc)
      // A folded segment's hash is on a directory page: checked here when the relay holds that page, by the client always.
      const found =
        summaryOf(host.doc, segment) ??
        (fold && segment < fold.segments ? sealedHistory(host.doc).folded(segment) : undefined)
      return { found, folded: fold !== undefined && segment < fold.segments }
    }
    const expected = () => {
      const { found, folded } = summary()
      return keeper && (found?.hash ?? (folded ? "" : undefined))
    }
    this.servePage(connection, request, segment, encodeHistoryPage, expected, summary().found?.bytes, () =>
      keeper!.page(host, segment),
    )
  }

  /**
   * @internal Serves directory page `page` of the conversation's folded
   * history, as {@link history} serves segments: only a page the live
   * document's chain has (numbered below its folded record's `pages`); the
   * newest checked against the hash the record names.
   */
  directory(connection: HostedConnection, request: number, page: number): void {
    const host = connection.host
    const keeper = this.options.history
    const expected = () => {
      const fold = foldedHistory(host.doc)
      return keeper && fold && page < fold.pages
        ? page === fold.pages - 1
          ? fold.hash
          : (sealedHistory(host.doc).page(page + 1)?.previous?.hash ?? "")
        : undefined
    }
    this.servePage(connection, request, page, encodeDirectoryPageFrame, expected, undefined, () =>
      keeper!.directoryPage(host, page),
    )
  }

  /**
   * @internal Serves epoch record `record` of the conversation (see shared
   * `EpochRecord`), as {@link history} serves segments: only a record the
   * live document counts (below its `meta.epochs`). Not checked against a
   * hash here: the client checks that the record is the one its replica needs.
   */
  epochRecord(connection: HostedConnection, request: number, record: number): void {
    const host = connection.host
    const keeper = this.options.history
    const expected = () => (keeper && record < epochCount(host.doc) ? "" : undefined)
    this.servePage(connection, request, record, encodeEpochRecordFrame, expected, undefined, () =>
      keeper!.epochRecord(host, record),
    )
  }

  /**
   * Answers a history or directory request with the stored bytes, when
   * `expected` (the hash that names them now; "" when the relay does not know
   * it: the client checks) says the document names them. A few requests in
   * flight per connection; more are refused (RATE_LIMITED), not queued. A page
   * rewritten while it was read (a purge re-sealed it, a refold rewrote a
   * directory page) is read again once and checked against what the document
   * names by then: before, it was answered NOT_FOUND and logged as missing,
   * and the SDK dropped the whole folded history it had paged back (an
   * outside probe).
   */
  private servePage(
    connection: HostedConnection,
    request: number,
    segment: number,
    encode: (page: HistoryPage) => Uint8Array,
    expected: () => string | undefined,
    /** The page's size when the document says it (a segment's summary); else {@link PAGE_RESERVATION_BYTES}. */
    size: number | undefined,
    read: () => Promise<StoredSegment | null>,
  ): void {
    const host = connection.host
    const answer = (page: HistoryPage) => connection.send(encode(page))
    const asked = expected()
    if (asked === undefined) {
      answer({ request, segment, error: ErrorCode.NOT_FOUND })
      return
    }
    const inFlight = this.historyInFlight.get(connection) ?? 0
    if (inFlight >= HISTORY_REQUESTS_IN_FLIGHT) {
      answer({ request, segment, error: ErrorCode.RATE_LIMITED })
      return
    }
    this.historyInFlight.set(connection, inFlight + 1)
    // A page is read and sent for a request of a few bytes: it waits for the user's answer budget, and
    // takes its size from it before it is read. Charged only once sent, every request in flight on the
    // user's sockets passed while the budget was positive (3.6 times the budget over 250 sockets).
    const reserved = ANSWER_BASE_BYTES + (size ?? PAGE_RESERVATION_BYTES)
    const admitted = (): Promise<boolean> =>
      new Promise((resolve) => {
        this.users.whenAnswerable(connection.principal, () => {
          if (connection.closed) return resolve(false)
          this.users.answered(connection.principal, reserved)
          resolve(true)
        })
      })
    const matches = (stored: StoredSegment | null, hash: string | undefined) =>
      stored !== null && hash !== undefined && (hash === "" || stored.hash === hash)
    admitted()
      .then((admit) => (admit ? read() : null))
      .then(async (stored) => {
        let hash: string | undefined = asked
        // Rewritten since the request came (the document names another hash now): read again, a few
        // times at most (deletions in a row each re-seal it).
        for (let again = 0; again < PAGE_REREADS; again++) {
          if (connection.closed || stored === null || matches(stored, hash)) break
          const now = expected()
          if (now === hash) break
          hash = now
          if (!matches(stored, hash)) stored = await read()
        }
        return { stored, hash }
      })
      .then(({ stored, hash }) => {
        if (connection.closed) return
        if (!stored || !matches(stored, hash)) {
          // Named no longer (its conversation purged, say): gone as it should be, not missing.
          if (hash !== undefined)
            this.log.error({ doc: host.key, segment }, "a sealed page the document names is missing")
          answer({ request, segment, error: ErrorCode.NOT_FOUND })
        } else {
          answer({ request, segment, hash: stored.hash, bytes: stored.bytes })
          this.users.answered(connection.principal, ANSWER_BASE_BYTES + stored.bytes.length - reserved)
        }
      })
      .catch((error: unknown) => {
        this.log.error({ err: error, doc: host.key, segment }, "could not read a sealed page")
        answer({ request, segment, error: ErrorCode.STORAGE_UNAVAILABLE })
      })
      .finally(() => this.historyInFlight.set(connection, (this.historyInFlight.get(connection) ?? 1) - 1))
  }

  /** @internal */
  detach(connection: HostedConnection): void {
    this.owedAsking.delete(connection)
    const host = connection.host
    if (!host.detach(connection)) return
    if (!connection.session.wantsParley) {
      stockProviderSeen(this.ctx, host.key)
      this.options.router?.stockProvider?.(host.key)
    }
    this.openDocuments.get(connection)?.()
    this.openDocuments.delete(connection)
    this.options.metrics.connections.dec()
    this.gates.get(host)?.detach(connection)
    this.extensions.connectionChanged({ name: host.key, principal: connection.principal, open: false })
    this.scheduleIdle(host)
  }

  // --- documents

  private lastSequenceOf(conversation: ConversationId): number {
    const host = this.loadedNow.get(conversation)
    return host ? lastSequence(host.doc) : 0
  }

  /** Hosts whose load finished, by name (for synchronous lookups). */
  private readonly loadedNow = new Map<string, DocumentHost>()

  /** The loaded document, never one whose unload has begun. */
  private async activeHost(name: string): Promise<DocumentHost> {
    let host = await this.host(name)
    // Another caller may have begun unloading it (to make room) before this continuation ran.
    while (host.unloading) host = await this.host(name)
    return host
  }

  private async host(name: string): Promise<DocumentHost> {
    for (;;) {
      if (this.closing) throw new ParleyError(ErrorCode.UNAVAILABLE, "the relay is shutting down")
      const unloading = this.unloads.get(name)
      if (unloading) {
        await unloading
        continue
      }
      const damage = this.damaged.get(name)
      if (damage !== undefined) throw damagedError(name, damage)
      const existing = this.hosts.get(name)
      if (existing) {
        const host = await existing
        if (host.unloading) continue
        return host
      }
      if (this.hosts.size >= this.limits.maxDocuments && !(await this.evictIdle())) {
        this.options.metrics.errors.inc({ code: ErrorCode.UNAVAILABLE })
        throw new ParleyError(ErrorCode.UNAVAILABLE, "too many documents are in use")
      }
      if (this.hosts.has(name) || this.unloads.has(name)) continue
      const loading = this.load(name)
      this.hosts.set(name, loading)
      this.options.metrics.documents.set(this.hosts.size)
      try {
        return await loading
      } catch (error) {
        this.hosts.delete(name)
        this.options.metrics.documents.set(this.hosts.size)
        throw toParleyError(error)
      }
    }
  }

  private async load(name: string): Promise<DocumentHost> {
    const host = new DocumentHost(name, parseName(name), (error) =>
      this.log.error(
        { err: error, doc: name },
        "derived writes sent to the connections did not apply to the relay's copy: dropped (derived again when the user next connects)",
      ),
    )
    // Damage is never "not created yet": a document that cannot be loaded whole is refused to
    // everyone (an empty stand-in would let a stranger re-create it as its owner).
    let stored: Awaited<ReturnType<RelayStorage["load"]>>
    try {
      stored = await this.options.storage.load(name)
      const damage = findDamage(stored)
      if (damage !== undefined) throw new ParleyError(ErrorCode.DAMAGED, damage)
      if (stored.snapshot) applyStored(host.doc, stored.snapshot, 0)
      const updates = stored.updates
      // With several relays, only the one ordering the document recovers its events (see tookOver)
      // and its unfinished purges.
      const recovers = !this.options.router || this.options.router.owns(name)
      const snapshot = recovers && host.name.kind === "conversation" ? deletedInSnapshot(host.doc) : undefined
      if (!(recovers && (await this.extensions.loadStoredLog({ name, doc: host.doc, updates }))))
        for (const { position, update } of updates) applyStored(host.doc, update, position)
      if (snapshot) {
        notePurgesOwed(this.ctx, name, purgesOwed(host.doc, snapshot))
        // Nothing of it is on its way to storage yet: a hold left by a deletion whose store failed goes.
        releaseUnlessOwed(this.ctx, name)
      }
    } catch (error) {
      host.destroy()
      if (error instanceof ParleyError && error.code === ErrorCode.DAMAGED)
        throw await this.foundDamaged(name, error)
      throw error
    }
    host.loaded(
      { entries: stored.updates.length, bytes: stored.updates.reduce((sum, u) => sum + u.update.length, 0) },
      Math.max(stored.through, stored.updates.at(-1)?.position ?? 0),
    )
    host.observe()
    const keeper = host.name.kind === "conversation" ? this.options.history : undefined
    if (keeper)
      watchHeldSegments(host, keeper, (error) =>
        this.log.warn(
          { err: error, doc: name },
          "a sealed segment re-sealed elsewhere could not be read again",
        ),
      )
    adoptDuePurge(this.ctx, host)
    const owners = await this.extensions.clientIdOwners({ name: host.name, doc: host.doc })
    // Presence is set up when someone first publishes or asks for it: most documents (an inbox, a
    // conversation nobody has open with presence) never need an awareness, its gate or its fan-out.
    host.whenAwareness(() => this.wireAwareness(host, owners))
    this.loadedNow.set(name, host)
    this.log.debug({ doc: name, entries: stored.updates.length }, "document loaded")
    const router = this.options.router
    if (router) await router.loaded(host)
    if (!router || router.owns(name)) await sequenceLeftovers(this.ctx, host)
    await this.holdMarkerSegments(host)
    return host
  }

  /**
   * Holds the sealed segments the participants' read markers fall inside: an
   * unread count is exact only with the segment of its marker at hand (the
   * summaries say how many of each author's messages a segment holds, not
   * where), and a load holds no segment. Without it, a member whose marker
   * sat inside a segment was counted the whole segment as unread after every
   * load (an outside probe: 450 for 300, in the inbox, the API and pushes,
   * until something else read that segment). At most
   * {@link MARKER_SEGMENTS_HELD} (beyond, those counts are high by up to a
   * segment until read); a failed read is logged and leaves them so.
   */
  private async holdMarkerSegments(host: DocumentHost): Promise<void> {
    const keeper = this.options.history
    if (!keeper || host.name.kind !== "conversation") return
    const through = sealedThrough(host.doc)
    if (through === 0) return
    const summaries = sealedSegments(host.doc)
    const history = sealedHistory(host.doc)
    const wanted = new Set<number>()
    for (const marker of typesOf(host.doc).read.values()) {
      if (typeof marker !== "number" || marker <= 0 || marker >= through) continue
      // The last segment starting at or below the marker: summaries are in order of sequence.
      let low = 0
      let high = summaries.length - 1
      while (low < high) {
        const mid = (low + high + 1) >> 1
        if (summaries[mid]!.from <= marker) low = mid
        else high = mid - 1
      }
      const summary = summaries[low]
      if (!summary || summary.from > marker || summary.to <= marker) continue
      if (history.segment(summary.index) === undefined) wanted.add(summary.index)
      if (wanted.size >= MARKER_SEGMENTS_HELD) break
    }
    if (wanted.size === 0) return
    await keeper
      .holdIndexes(host, [...wanted])
      .catch((error: unknown) =>
        this.log.warn(
          { err: error, doc: host.key },
          "could not read the sealed segments of read markers: unread counts are high until they are read",
        ),
      )
  }

  /**
   * Takes what a presence claim of a new client id by `user` costs: one id of their allowance in
   * the document, and, when the claim is `stored` (a binding row, see `bindingBytes`), its bytes
   * from their daily budget of stored bytes, as an update's new ids are charged. Both or neither;
   * false when either is spent (the entry is dropped, counted as `claims`).
   */
  private takeClaimedId(host: DocumentHost, user: UserId, stored: boolean): boolean {
    const principal: Principal = { kind: "user", user }
    const document = host.name.kind === "conversation" ? host.name.id : host.key
    const bytes = stored ? bindingBytes(document, describePrincipal(principal)) : 0
    if (bytes > 0 && this.ctx.users && !this.ctx.users.mayStore(principal, bytes)) return false
    if (!(this.ctx.clientIds?.take(host.key, user, 1) ?? true)) return false
    if (bytes > 0) this.ctx.users?.chargeStored(principal, bytes)
    return true
  }

  /** Sets up `host`'s owned awareness: its gate, its fan-out and what follows each change. */
  private wireAwareness(host: DocumentHost, owners: ClientIdOwners | undefined): void {
    const name = host.key
    const gate = new AwarenessGate({
      host,
      owners: owners ?? memoryOwners(host.doc),
      limits: this.limits,
      dropped: (connection, reason, count) => {
        this.options.metrics.awarenessDropped.inc({ reason }, count)
        // Every stock client echoes every presence frame it gets: this runs for most frames of a room.
        if (this.log.isLevelEnabled("debug"))
          this.log.debug(
            { doc: name, principal: describePrincipal(connection.principal), reason, count },
            "awareness entries dropped",
          )
      },
      claimFailed: (error) => this.log.error({ err: error, doc: name }, "could not store a client id claim"),
      takeClientId: (user) => this.takeClaimedId(host, user, owners !== undefined),
    })
    this.gates.set(host, gate)
    const fanout = new AwarenessFanout(
      host,
      (removed) => gate.forget(removed),
      (clientId) => gate.setterOf(clientId),
    )
    this.fanouts.set(host, fanout)
    const changedNow = new Set<number>()
    host.awareness.on("change", ({ updated }: { updated: number[] }) => {
      for (const id of updated) changedNow.add(id)
    })
    host.awareness.on(
      "update",
      (
        { added, updated, removed }: { added: number[]; updated: number[]; removed: number[] },
        origin: unknown,
      ) => {
        gate.changed(added, updated, removed, origin)
        // 'change' (emitted just before) named the ids whose state changed; the rest only renewed.
        const changed = [...added, ...updated.filter((id) => changedNow.has(id))]
        const renewed = changedNow.size === updated.length ? [] : updated.filter((id) => !changedNow.has(id))
        changedNow.clear()
        if (origin instanceof Connection) {
          const principal = origin.principal
          // A renewal (the same state, re-announced every 15 s) changes nothing an extension could see.
          if (principal.kind === "user") {
            for (const id of changed) {
              const state = host.awareness.getStates().get(id)
              this.extensions.awarenessChanged({ name, doc: host.doc, user: principal.user, state })
            }
          }
        }
        // This relay's connections' presence (set, or removed as they left) goes to the other relays.
        const router = this.options.router
        if (router && (origin instanceof Connection || origin === "relay"))
          router.awareness(host, encodeAwarenessUpdate(host.awareness, [...added, ...updated, ...removed]))
        fanout.updated([...changed, ...removed], renewed, removed)
      },
    )
  }

  /** Records, logs and counts a document found damaged; returns the error to refuse it with. */
  private async foundDamaged(name: string, error: ParleyError): Promise<ParleyError> {
    const reason = error.message
    this.damaged.set(name, reason)
    this.options.metrics.damagedDocuments.set(this.damaged.size)
    this.options.metrics.errors.inc({ code: ErrorCode.DAMAGED })
    this.log.error(
      { doc: name, reason, err: error.cause ?? error },
      "document damaged: refused to everyone until restored (parley-relay damaged restore)",
    )
    try {
      await this.options.storage.markDamaged(name, reason)
    } catch (cause) {
      // Still refused by this process; the next one finds the damage again when it loads the document.
      this.log.error({ err: cause, doc: name }, "could not record the damage in storage")
    }
    return damagedError(name, reason)
  }

  private scheduleIdle(host: DocumentHost): void {
    host.whenIdle(this.limits.idleUnloadMs, () => {
      if (host.busy) this.scheduleIdle(host)
      else void this.unload(host)
    })
  }

  /**
   * Keeps `release` (a refused user's count of `host`) until the document
   * unloads, or at most {@link REFUSED_HOLD_MS} (a busy room may never go idle:
   * a user removed from many would be locked out of opening their own); one
   * per user and document, however often they are refused.
   */
  private holdUntilUnloaded(host: DocumentHost, principal: Principal, release: () => void): void {
    if (principal.kind !== "user" || host.destroyed) {
      release()
      return
    }
    let held = this.refusedHolds.get(host)
    if (!held) {
      held = new Map()
      this.refusedHolds.set(host, held)
    }
    if (held.has(principal.user)) {
      release()
      return
    }
    const user = principal.user
    const timer = setTimeout(() => {
      const holds = this.refusedHolds.get(host)
      if (holds?.get(user) !== releaseOnce) return
      holds.delete(user)
      if (holds.size === 0) this.refusedHolds.delete(host)
      releaseOnce()
    }, REFUSED_HOLD_MS)
    timer.unref()
    const releaseOnce = () => {
      clearTimeout(timer)
      release()
    }
    held.set(user, releaseOnce)
  }

  /** Refused users' counts of loaded documents, released when each unloads (see `connect`). */
  private readonly refusedHolds = new Map<DocumentHost, Map<UserId, () => void>>()

  /** Unloads an idle document after a final compaction. */
  private unload(host: DocumentHost): Promise<void> {
    if (host.connections.size > 0 || host.unloading || host.destroyed) return Promise.resolve()
    host.beginUnload()
    const done = host
      .enqueue(async () => {
        await purgeDue(this.ctx, host)
        await this.derived.store(this.ctx, host)
        await compact(this.ctx, host)
      })
      .catch((error: unknown) => this.log.error({ err: error, doc: host.key }, "final compaction failed"))
      .finally(() => {
        this.drop(host)
        this.unloads.delete(host.key)
        this.log.info({ doc: host.key }, "document unloaded")
      })
    this.unloads.set(host.key, done)
    return done
  }

  private drop(host: DocumentHost): void {
    if (this.loadedNow.get(host.key) === host) {
      this.loadedNow.delete(host.key)
      this.hosts.delete(host.key)
    }
    if (this.ctx.sequencer instanceof LocalSequencer && host.name.kind === "conversation") {
      this.ctx.sequencer.forget(host.name.id)
    }
    this.gates.get(host)?.destroy()
    this.gates.delete(host)
    this.fanouts.get(host)?.destroy()
    this.fanouts.delete(host)
    this.options.router?.unloaded(host)
    for (const release of this.refusedHolds.get(host)?.values() ?? []) release()
    this.refusedHolds.delete(host)
    host.destroy()
    this.options.metrics.documents.set(this.hosts.size)
  }

  /** Unloads one idle document to make room; false when every loaded document is in use. */
  private async evictIdle(): Promise<boolean> {
    for (const host of this.loadedNow.values()) {
      if (host.connections.size === 0 && !host.busy && !host.unloading) {
        await this.unload(host)
        return true
      }
    }
    return false
  }

  /**
   * Decides access after a change is durable and before anyone is sent it (the
   * update path calls this from inside the change's unsaved hold, so no sync
   * answer goes out meanwhile either):
   * - a pending connection (the document held no conversation) is promoted and
   *   caught up when the change made its user a participant, and closed with
   *   4403 otherwise, having been sent nothing of the document;
   * - a participant the change removed is closed with 4403 before the change
   *   (or anything after it) reaches them — except the change itself when it
   *   removes participants and does nothing else, so that their replica learns
   *   why; the one who left gets their "saved" first.
   * Returns the promoted connections: they already hold the change.
   */
  private settleAccess(host: DocumentHost, change: AccessChange): ReadonlySet<HostedConnection> {
    const promoted = new Set<HostedConnection>()
    const created = change.events.some((e) => e.type === "conversation.created")
    if (!created && !change.events.some((e) => e.type === "participants.removed") && !someoneIsPending(host))
      return promoted
    let removalOnly: boolean | undefined
    for (const connection of [...host.connections]) {
      const access = accessOf(connection.principal, host.name, host.doc)
      // One of the two users of a deleted direct conversation who left it keeps "write" (see accessOf):
      // not closed, the conversation's content is purged, and they may reopen it from this replica.
      // ("pending" only while the document holds no conversation: nothing to decide yet.)
      if (access === connection.access || access === "pending") continue
      if (access !== "none") {
        if (connection.pending) {
          connection.promote(access, created)
          promoted.add(connection)
        } else connection.access = access
        continue
      }
      const wasPending = connection.pending
      connection.access = "none"
      if (connection === change.from) connection.saved(change.clientIds)
      else if (!wasPending && change.update) {
        removalOnly ??= onlyRemovesParticipants(host.doc, change.update)
        if (removalOnly) connection.send(encodeSyncUpdate(change.update))
      }
      this.log.info(
        { doc: host.key, principal: describePrincipal(connection.principal) },
        wasPending
          ? "disconnected: not a participant of the new conversation"
          : "disconnected: no longer a participant",
      )
      // No y-protocols "permission denied" message first: y-websocket logs the socket's URL,
      // token included, on receiving one; the close code says the same.
      connection.close(CloseCode.Forbidden.code, CloseCode.Forbidden.reason)
    }
    return promoted
  }

  /** Drops a loaded document whose storage moved on (a new epoch); its clients reconnect to the new one. */
  private restart(host: DocumentHost, reason: string): void {
    this.log.info({ doc: host.key }, reason)
    host.beginUnload()
    for (const connection of [...host.connections]) {
      connection.close(CloseCode.Unavailable.code, CloseCode.Unavailable.reason)
    }
    this.drop(host)
  }

  /** The document's memory may differ from storage: close its connections and drop it, to reload from storage. */
  private evict(host: DocumentHost, error: unknown): void {
    // A retryable refusal is not the relay's failure: in a cluster, the document's lease moved to another
    // relay (a Redis restart loses every lease) and the fence refused this one's append. Its clients
    // reconnect to whichever relay orders it now (4503), as after a restart; nothing is logged as an error.
    if (error instanceof ParleyError && isRetryable(error.code)) {
      this.restart(host, `document dropped: ${error.message}`)
      return
    }
    this.log.error({ err: error, doc: host.key }, "document evicted after a failure")
    this.options.metrics.errors.inc({ code: ErrorCode.INTERNAL })
    host.beginUnload()
    for (const connection of [...host.connections]) {
      connection.close(CloseCode.Internal.code, CloseCode.Internal.reason)
    }
    this.drop(host)
    // A deletion whose store failed left its deliveries held: the next load says whether it was
    // stored after all (its purge then runs) or not (they go on), also when nobody comes back to it.
    if (!this.closing && !this.options.router && this.purgeHolds.holding(host.key))
      void this.finishOwedPurges(host.key).catch((failure: unknown) =>
        this.log.warn({ err: failure, doc: host.key }, "could not load a document that may owe a purge"),
      )
  }

  /**
   * Graceful stop: refuses new connections, lets queued changes finish, closes
   * every connection with 1001 "going away", compacts, stops the extensions
   * (in reverse order) and closes storage.
   */
  async close(): Promise<void> {
    if (this.closing) return
    this.closing = true
    this.stopping.abort()
    clearInterval(this.askingTimer)
    this.owedAsking.clear()
    // Work held back goes on: it finishes before the documents close.
    this.users.fair.close()
    await Promise.allSettled([...this.unloads.values()])
    const hosts = await Promise.allSettled([...this.hosts.values()])
    await Promise.all(
      hosts.map(async (result) => {
        if (result.status !== "fulfilled") return
        const host = result.value
        await host.drain()
        for (const connection of [...host.connections]) {
          connection.close(CloseCode.GoingAway.code, CloseCode.GoingAway.reason)
        }
        host.beginUnload()
        await host.enqueue(async () => {
          await purgeDue(this.ctx, host)
          await this.derived.store(this.ctx, host)
          await compact(this.ctx, host)
        })
        this.drop(host)
      }),
    )
    // After the last changes: their events are recorded before the extensions (the hooks' outbox) stop.
    await this.extensions.stop()
    await this.options.storage.close()
  }
}

/**
 * What a page the document gives no size for (a directory page, an epoch record) takes from its
 * reader's answer budget before it is read; the rest of its size is charged once it is sent.
 */
const PAGE_RESERVATION_BYTES = 64 * 1024

/** Wait before the sweep of documents owing a purge runs again after a failure (see `sweepOwedPurges`). */
const OWED_PURGES_RETRY_MS = 30_000

/** Awareness owners of a document whose policy binds no client ids: in memory, the relay's own id kept off. */
function memoryOwners(doc: Y.Doc): ClientIdOwners {
  const bindings = new ClientBindings([[doc.clientID, RELAY_KEY]])
  return {
    owner: (clientId) => bindings.get(clientId),
    claim: async (clientId, key) => {
      bindings.bind([[clientId, key]])
      return bindings.get(clientId) ?? key
    },
  }
}

function damagedError(name: string, reason: string): ParleyError {
  return new ParleyError(ErrorCode.DAMAGED, `document ${JSON.stringify(name)} is damaged: ${reason}`)
}

function someoneIsPending(host: DocumentHost): boolean {
  for (const connection of host.connections) if (connection.pending) return true
  return false
}

/**
 * True when `update` writes nothing and deletes only participant entries: a
 * removal (or leave) alone, which a removed user may be sent.
 */
function onlyRemovesParticipants(doc: Y.Doc, update: Uint8Array): boolean {
  const { structs, ds } = Y.decodeUpdate(update)
  if (structs.length > 0) return false
  const participants = typesOf(doc).participants as unknown
  for (const [client, ranges] of ds.clients) {
    const list = doc.store.clients.get(client)
    for (const { clock, len } of ranges) {
      // Deletions of structs the document lacks are no plain removal.
      if (!list || clock + len > Y.getState(doc.store, client)) return false
      for (let i = Y.findIndexSS(list, clock); i < list.length && list[i]!.id.clock < clock + len; i++) {
        const struct = list[i]!
        if (!(struct instanceof Y.Item) || (struct.parent as unknown) !== participants) return false
      }
    }
  }
  return true
}

function parseName(name: string) {
  try {
    return parseDocumentName(name)
  } catch (error) {
    throw new ParleyError(ErrorCode.NOT_FOUND, `no such document: ${JSON.stringify(name)}`, { cause: error })
  }
}

/** Whether `doc` holds a struct beyond the state vector `base` (of any client). */
function holdsBeyond(doc: Y.Doc, base: Uint8Array): boolean {
  const known = Y.decodeStateVector(base)
  for (const [client, structs] of doc.store.clients) {
    const last = structs[structs.length - 1]
    if (last && last.id.clock + last.length > (known.get(client) ?? 0)) return true
  }
  return false
}

/** The epoch of a stored snapshot (see `epochOf`), read from a scratch document. */
function epochOfSnapshot(snapshot: Uint8Array): number | undefined {
  const doc = new Y.Doc({ gc: false })
  try {
    Y.applyUpdate(doc, snapshot)
    return epochOf(doc)
  } finally {
    doc.destroy()
  }
}

/**
 * Adds the sealed segments and directory pages `from` holds to `to`'s
 * directory (a copy of the same document made to run a change on).
 */
function copyHeldHistory(from: Y.Doc, to: Y.Doc): void {
  const held = sealedHistory(from)
  const directory = sealedHistory(to)
  for (const index of held.held()) {
    const segment = held.segment(index)
    if (segment) directory.add(segment)
  }
  for (const n of held.pagesHeld()) {
    const page = held.page(n)
    const hash = held.pageHash(n)
    if (page && hash !== undefined) directory.addPage(page, hash)
  }
}

/** Whether the transaction open on `doc` deleted anything (deletions do not move its state vector). */
function deletedIn(doc: Y.Doc): boolean {
  const transaction = (
    doc as unknown as { _transaction: { deleteSet: { clients: Map<number, unknown> } } | null }
  )._transaction
  return (transaction?.deleteSet.clients.size ?? 0) > 0
}
