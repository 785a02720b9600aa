import {
  type ChangeEvent,
  type ConversationId,
  ErrorCode,
  getMessage,
  isTyping,
  type MessageView,
  observeChanges,
  ParleyError,
  parseDocumentName,
  parseUserId,
  TYPING_EXPIRY_MS,
  TYPING_THROTTLE_MS,
  type UserId,
} from "@parley/shared"
import type { Registry } from "prom-client"
import type * as Y from "yjs"
import type { AfterSaved, RunningCore } from "../extension.js"
import { inboxSummary } from "../inbox/summary.js"
import type { Logger } from "../log.js"
import type { Principal } from "../principal.js"
import type { PurgedContent } from "../purge/redact.js"
import { applyStored } from "../storage/integrity.js"
import type { HookContext, HookConversations } from "./define.js"
import { handlerFor, isOwnWriteOf } from "./define.js"
import {
  DEFAULT_HOOK_TIMEOUT_MS,
  type DeliveryAttempt,
  type DeliveryFence,
  type DeliveryTarget,
  Dispatcher,
  DroppedDelivery,
  exponentialBackoff,
  PermanentDeliveryError,
} from "./dispatcher.js"
import {
  conversationOf,
  deriveHookEvents,
  HANDLER_NAMES,
  type HookActor,
  type HookEvent,
  type HookEventType,
  newEventId,
  withName,
  writerNamedBy,
} from "./events.js"
import { hookConversations } from "./hook-conversations.js"
import type { LoadedHooks } from "./loader.js"
import { HookMetrics } from "./metrics.js"
import {
  type DeadLetter,
  type DeadLetterFilter,
  type Delivery,
  NOT_RECORDER,
  type Outbox,
  type OutboxBatch,
} from "./outbox.js"
import { webhookTarget } from "./webhook.js"
import { HOOK_WORKER_GRACE_MS, type HookWorker } from "./worker-host.js"

/** Options of {@link HookRuntime}. */
export interface HookRuntimeOptions {
  /** The running core: hooks read documents and write through its update path. */
  readonly core: RunningCore
  /**
   * Hook modules run on the relay's own thread, without isolation: for tests
   * and embedders that pass handlers in. The relay's `--hooks` directory runs
   * in {@link worker}.
   */
  readonly hooks?: readonly LoadedHooks[]
  /** The hooks directory's modules, run in a worker thread (see {@link HookWorker}). */
  readonly worker?: HookWorker
  readonly webhooks?: readonly { readonly url: string; readonly secret: string }[]
  readonly outbox: Outbox
  readonly log: Logger
  readonly registry: Registry
  /** Time allowed to one handler call or webhook attempt (default 10 s). */
  readonly timeoutMs?: number
  /** Retry policy of hook modules (default: 1 s doubling, 8 attempts in all). */
  readonly backoff?: { readonly baseMs?: number; readonly maxMs?: number; readonly attempts?: number }
  /** Delays between webhook attempts (default {@link WEBHOOK_RETRY_SCHEDULE}). */
  readonly webhookSchedule?: readonly number[]
  readonly now?: () => number
  /** Built-in targets delivered like hooks (the relay's inbox maintenance). */
  readonly targets?: readonly DeliveryTarget[]
  /** For tests: replaces global fetch for webhooks. */
  readonly fetch?: typeof fetch
  /** The sweep after a start that recovers events a crash left unrecorded (see {@link HookRuntime.recoverOwed}). */
  readonly recovery?: RecoveryOptions
  /** In a cluster: deliveries run only under the document's lease, their outcomes recorded under its token. */
  readonly fence?: DeliveryFence
}

/** How {@link HookRuntime.recoverOwed} sweeps the documents that owe events. */
export interface RecoveryOptions {
  /** Documents loaded at once (default {@link DEFAULT_RECOVERY_CONCURRENCY}). */
  readonly concurrency?: number
  /** Wait before sweeping again after a storage error or a failed load (default {@link DEFAULT_RECOVERY_RETRY_MS}). */
  readonly retryMs?: number
}

/** A document this relay claimed, its takeover not done yet (see {@link HookRuntime.claimed}). */
interface Claim {
  /** The takeover's record of what it recovered from the log: run first once the gate opens. */
  recover?: () => Promise<void>
  /**
   * Set with {@link recover}: resolves once it ran (the document's entry in `HookRuntime.takeovers`).
   * A takeover tried again after a failure derives its record again, and must not wait for this one.
   */
  recorded?: { readonly done: Promise<void>; readonly resolve: () => void }
  /** Opens the gate (once; later calls do nothing). */
  readonly open: () => void
}

/** Wait before a failed record of hook events is tried again (doubling, up to {@link RECORD_RETRY_MAX_MS}). */
const RECORD_RETRY_MS = 250
const RECORD_RETRY_MAX_MS = 5_000

/** Documents the recovery sweep loads at once: a few, so that it never crowds out the clients' loads. */
export const DEFAULT_RECOVERY_CONCURRENCY = 4
/** Wait before the recovery sweep tries again after a failure. */
export const DEFAULT_RECOVERY_RETRY_MS = 30_000

/**
 * Most hook writes in a chain: a write made for an event that a hook's write caused, made for an
 * event that a hook's write caused, and so on. A hook that answers its own messages (without
 * `isOwnWrite`), or two bots answering each other, wrote forever (about 75 messages a second,
 * measured); the write past this depth is refused and its delivery dead-lettered. Kept in memory:
 * a restart starts every chain again from the events it delivers.
 */
export const HOOK_CHAIN_LIMIT = 8

/**
 * Hooks and webhooks inside a relay: turns saved changes into events, records
 * them in the outbox (with the document's log watermark), and delivers them off
 * the update path. Made by the hooks extension (`HooksExtension`) once the core
 * runs; through it the core calls {@link afterSaved} after every saved change,
 * {@link applyStoredLog} when it loads a document, and
 * {@link awarenessChanged} on awareness updates.
 */
export class HookRuntime {
  private readonly dispatcher: Dispatcher
  private readonly targets: DeliveryTarget[]
  private readonly metrics: HookMetrics
  private readonly log: Logger
  private readonly now: () => number
  /** Hook writes in flight, by their principal: who wrote, and how deep in a chain of hook writes (see {@link HOOK_CHAIN_LIMIT}). */
  private readonly bots = new WeakMap<object, { user: UserId; hook: string; depth: number }>()
  /** Events of hook writes lately derived, by event id: how deep in a chain of hook writes each is. */
  private readonly chainDepths = new Map<string, number>()
  private readonly typingSeen = new Map<string, number>()
  private readonly recovered = new Map<string, { events: HookEvent[]; through: number }>()
  /**
   * Records of a taken-over document's unrecorded log, not waited for by the takeover (see
   * {@link applyStoredLog}), by document: a load meanwhile waits for its document's before it reads
   * the watermark, or it would derive the same events again.
   */
  private readonly takeovers = new Map<string, Promise<void>>()
  /** Documents this relay claimed whose takeover is not done yet (see {@link claimed}). */
  private readonly claims = new Map<string, Claim>()
  /** Documents loaded with nothing stored and no watermark: given one before their first append. */
  private readonly unmarked = new WeakSet<Y.Doc>()
  private readonly core: RunningCore
  /**
   * Records waiting in line, by document: a failed one tried again, and the document's later ones
   * behind it. Per document, since what the line protects is (a later change's watermark must not
   * pass a failed change's log entries of the same document): one line for the whole relay held
   * every document's records, and so every takeover and compaction, behind one failing record
   * retried with backoff. A document's entry goes once its line is empty.
   */
  private readonly lines = new Map<string, RecordLine>()
  /** By document: the record waiting in its line, not started yet, that later records join (see {@link enqueue}). */
  private readonly gathering = new Map<string, Gathered>()
  /** Aborted by {@link stop}: ends the waits between attempts of a failed record. */
  private readonly stopping = new AbortController()
  private sweeping: Promise<void> | undefined
  private sweepAgain: NodeJS.Timeout | undefined
  private stopped = false

  constructor(private readonly options: HookRuntimeOptions) {
    this.log = options.log
    this.core = options.core
    this.now = options.now ?? Date.now
    const backoff = exponentialBackoff(options.backoff)
    const timeoutMs = options.timeoutMs ?? DEFAULT_HOOK_TIMEOUT_MS
    const worker = options.worker
    this.targets = [
      ...(worker?.modules ?? []).map((module, index): DeliveryTarget => {
        const handlers = new Set(module.handlers)
        return {
          name: `hook:${module.name}`,
          accepts: (type) => handlers.has(HANDLER_NAMES[type]),
          deliver: (event, attempt) =>
            worker!.call(
              index,
              HANDLER_NAMES[event.event.type],
              event,
              attempt,
              this.contextFor(module.name, event, attempt),
            ),
          retryDelay: backoff,
          // The worker keeps the call's time (and restarts itself past its grace); the dispatcher's is a net.
          // The worker counts it from when the handler started, which a call queued behind a blocked
          // worker reaches only once that one is stopped (its time and grace): the net is twice that.
          timeoutMs: 2 * (timeoutMs + 2 * HOOK_WORKER_GRACE_MS),
        }
      }),
      ...(options.hooks ?? []).map(
        (loaded): DeliveryTarget => ({
          name: `hook:${loaded.name}`,
          accepts: (type) => handlerFor(loaded.hooks, type) !== undefined,
          deliver: async (event, attempt) => {
            const handler = handlerFor(loaded.hooks, event.event.type)
            if (handler) await handler(event, this.contextFor(loaded.name, event, attempt))
          },
          retryDelay: backoff,
        }),
      ),
      ...(options.webhooks ?? []).map(({ url, secret }) =>
        webhookTarget({
          url,
          secret,
          ...(options.webhookSchedule ? { schedule: options.webhookSchedule } : {}),
          ...(options.fetch ? { fetch: options.fetch } : {}),
        }),
      ),
      ...(options.targets ?? []),
    ]
    this.metrics = new HookMetrics(options.registry)
    this.dispatcher = new Dispatcher({
      outbox: options.outbox,
      targets: this.targets,
      log: options.log,
      metrics: this.metrics,
      now: this.now,
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
      ...(options.fence ? { fence: options.fence } : {}),
      ...(options.core.purgeHolds ? { holds: options.core.purgeHolds } : {}),
    })
  }

  /** Names of the delivery targets (`hook:<file>`, `webhook:<url>`). */
  get targetNames(): string[] {
    return this.targets.map((t) => t.name)
  }

  /** Resumes what the outbox still owes. */
  async start(): Promise<void> {
    await this.dispatcher.start()
  }

  /**
   * Recovers what a crash left owed in documents nobody opens: loads, through
   * the core, every document the outbox lists as {@link Outbox.behind} (saved
   * changes whose events were not recorded). The load records their events
   * (`applyStoredLog`) and numbers messages left without one, in the one
   * update path; the document then unloads when idle like any other. Only
   * those documents are loaded, a few at a time. A storage error or a failed
   * load is logged and the sweep runs again later, until a pass succeeds.
   * The hooks extension starts it once every extension has started; a call
   * while a pass runs returns that pass. Never rejects.
   */
  recoverOwed(): Promise<void> {
    if (this.stopped) return Promise.resolve()
    this.sweeping ??= this.sweep().finally(() => {
      this.sweeping = undefined
    })
    return this.sweeping
  }

  private async sweep(): Promise<void> {
    let documents: string[]
    try {
      documents = await this.options.outbox.behind()
    } catch (error) {
      this.log.error({ err: error }, "could not list the documents owing hook events: trying again later")
      this.sweepLater()
      return
    }
    if (documents.length === 0 || this.stopped) return
    this.log.info(
      { documents: documents.length },
      "loading the documents whose hook events a crash left unrecorded",
    )
    const queue = [...documents]
    let loaded = 0
    let failed = 0
    const work = async () => {
      for (let name = queue.shift(); name !== undefined && !this.stopped; name = queue.shift()) {
        try {
          await this.core.read(name, () => undefined)
          loaded++
        } catch (error) {
          // A damaged document is refused until an operator restores it; loading it again cannot help.
          if (error instanceof ParleyError && error.code === ErrorCode.DAMAGED) continue
          failed++
          this.log.warn({ err: error, document: name }, "could not load a document owing hook events")
        }
      }
    }
    const concurrency = Math.max(1, this.options.recovery?.concurrency ?? DEFAULT_RECOVERY_CONCURRENCY)
    await Promise.all(Array.from({ length: Math.min(concurrency, documents.length) }, work))
    if (this.stopped) return
    this.log.info({ documents: loaded, failed }, "recovered hook events a crash left unrecorded")
    if (failed > 0) this.sweepLater()
  }

  private sweepLater(): void {
    if (this.stopped || this.sweepAgain) return
    this.sweepAgain = setTimeout(() => {
      this.sweepAgain = undefined
      void this.recoverOwed()
    }, this.options.recovery?.retryMs ?? DEFAULT_RECOVERY_RETRY_MS)
    this.sweepAgain.unref()
  }

  /** Called by the update path after each saved change; never throws, never waits for hooks. */
  afterSaved(change: AfterSaved): void {
    try {
      const id = conversationIdOf(change.name)
      if (!id) return
      const recovered = this.recovered.get(change.name)
      if (recovered) {
        // The relay has now sequenced what the crash left unsequenced: record the recovered events first.
        this.recovered.delete(change.name)
        this.enqueue(
          change.name,
          recovered.events.map((e) => withSequence(change.doc, e)),
          recovered.through,
        )
      }
      const bot = this.bots.get(change.actor)
      const actor: HookActor = bot ? { kind: "bot", user: bot.user, hook: bot.hook } : { ...change.actor }
      const events = deriveHookEvents({
        conversationId: id,
        doc: change.doc,
        actor,
        changes: change.events,
        positions: change.positions,
        ...(change.counts ? { counts: change.counts } : {}),
        now: this.now(),
      })
      if (bot) {
        if (this.chainDepths.size > 10_000) this.chainDepths.clear()
        for (const event of events) this.chainDepths.set(event.event.id, bot.depth)
      }
      const through = change.positions.length > 0 ? Math.max(...change.positions) : undefined
      this.enqueue(change.name, events, through)
    } catch (error) {
      this.log.error({ err: error, document: change.name }, "could not derive hook events")
    }
  }

  /**
   * This relay just claimed `name` (a cluster) and may order its changes from now on, before its
   * takeover read the stored log and the outbox. What a relay that lost the document left unrecorded
   * is this relay's to derive ({@link applyStoredLog}), and what it left undelivered its to deliver
   * ({@link resume}); both are older than any change ordered here. So the document's records wait in
   * line, from now, behind a gate that opens once the takeover has put its recovered record first
   * and its dispatcher has read the document's lanes. Without it a change ordered meanwhile was
   * recorded before the recovered events (the event log held seq 30 before 24–29, an outside probe),
   * or its delivery, queued in a lane made for it, went out before the owed ones the takeover then
   * read (21 before 18–20). Returns what opens the gate in any case (the takeover ended, done or
   * given up). A takeover that fails leaves the gate closed: the cluster tries it again while it
   * holds the lease, since a record of a change ordered here would move the watermark past the
   * events it is to recover.
   */
  claimed(name: string): () => void {
    if (this.stopped) return () => undefined
    this.claims.get(name)?.open()
    let run!: (recover: (() => Promise<void>) | undefined) => void
    const opened = new Promise<(() => Promise<void>) | undefined>((resolve) => {
      run = resolve
    })
    const claim: Claim = {
      open: () => {
        if (this.claims.get(name) !== claim) return
        this.claims.delete(name)
        run(claim.recover)
      },
    }
    this.claims.set(name, claim)
    this.inLine(name, (previous) =>
      previous
        .then(() => opened)
        .then((recover) => recover?.())
        .finally(() => claim.recorded?.resolve()),
    )
    return claim.open
  }

  /**
   * Applies a document's stored log entries to `doc` (which holds the snapshot)
   * as the core's load would, and produces the events of entries after the
   * document's watermark: changes the relay saved but died before recording
   * events for. A document seen for the first time gets its watermark set to
   * the end of its log, without events. With `takingOver` (a relay taking the
   * document over) it returns once those events are in the document's line,
   * not recorded: see {@link resume}.
   */
  /**
   * Records the first watermark of a document loaded with nothing stored, before its first append:
   * undefined when it has one already (every later append).
   */
  beforeAppend(name: string, doc: Y.Doc): Promise<void> | undefined {
    if (!this.unmarked.delete(doc)) return undefined
    return this.recordFirstWatermark(name, 0)
  }

  /**
   * A first watermark, so that a crash from now on is recovered from here. Not a condition of
   * serving or writing the document: while storage refuses writes (a full disk) readers are served,
   * and the next change's events set it.
   */
  private async recordFirstWatermark(name: string, through: number): Promise<void> {
    await this.options.outbox
      .enqueue({ document: name, events: [], through })
      .catch((error: unknown) =>
        this.log.warn({ err: error, document: name }, "could not record the document's first hook watermark"),
      )
  }

  async applyStoredLog(
    name: string,
    doc: Y.Doc,
    updates: readonly { readonly position: number; readonly update: Uint8Array }[],
    {
      takingOver = false,
      recordedThrough,
    }: { readonly takingOver?: boolean; readonly recordedThrough?: number } = {},
  ): Promise<void> {
    // A takeover that fails keeps its claim's gate closed: the cluster tries it again while it holds
    // the lease, and opens the gate (the function `claimed` returned) once it is done or given up.
    await this.deriveStored(name, doc, updates, takingOver, recordedThrough)
  }

  private async deriveStored(
    name: string,
    doc: Y.Doc,
    updates: readonly { readonly position: number; readonly update: Uint8Array }[],
    takingOver: boolean,
    recordedThrough: number | undefined,
  ): Promise<void> {
    const last = updates.at(-1)?.position
    const id = conversationIdOf(name)
    const claim = takingOver ? this.claims.get(name) : undefined
    // A takeover's record still under way: its events are past the watermark until it is done. Not
    // this claim's own, from an earlier attempt of the takeover: it waits for the gate this one opens.
    const earlier = this.takeovers.get(name)
    if (earlier && earlier !== claim?.recorded?.done) await earlier
    const current = id ? await this.options.outbox.watermark(name) : undefined
    // The watermark at the claim, when this relay's own records moved it on since: what a relay that
    // lost the document left unrecorded lies past the claim's mark (its late records were refused),
    // and what this relay recorded meanwhile is skipped as recorded already (stable event ids).
    const mark =
      current !== undefined && recordedThrough !== undefined ? Math.min(current, recordedThrough) : current
    if (!id || mark === undefined) {
      for (const { position, update } of updates) applyStored(doc, update, position)
      // A document with nothing stored gets its first watermark before its first append (see
      // `beforeAppend`): most such loads store nothing (a pending connect, a probe of a made-up id),
      // and one row each, kept for good, would let anyone add rows by naming ids.
      if (id && last === undefined) this.unmarked.add(doc)
      else if (id) await this.recordFirstWatermark(name, last ?? 0)
      return
    }
    const events: HookEvent[] = []
    let pending: { changes: ChangeEvent[] } | undefined
    const stop = observeChanges(doc, (changes) => {
      pending?.changes.push(...changes)
    })
    try {
      for (const { position, update } of updates) {
        if (position <= mark) {
          applyStored(doc, update, position)
          continue
        }
        pending = { changes: [] }
        applyStored(doc, update, position)
        if (pending.changes.length === 0) continue
        const derived = deriveHookEvents({
          conversationId: id,
          doc,
          actor: { kind: "unknown" },
          changes: pending.changes,
          positions: [position],
          now: this.now(),
        })
        events.push(...derived.map(withInferredActor))
      }
    } finally {
      stop()
    }
    if (last === undefined || last <= mark) return
    // A message's number is written by the entry after the one that sent it.
    const patched = events.map((e) => withSequence(doc, e))
    if (patched.length > 0)
      this.log.warn(
        { document: name, events: patched.length, from: mark, through: last },
        "recovered hook events of changes saved before a crash",
      )
    if (patched.some(lacksSequence)) {
      // The relay sequences leftovers right after loading; their numbers belong in these events.
      this.recovered.set(name, { events: patched, through: last })
      return
    }
    if (claim && this.claims.get(name) === claim) {
      // First in the document's line, before the records of changes ordered here since the claim.
      const record = this.recorder(name, patched, last)
      claim.recover = () => this.recordOrRetry(name, record)
      if (!claim.recorded) {
        let resolve!: () => void
        const done: Promise<void> = new Promise<void>((r) => {
          resolve = r
        }).finally(() => {
          if (this.takeovers.get(name) === done) this.takeovers.delete(name)
        })
        claim.recorded = { done, resolve }
        this.takeovers.set(name, done)
      }
      return
    }
    const recording = this.enqueue(name, patched, last).catch(() => undefined)
    if (!takingOver) {
      await recording
      return
    }
    // A relay taking the document over orders its writes without waiting for this record (it waited
    // for the first attempt, and for every retry of it: 5 s and more while the dead owner's frozen
    // transaction held the outbox's locks, an outside probe found). Safe for the order of events: the
    // record is in the document's line already, so every later change's record comes after it, and
    // compaction folds nothing it has not recorded (`compactionLimit`); deliveries it adds after
    // `resume` are taken in.
    // In line now (a record waiting, or failed and tried again), or started at once (`ordersEnqueues`):
    // then in line only once its first attempt failed.
    const line = this.lines.get(name)?.tail
    const done = line ?? recording.then(() => this.lines.get(name)?.tail)
    const entry = done.finally(() => {
      if (this.takeovers.get(name) === entry) this.takeovers.delete(name)
    })
    this.takeovers.set(name, entry)
  }

  /**
   * Log position up to which `name` may be compacted now without losing events not yet recorded:
   * its watermark, without waiting for the records in line. Asked inside the document's queue,
   * where waiting for them held every write to the document as long as the outbox was behind (an
   * outside tester: 10–20 s at each compaction of a busy conversation on PostgreSQL). A compaction
   * that finds its document's latest changes unrecorded waits for them outside the queue
   * ({@link recorded}) and folds through what was recorded.
   */
  async compactionLimit(name: string): Promise<number> {
    return (await this.options.outbox.watermark(name)) ?? Number.POSITIVE_INFINITY
  }

  /** Resolves once the records of `name`'s changes saved so far are done (recorded, or given up as the runtime stops). */
  async recorded(name: string): Promise<void> {
    // Not held by a claim's gate: the takeover that opens it may wait for the compaction or purge
    // asking (the document's queue). The recovered events then come after those recorded meanwhile.
    this.claims.get(name)?.open()
    await this.lines.get(name)?.tail
  }

  /**
   * Called on each awareness change of a connection: fires `typing.started`
   * when `user` starts typing, at most once per user and conversation per
   * typing burst (a new one starts after {@link TYPING_EXPIRY_MS} of silence,
   * and never within {@link TYPING_THROTTLE_MS}). Not durable: one attempt.
   */
  awarenessChanged(name: string, doc: Y.Doc, user: UserId, state: unknown): void {
    try {
      this.typing(name, doc, user, state)
    } catch (error) {
      this.log.error({ err: error, document: name }, "typing hook failed")
    }
  }

  private typing(name: string, doc: Y.Doc, user: UserId, state: unknown): void {
    const now = this.now()
    if (!isTyping(state, now)) return
    const id = conversationIdOf(name)
    const conversation = id && conversationOf(doc)
    if (!id || !conversation) return
    const key = `${name}\u0000${user}`
    const last = this.typingSeen.get(key)
    this.typingSeen.set(key, now)
    if (last !== undefined && now - last < Math.max(TYPING_EXPIRY_MS, TYPING_THROTTLE_MS)) return
    if (this.typingSeen.size > 10_000) {
      for (const [k, t] of this.typingSeen) if (now - t > TYPING_EXPIRY_MS) this.typingSeen.delete(k)
    }
    const event = {
      event: {
        id: newEventId(now),
        type: "typing.started",
        time: now,
        conversationId: id,
        actor: withName({ kind: "user", user }, doc),
      },
      subject: { user },
      conversation,
    } as HookEvent<"typing.started">
    for (const target of this.targets) {
      if (!target.accepts("typing.started")) continue
      const controller = new AbortController()
      const timer = setTimeout(() => controller.abort(), this.options.timeoutMs ?? DEFAULT_HOOK_TIMEOUT_MS)
      Promise.resolve()
        .then(() => target.deliver(event, { attempt: 1, signal: controller.signal }))
        .catch((error) => {
          // A drop is the target keeping typing out of its durable deliveries' way (a webhook's
          // share of connections busy): counted, not logged, since it comes in bursts.
          if (error instanceof DroppedDelivery) this.metrics.typingDropped.inc({ target: target.name })
          else this.log.warn({ err: error, hook: target.name }, "typing hook failed")
        })
        .finally(() => clearTimeout(timer))
    }
  }

  /** A purge removed content of a conversation: what the dispatcher holds in memory loses it too. */
  purged(purge: PurgedContent): void {
    this.dispatcher.purged(purge)
  }

  /** Dead letters, oldest first. */
  deadLetters(): Promise<DeadLetter[]> {
    return this.options.outbox.deadLetters()
  }

  /** Delivers matching dead letters again. */
  replay(filter?: DeadLetterFilter): Promise<Delivery[]> {
    return this.dispatcher.replay(filter)
  }

  /**
   * Delivers what the outbox still owes for `document`: this relay has just
   * begun ordering it (several relays), maybe after the relay that did died.
   */
  async resume(document: string): Promise<void> {
    // Not waiting for the document's records in line (the dead owner's events, see
    // `applyStoredLog`): the dispatcher takes in what they add after it read the outbox.
    await this.dispatcher.adopt(document)
    // The lanes are read (their owed deliveries first): the records held since the claim go on. (Not
    // when the read failed: the takeover is tried again, and its gate opened once done or given up.)
    this.claims.get(document)?.open()
  }

  /**
   * Resolves when every recorded event has been delivered or dead-lettered
   * (tests, benchmarks). A deferred delivery (a fleeting message not due yet)
   * is still owed: it waits for it.
   */
  async idle(): Promise<void> {
    await this.sweeping
    await this.allLines()
    await this.dispatcher.idle()
  }

  /** Stops the recovery sweep and delivering (running attempts finish), and closes the outbox. */
  async stop(): Promise<void> {
    this.stopped = true
    this.stopping.abort()
    clearTimeout(this.sweepAgain)
    await this.sweeping
    // A takeover still reading the log is not waited for: the next owner derives what it would have.
    for (const claim of [...this.claims.values()]) claim.open()
    await this.allLines()
    await this.dispatcher.stop()
    await this.options.worker?.stop()
    await this.options.outbox.close()
  }

  private enqueue(
    document: string,
    events: readonly HookEvent[],
    through: number | undefined,
  ): Promise<void> {
    // A failed record is tried again until it succeeds, and every later one of its document waits
    // behind it: recorded first, a later change's watermark would pass the failed change's log entries,
    // and their events would never be recorded, delivered or logged (nor derived again at the next load).
    // Other documents' records do not wait: their watermarks are their own.
    // An outbox that keeps call order needs no wait for the last commit while nothing of the document
    // waits in line: changes of one tick share one.
    if (this.options.outbox.ordersEnqueues && !this.lines.has(document)) {
      const record = this.recorder(document, events, through)
      const run = record()
      run.catch((error: unknown) => {
        if (this.leftToOwner(document, error)) return
        this.inLine(document, (previous) =>
          previous.then(() => this.recordUntilDone(document, record, error)),
        )
      })
      return run
    }
    // Behind records in line, this one joins the last if it has not started yet: a backlog is recorded
    // in one transaction, not one per change. One per change, PostgreSQL's outbox recorded about 60
    // changes a second (a dozen round trips and a WAL flush each) and a busy conversation's records
    // fell seconds behind its writes (an outside tester: 75 messages a second in one group).
    const open = this.gathering.get(document)
    if (open && open.batch.length + events.length <= GATHER_LIMIT) {
      open.batch.push(...this.targeted(events))
      if (through !== undefined) open.through = Math.max(open.through ?? through, through)
      return open.run
    }
    const gathered: Gathered = { batch: this.targeted(events), through, run: Promise.resolve() }
    // Made once its turn comes, from everything gathered by then; tried again as it is if it fails.
    let write: (() => Promise<void>) | undefined
    const start = (): Promise<void> => {
      if (this.gathering.get(document) === gathered) this.gathering.delete(document)
      write = this.writer(document, gathered.batch, gathered.through)
      return write()
    }
    this.gathering.set(document, gathered)
    this.inLine(document, (previous) => {
      gathered.run = previous.then(start)
      return gathered.run.catch((error: unknown) =>
        this.leftToOwner(document, error) ? undefined : this.recordUntilDone(document, write ?? start, error),
      )
    })
    return gathered.run
  }

  /** Runs `record`, tried again until done as a failed record in line is (see {@link enqueue}); never rejects. */
  private recordOrRetry(document: string, record: () => Promise<void>): Promise<void> {
    return record().catch((error: unknown) =>
      this.leftToOwner(document, error) ? undefined : this.recordUntilDone(document, record, error),
    )
  }

  /** What records `events` of `document` (and its watermark `through`) and queues their deliveries. */
  private recorder(
    document: string,
    events: readonly HookEvent[],
    through: number | undefined,
  ): () => Promise<void> {
    return this.writer(document, this.targeted(events), through)
  }

  /** `events`, each with the names of the targets it is owed to. */
  private targeted(events: readonly HookEvent[]): OutboxBatch["events"][number][] {
    return events.map((event) => ({
      event,
      targets: this.targets
        .filter((t) => t.accepts(event.event.type) && (t.wants?.(event) ?? true))
        .map((t) => t.name),
    }))
  }

  /** What records `batch` of `document` (and its watermark `through`) and queues their deliveries. */
  private writer(
    document: string,
    batch: OutboxBatch["events"],
    through: number | undefined,
  ): () => Promise<void> {
    return async () => {
      const deliveries = await this.options.outbox.enqueue({
        document,
        // Every event, targets or not: the outbox records each in the event log.
        events: batch,
        ...(through !== undefined ? { through } : {}),
      })
      // Recorded: what fails from here on is in memory, and must neither record the events again (each
      // retry logged them once more: an outside probe's event was delivered 124 times) nor hold every
      // later record behind it. What was not queued stays in the outbox, delivered when the relay next starts.
      try {
        this.dispatcher.add(deliveries)
      } catch (error) {
        this.log.error(
          { err: error, document, events: deliveries.length },
          "recorded hook events could not be queued for delivery: left in the outbox, delivered when the relay next starts",
        )
      }
    }
  }

  /**
   * True (and logged) when the outbox refused a record because another relay orders the document
   * now (a cluster, {@link NOT_RECORDER}): not tried again, since it never would succeed here, and the
   * new owner derives those events from the stored log past the watermark the refusal left in place.
   */
  private leftToOwner(document: string, error: unknown): boolean {
    if (!(error instanceof ParleyError && error.rule === NOT_RECORDER)) return false
    this.log.warn(
      { document },
      "hook events left to the relay that now orders the document: it derives them from the stored log",
    )
    return true
  }

  /**
   * Puts a step at the end of `document`'s line: `step` gets the line's last promise and returns
   * the new one, which must not reject. The entry goes when the line is empty again, so that the
   * map holds only documents with records in flight.
   */
  private inLine(document: string, step: (previous: Promise<void>) => Promise<void>): void {
    let line = this.lines.get(document)
    if (!line) {
      line = { tail: Promise.resolve(), waiting: 0 }
      this.lines.set(document, line)
    }
    const current = line
    current.waiting++
    current.tail = step(current.tail).finally(() => {
      if (--current.waiting === 0 && this.lines.get(document) === current) this.lines.delete(document)
    })
  }

  /** Resolves when every record in line now, of every document, is done (later ones are not waited for). */
  private async allLines(): Promise<void> {
    await Promise.all([...this.lines.values()].map((line) => line.tail))
  }

  /**
   * Tries a failed record again, with backoff, until the outbox takes it. It
   * gives up only when the runtime stops: the watermark has not moved past the
   * change, so the document's next load derives its events again from the
   * stored log. (In a cluster, a relay that lost the document meanwhile may
   * record events its next owner derived too: a repeat, as after any retry.)
   */
  private async recordUntilDone(
    document: string,
    record: () => Promise<void>,
    error: unknown,
  ): Promise<void> {
    this.log.error({ err: error, document }, "could not record hook events: trying again")
    for (
      let attempt = 1, delay = RECORD_RETRY_MS;
      ;
      attempt++, delay = Math.min(delay * 2, RECORD_RETRY_MAX_MS)
    ) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          this.stopping.signal.removeEventListener("abort", done)
          resolve()
        }
        const timer = setTimeout(done, delay)
        timer.unref()
        this.stopping.signal.addEventListener("abort", done)
      })
      if (this.stopped) {
        this.log.warn(
          { document },
          "hook events left unrecorded: derived again from the stored log when the document next loads",
        )
        return
      }
      try {
        await record()
        this.log.info({ document, attempts: attempt + 1 }, "recorded hook events after the outbox failed")
        // A failed attempt may have been recorded all the same (a commit whose answer was lost with its
        // connection): this one then found its events recorded and queued nothing, and their deliveries
        // were owed, never attempted, until a restart. What the outbox owes for the document is read.
        await this.readOwed(document)
        return
      } catch (next) {
        if (this.leftToOwner(document, next)) return
        this.log.warn(
          { err: next, document, attempts: attempt + 1 },
          "could not record hook events: trying again",
        )
      }
    }
  }

  /** Has the dispatcher read what the outbox owes for `document`, tried again until it could (or the runtime stops). */
  private async readOwed(document: string, delay = RECORD_RETRY_MS): Promise<void> {
    try {
      await this.dispatcher.adopt(document)
    } catch (err) {
      if (this.stopped) return
      this.log.error({ err, document }, "hook outbox failed to read a document's deliveries: trying again")
      const timer = setTimeout(
        () => void this.readOwed(document, Math.min(delay * 2, RECORD_RETRY_MAX_MS)),
        delay,
      )
      timer.unref()
    }
  }

  private contextFor(hook: string, event: HookEvent, attempt: DeliveryAttempt): HookContext {
    // The logger child and the conversations handle are made on first use: most handlers need neither,
    // and making both for every delivery was a visible part of a busy relay's CPU.
    let log: HookContext["log"] | undefined
    let conversations: HookConversations | undefined
    const runtime = this
    return {
      hook,
      get log() {
        log ??= runtime.log.child({
          hook,
          eventId: event.event.id,
          eventType: event.event.type,
          conversationId: event.event.conversationId,
        })
        return log
      },
      get signal() {
        return attempt.signal
      },
      attempt: attempt.attempt,
      get conversations() {
        conversations ??= runtime.conversationsFor(hook, event)
        return conversations
      },
      inboxes: this.inboxes,
      isOwnWrite: this.ownWriteTest(hook),
    }
  }

  /** The context's `inboxes`: the same for every delivery (made once, not per delivery). */
  private readonly inboxes: HookContext["inboxes"] = Object.freeze({
    // A user id checked first, as the HTTP API does: "../x" answered NOT_FOUND (an outside probe).
    summary: async (user: UserId) => inboxSummary(this.core, parseUserId(user)),
  })

  /** Each hook's `isOwnWrite`, made once per hook (not per delivery). */
  private readonly ownWriteTests = new Map<string, HookContext["isOwnWrite"]>()

  private ownWriteTest(hook: string): HookContext["isOwnWrite"] {
    let test = this.ownWriteTests.get(hook)
    if (!test) {
      test = isOwnWriteOf(hook)
      this.ownWriteTests.set(hook, test)
    }
    return test
  }

  private conversationsFor(hook: string, event: HookEvent): HookConversations {
    const depth = (this.chainDepths.get(event.event.id) ?? 0) + 1
    return hookConversations({
      core: this.core,
      hook,
      eventId: event.event.id,
      write: (name, asUser, change) => {
        if (depth > HOOK_CHAIN_LIMIT) {
          this.log.warn(
            { hook, eventId: event.event.id, conversationId: event.event.conversationId },
            "hook write refused: it answers hook writes that answer hook writes (a loop?)",
          )
          // Dead-lettered at once: retrying would hold the conversation's later events for this hook.
          throw new PermanentDeliveryError(
            `hook-chain: a hook's write in reply to an event of a hook's write, ${HOOK_CHAIN_LIMIT} deep, is refused (a hook answering its own writes? test isOwnWrite(event))`,
          )
        }
        // The principal object identifies the write when the update path reports it back.
        const principal: Principal = { kind: "user", user: asUser }
        this.bots.set(principal, { user: asUser, hook, depth })
        return this.core.write(name, principal, change)
      },
    })
  }
}

/**
 * Most events one record gathers (see `HookRuntime.enqueue`): a backlog of thousands is recorded
 * in a few transactions, each small enough to write and, when it fails, to try again.
 */
const GATHER_LIMIT = 2_000

/** A record waiting in its document's line (see `HookRuntime.gathering`): what it will write, and its outcome once started. */
interface Gathered {
  readonly batch: OutboxBatch["events"][number][]
  through: number | undefined
  run: Promise<void>
}

/** A document's records in line (see `HookRuntime.lines`): the last one's promise, and how many are not done. */
interface RecordLine {
  tail: Promise<void>
  waiting: number
}

// Only decodable updates are stored; this guards a damaged store without losing the rest (as the core does).
function conversationIdOf(name: string): ConversationId | undefined {
  try {
    const parsed = parseDocumentName(name)
    return parsed.kind === "conversation" ? parsed.id : undefined
  } catch {
    return undefined
  }
}

function withInferredActor(event: HookEvent): HookEvent {
  const user = writerNamedBy(event)
  return user ? ({ ...event, event: { ...event.event, actor: { kind: "user", user } } } as HookEvent) : event
}

const lacksSequence = (event: HookEvent): boolean =>
  event.event.type === "message.sent" && (event.subject as { message: MessageView }).message.seq === undefined

function withSequence(doc: Y.Doc, event: HookEvent): HookEvent {
  if (event.event.type !== "message.sent") return event
  const subject = event.subject as { message: MessageView }
  if (subject.message.seq !== undefined) return event
  const seq = getMessage(doc, subject.message.id)?.seq
  return seq === undefined
    ? event
    : ({ ...event, subject: { message: { ...subject.message, seq } } } as HookEvent)
}

export type { HookEventType }
