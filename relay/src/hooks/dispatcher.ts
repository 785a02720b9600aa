import { ErrorCode, ParleyError } from "@parley/shared"
import type { Logger } from "../log.js"
import { RecentPurges } from "../purge/recent-purges.js"
import type { PurgedContent } from "../purge/redact.js"
import type { HookEvent, HookEventType } from "./events.js"
import type { HookMetrics } from "./metrics.js"
import type { DeadLetterFilter, Delivery, Outbox, OutboxLane } from "./outbox.js"

/** Where events go: one hook module, or one webhook URL. */
export interface DeliveryTarget {
  /** Unique and stable across restarts: deliveries in the outbox refer to it. */
  readonly name: string
  accepts(type: HookEventType): boolean
  /**
   * A finer filter on an accepted event, when the type is not enough (only
   * fleeting messages): an event it declines costs the target no delivery.
   */
  wants?(event: HookEvent): boolean
  /** Resolves when the target took the event; throws to have it retried. */
  deliver(event: HookEvent, attempt: DeliveryAttempt): Promise<void>
  /** Delay before the next attempt after `failures` failed ones; undefined to give up. */
  retryDelay(failures: number, error: unknown): number | undefined
  /**
   * Time allowed to one attempt when not the dispatcher's: a target that keeps
   * its attempts' time itself (the hook worker) gets a little more, as a net.
   */
  readonly timeoutMs?: number
  /**
   * A purge removed content of a conversation (see `RelayExtension.contentPurged`): a target that
   * keeps events or what it made of them beyond an attempt (notifications waiting for a device)
   * drops what the purge concerns.
   */
  purged?(purge: PurgedContent): void
  /**
   * False for a target whose deliveries keep what they carry inside the relay (the attachments
   * store linking a message's files): not held while the document owes a purge (see
   * `DeliveryHolds`), which only keeps deleted text from leaving the relay. Holding it left a
   * message sent and deleted at once unlinked from its files, which then outlived it a day.
   */
  readonly heldForPurges?: false
}

/** What a target is told of the attempt it makes. */
export interface DeliveryAttempt {
  /** 1 for the first. */
  readonly attempt: number
  /** Aborted when the attempt's time is up or it is abandoned (made on first use). */
  readonly signal: AbortSignal
  /**
   * Calls `listener` when the attempt is aborted, without making its signal
   * (an AbortController per delivery shows in a busy relay's CPU). One
   * listener; a later call replaces it. Absent outside the dispatcher.
   */
  onAbort?(listener: (reason: unknown) => void): void
}

/** Thrown by a target for a failure that retrying cannot fix (e.g. HTTP 400): dead-letters at once. */
export class PermanentDeliveryError extends Error {
  override readonly name = "PermanentDeliveryError"
}

/**
 * Thrown by a target for an event it must act on later, not now (a fleeting
 * message not due yet): the delivery waits in the outbox until `until`
 * (stored, so it survives a restart), without counting as a failed attempt.
 */
export class DeferDelivery extends Error {
  override readonly name = "DeferDelivery"
  /** `reason`, when given, is what the outbox records as the delivery's last error. */
  constructor(
    readonly until: number,
    reason?: string,
  ) {
    super(reason ?? `deferred until ${new Date(until).toISOString()}`)
  }
}

/**
 * Thrown by a target for a non-durable event (`typing.started`) it did not send because its share
 * of the receiver's connections was busy: counted (`parley_hook_typing_dropped_total`), not logged.
 */
export class DroppedDelivery extends Error {
  override readonly name = "DroppedDelivery"
}

/**
 * Who may deliver a document's events: in a cluster, only the relay holding
 * the document's lease, under its fencing token. Without a fence (one relay)
 * every document's events are this relay's.
 */
export interface DeliveryFence {
  /**
   * The token under which this relay may start an attempt on `document`'s
   * events now, or undefined: its lease is gone or could lapse before the
   * attempt is sent (another relay may be delivering them).
   */
  tokenOf(document: string): number | undefined
  /** How often running attempts are checked against their lease, in ms (aborted once it is gone). */
  readonly checkEveryMs: number
  /** {@link Outbox.delivered}, recorded only while `token` is still the document's; false when refused. */
  delivered(delivery: Delivery, token: number): Promise<boolean>
  /** {@link Outbox.retryLater}, fenced like {@link delivered}. */
  retryLater(
    delivery: Delivery,
    token: number,
    attempts: number,
    nextAttemptAt: number,
    error: string,
  ): Promise<boolean>
  /** {@link Outbox.deadLetter}, fenced like {@link delivered}. */
  deadLetter(delivery: Delivery, token: number, attempts: number, error: string, at: number): Promise<boolean>
}

/**
 * Documents whose deliveries must wait: a purge of the document is owed (see `PurgeHolds`), and
 * a delivery read or recorded before the deletion may still carry what it removes. A lane of a
 * held document starts no attempt until the document is released; other documents' lanes go on.
 */
export interface DeliveryHolds {
  /** Whether `document`'s deliveries must wait now. */
  holds(document: string): boolean
  /** Calls `listener` once `document` is released, or with undefined when every document may have been. */
  onRelease(listener: (document: string | undefined) => void): void
}

/** An attempt's outcome when this relay no longer orders the document: its lane is dropped, the outbox keeps it. */
const FENCED = Symbol("fenced")
/** An attempt's outcome when its document was held just before the call (see {@link DeliveryHolds}): not made. */
const HELD = Symbol("held")

/**
 * What a delivery's start mark records as its last error (see `Dispatcher.markStarted`): found at a
 * start or takeover, the attempt it counts was running when the relay ended or lost the document.
 */
const INTERRUPTED = "the relay ended (or lost the document) while this delivery was running"

/** Default time allowed to one hook call or webhook attempt. */
export const DEFAULT_HOOK_TIMEOUT_MS = 10_000
/** Default attempts per event and hook module before it is dead-lettered. */
export const DEFAULT_HOOK_ATTEMPTS = 8

/** Exponential backoff: `base * 2^(failures-1)`, capped, then give up after `attempts` tries in all. */
export function exponentialBackoff(
  options: { baseMs?: number; maxMs?: number; attempts?: number } = {},
): (failures: number) => number | undefined {
  const { baseMs = 1_000, maxMs = 300_000, attempts = DEFAULT_HOOK_ATTEMPTS } = options
  return (failures) => (failures >= attempts ? undefined : Math.min(maxMs, baseMs * 2 ** (failures - 1)))
}

/** Options of {@link Dispatcher}. */
export interface DispatcherOptions {
  readonly outbox: Outbox
  readonly targets: readonly DeliveryTarget[]
  readonly log: Logger
  readonly metrics: HookMetrics
  /** Time allowed to one attempt (default 10 s). */
  readonly timeoutMs?: number
  /** Pause of a lane after the outbox failed to record an attempt's outcome (default 1 s). */
  readonly outboxRetryMs?: number
  readonly now?: () => number
  /** Deliveries only under a document's lease (a cluster); see {@link DeliveryFence}. */
  readonly fence?: DeliveryFence
  /** Most deliveries one lane holds in memory (default {@link DEFAULT_LANE_WINDOW}); the rest wait in the outbox. */
  readonly laneWindow?: number
  /** Most deliveries all lanes hold in memory together (default {@link DEFAULT_MAX_HELD}), beyond one per lane. */
  readonly maxHeld?: number
  /**
   * With a fence (a cluster): how often the lanes the outbox owes deliveries for are compared
   * with the lanes held here (default {@link DEFAULT_RECHECK_MS}); see {@link Dispatcher.recheck}.
   */
  readonly recheckMs?: number
  /**
   * Documents whose deliveries wait (a purge owed: no delivery of an event naming a message whose
   * deletion is stored leaves the relay before the purge has removed the message's content).
   */
  readonly holds?: DeliveryHolds
}

/** Default {@link DispatcherOptions.recheckMs}. */
export const DEFAULT_RECHECK_MS = 5_000

/** Default most deliveries one lane holds in memory. */
export const DEFAULT_LANE_WINDOW = 128
/** Default most deliveries the dispatcher holds in memory across its lanes (each may still hold its head). */
export const DEFAULT_MAX_HELD = 8_192

/** A lane of `target` for `document` holding nothing yet. */
function emptyLane(target: DeliveryTarget, document: string): Lane {
  return { target, document, queue: [], after: 0, more: false, noted: 0, running: false }
}

/** Lanes a start or takeover reads the first page of at once. */
const LANES_AT_ONCE = 64

/**
 * How long a lane whose attempt found the lease lapsed (by this relay's
 * clock) is watched for the lease to be this relay's again without a
 * takeover: a renewal held up for a moment, and the lease in Redis never
 * lost. Past it, the lease was lost, and whoever orders the document next
 * reads its deliveries from the outbox (a takeover's `adopt`).
 */
const LEFT_BEHIND_WATCH_MS = 30_000

interface Lane {
  readonly target: DeliveryTarget
  readonly document: string
  /** The deliveries held in memory, in `seq` order: a window of what the outbox owes the lane. */
  readonly queue: Delivery[]
  /** Highest `seq` the lane has held: its next page is read after it. */
  after: number
  /** The outbox owes the lane deliveries its queue does not hold: a page is read once the queue drains. */
  more: boolean
  /** Counts the times {@link more} was noted: a page read meanwhile may not hold those deliveries. */
  noted: number
  /** Deliveries this process knows the outbox holds for the lane beyond its queue (for the gauge only). */
  outside?: number
  /**
   * The outbox may owe deliveries at or before {@link after} that were never
   * held (replayed dead letters, a takeover's): once the pages after the
   * cursor are exhausted, the lane reads from the start again.
   */
  rescan?: boolean
  /**
   * Found owing at a start or takeover, and no attempt of it finished in this process yet: its head
   * may be the delivery that ended the previous process, so its attempts are marked as started.
   */
  wary?: boolean
  /** The page being read, while one is. */
  reading?: Promise<void>
  /** Set while an attempt runs or a page is read. */
  running: boolean
  /** The delivery whose attempt runs: found in the queue by identity when it ends. */
  attempting?: Delivery
  timer?: NodeJS.Timeout
  /**
   * Until when the lane waits out an outbox failure (see {@link Dispatcher.markDelivered}): a time,
   * not a flag cleared by a timer of its own, because the lane's one timer is replaced by whatever
   * schedules it next (a failed read or record), and a pause whose timer was replaced never ended.
   */
  pausedUntil?: number
  /** Its deliveries whose delivered marks are not written yet. */
  unmarked?: number
  /** Waits for its document's release (see {@link DeliveryHolds}): pumped again then. */
  parked?: boolean
}

/**
 * Most deliveries of one lane whose marks may wait to be written: the lane
 * waits beyond that, so that a slow outbox holds a lane back rather than
 * piling up marks in memory.
 */
const MAX_UNMARKED_PER_LANE = 256

/**
 * Delivers the outbox: one lane per target and document, so that events reach
 * each target in order per conversation while a slow or failing target holds
 * up only its own lane. Runs entirely off the update path.
 */
export class Dispatcher {
  private readonly lanes = new Map<string, Lane>()
  private readonly targets: Map<string, DeliveryTarget>
  private readonly timeoutMs: number
  private readonly outboxRetryMs: number
  private readonly now: () => number
  private readonly waiters = new Set<() => void>()
  private readonly inFlight = new Set<Promise<void>>()
  /** Delivered marks not yet written (see {@link markDelivered}). */
  private readonly marking = new Set<Promise<void>>()
  private stopped = false
  /** Deliveries held in memory, across lanes. */
  private count = 0
  /** Room taken by pages being read (their deliveries are not counted yet). */
  private reserved = 0
  /** Lanes whose deliveries the outbox holds beyond their queue ({@link Lane.more}). */
  private owing = 0
  /** Deliveries of lanes' {@link Lane.outside}, summed. */
  private outside = 0
  private readonly laneWindow: number
  private readonly maxHeld: number
  /** The deadlines of running attempts, one set per allowance (targets may have their own: {@link DeliveryTarget.timeoutMs}). */
  private readonly deadlines = new Map<number, Deadlines>()
  /** Attempts running under a fencing token, checked every `fence.checkEveryMs` while there are any. */
  private readonly fenced = new Map<RunningAttempt, { document: string; token: number; lapse: () => void }>()
  private fenceTimer: NodeJS.Timeout | undefined
  /** Purges of the last minutes, by document, applied to what enters memory (see {@link purged}). */
  private readonly purges = new RecentPurges()
  /**
   * Lanes (by id) whose queue was dropped when the lease looked lapsed, with
   * their document and the timer watching for the lease to come back (see
   * {@link leftBehind}).
   */
  private readonly leftBehindLanes = new Map<string, { document: string; timer: NodeJS.Timeout }>()
  /** Runs {@link recheck} (with a fence only). */
  private recheckTimer: NodeJS.Timeout | undefined
  private rechecking = false

  constructor(private readonly options: DispatcherOptions) {
    this.targets = new Map(options.targets.map((t) => [t.name, t]))
    this.timeoutMs = options.timeoutMs ?? DEFAULT_HOOK_TIMEOUT_MS
    this.outboxRetryMs = options.outboxRetryMs ?? 1_000
    this.now = options.now ?? Date.now
    this.laneWindow = Math.max(1, options.laneWindow ?? DEFAULT_LANE_WINDOW)
    this.maxHeld = Math.max(1, options.maxHeld ?? DEFAULT_MAX_HELD)
    options.holds?.onRelease((document) => this.released(document))
    if (options.fence) {
      this.recheckTimer = setInterval(() => void this.recheck(), options.recheckMs ?? DEFAULT_RECHECK_MS)
      this.recheckTimer.unref?.()
    }
  }

  /**
   * A cluster's net under the lanes: the lanes (target and document) of documents this relay orders
   * whose outbox owes deliveries while no such lane is held here (nor watched, see {@link leftBehind})
   * are read from the outbox in order. Only a local enqueue or a takeover tells a dispatcher of
   * deliveries; one recorded or revived where this relay never heard of it (a dead letter replayed
   * through another relay, a record that lost the race with the takeover's read) stayed owed, never
   * attempted, for as long as the relay ran. Compared lane by lane, not document by document: a
   * document with a lane of another target held here (a slow hook, a webhook waiting out its retries
   * for hours) kept such a delivery unattempted as long as that lane lasted. A lane held here that
   * does not know of one of its own deliveries is dropped once it has delivered what it holds (see
   * `pump`), and the next look reads it. One query every few seconds (the owed lanes, as the
   * takeover reads a document's), and a document's lanes again only when one of them is not held here.
   */
  private async recheck(): Promise<void> {
    const fence = this.options.fence
    if (this.rechecking || this.stopped || !fence) return
    this.rechecking = true
    try {
      const unheld = new Set<string>()
      for (const lane of await this.options.outbox.pendingLanes()) {
        const id = `${lane.target}\u0000${lane.document}`
        if (!this.lanes.has(id) && !this.leftBehindLanes.has(id)) unheld.add(lane.document)
      }
      for (const document of unheld) {
        if (this.stopped) return
        if (fence.tokenOf(document) === undefined) continue
        // Read again now: the lane may have been paid and dropped since the list was read.
        const lanes = (await this.options.outbox.pendingLanes(document)).filter((lane) => {
          const id = `${lane.target}\u0000${lane.document}`
          return !this.lanes.has(id) && !this.leftBehindLanes.has(id)
        })
        if (lanes.length === 0 || fence.tokenOf(document) === undefined) continue
        this.options.log.warn(
          { conversationId: document, lanes: lanes.length },
          "hook deliveries owed that no lane here held (recorded or revived without this relay hearing of it): reading them from the outbox",
        )
        await this.resumeLanes(lanes)
      }
    } catch (error) {
      this.options.log.error({ err: error }, "hook outbox failed to list the lanes owing deliveries")
    } finally {
      this.rechecking = false
    }
  }

  /**
   * Picks up what the outbox still owes (after a restart): lane by lane, a
   * page at a time, never the whole backlog at once (a webhook down for hours
   * leaves more than memory holds).
   */
  async start(): Promise<void> {
    await this.resumeLanes(await this.options.outbox.pendingLanes())
  }

  /**
   * Delivers what the outbox owes for `document`, which this relay has begun
   * ordering (a cluster), paged like {@link start}. A lane still held here
   * from an earlier lease of it reads the outbox from its start again once
   * its cursor's pages are exhausted, so nothing is held twice.
   */
  async adopt(document: string): Promise<void> {
    await this.resumeLanes(await this.options.outbox.pendingLanes(document))
  }

  /** Deliveries held in memory, across lanes (at most `maxHeld`, beyond one per lane). */
  held(): number {
    return this.count
  }

  private async resumeLanes(owed: readonly OutboxLane[]): Promise<void> {
    for (const [id, left] of this.leftBehindLanes)
      if (owed.some((lane) => `${lane.target}\u0000${lane.document}` === id)) {
        clearTimeout(left.timer)
        this.leftBehindLanes.delete(id)
      }
    for (let i = 0; i < owed.length; i += LANES_AT_ONCE) {
      const reads: Promise<void>[] = []
      for (const { document, target: name } of owed.slice(i, i + LANES_AT_ONCE)) {
        const target = this.targets.get(name)
        if (!target) {
          reads.push(this.buryLane(document, name))
          continue
        }
        const id = `${name}\u0000${document}`
        let lane = this.lanes.get(id)
        if (lane) lane.rescan = true
        else {
          lane = { ...emptyLane(target, document), wary: true }
          this.lanes.set(id, lane)
        }
        this.owe(lane)
        this.pump(lane, id)
        if (lane.reading) reads.push(lane.reading)
      }
      // A start returns once every lane's first page is read (as it did when it loaded everything).
      await Promise.all(reads)
    }
  }

  /** Dead-letters, a page at a time, what the outbox owes a target no longer configured. */
  private async buryLane(document: string, name: string): Promise<void> {
    const error = `no hook or webhook named ${name} is configured`
    let after = 0
    try {
      for (;;) {
        const page = await this.options.outbox.pendingPage(document, name, after, this.laneWindow)
        for (const delivery of page) {
          this.options.log.error({ eventId: delivery.event.event.id, hook: name }, error)
          await this.bury(delivery, delivery.attempts, error)
        }
        if (page.length < this.laneWindow) return
        after = page[page.length - 1]!.seq
      }
    } catch (err) {
      this.options.log.error(
        { err, hook: name },
        "hook outbox failed to dead-letter deliveries to an unknown target",
      )
    }
  }

  /**
   * The lane's queue was dropped because the lease looked lapsed. When it was
   * not lost (a renewal held up a moment: an outside probe's 0.8 s Redis
   * stalls), this relay goes on ordering the document with no takeover, and
   * the dropped deliveries, behind the lane's cursor, were never read again:
   * they stayed owed, unattempted, for as long as the relay ran, while later
   * ones went out. So the lane is watched: the next delivery recorded for it
   * here, or the lease found this relay's again, reads the outbox from the
   * lane's start, in order.
   */
  private leftBehind(lane: Lane, id: string): void {
    if (this.stopped || this.leftBehindLanes.has(id)) return
    const fence = this.options.fence
    const every = Math.max(100, fence?.checkEveryMs ?? 1000)
    const until = this.now() + LEFT_BEHIND_WATCH_MS
    const watch = () => {
      const left = this.leftBehindLanes.get(id)
      if (!left || this.stopped) return
      if (fence?.tokenOf(lane.document) !== undefined) {
        this.leftBehindLanes.delete(id)
        this.options.log.info(
          { conversationId: lane.document, hook: lane.target.name },
          "hook deliveries left when the lease looked lapsed are this relay's again: reading them from the outbox",
        )
        // A lane made now, owing from the outbox's start: a delivery recorded while it reads them joins
        // after them (read asynchronously through `adopt`, one recorded meanwhile made a lane of its own
        // and went out first: an outside probe).
        if (!this.lanes.has(id)) {
          const again = emptyLane(lane.target, lane.document)
          this.lanes.set(id, again)
          this.owe(again)
          this.pump(again, id)
        }
        return
      }
      if (this.now() >= until) {
        this.leftBehindLanes.delete(id)
        return
      }
      left.timer = setTimeout(watch, every)
      left.timer.unref?.()
    }
    const timer = setTimeout(watch, every)
    timer.unref?.()
    this.leftBehindLanes.set(id, { document: lane.document, timer })
  }

  /** Notes that the outbox holds deliveries of `lane` beyond its queue (`known` of them counted, for the gauge). */
  private owe(lane: Lane, known = 0): void {
    if (!lane.more) {
      lane.more = true
      this.owing++
    }
    lane.noted++
    lane.outside = (lane.outside ?? 0) + known
    this.outside += known
  }

  /** Notes that the outbox holds nothing of `lane` beyond its queue (or that it is not this relay's to deliver). */
  private paid(lane: Lane): void {
    this.outside -= lane.outside ?? 0
    lane.outside = 0
    if (!lane.more) return
    lane.more = false
    this.owing--
  }

  /**
   * `parley_hook_outbox_pending`: the deliveries held plus those this process
   * left in the outbox (noted, set aside by a waiting lane, replayed); a
   * backlog found at a start or takeover counts as its pages are read.
   */
  private gauge(): void {
    this.options.metrics.pending.set(this.count + this.outside)
  }

  /**
   * Queues freshly enqueued deliveries (recorded in the outbox already). A
   * lane holds at most its window, and all lanes together at most `maxHeld`:
   * beyond that, or while the lane has older deliveries waiting in the
   * outbox, a delivery is only noted (the lane reads it in a later page), so
   * that a stalled target costs no memory per message.
   */
  add(deliveries: readonly Delivery[]): void {
    for (const delivery of deliveries) {
      const target = this.targets.get(delivery.target)
      if (!target) {
        const error = `no hook or webhook named ${delivery.target} is configured`
        this.options.log.error({ eventId: delivery.event.event.id, hook: delivery.target }, error)
        void this.bury(delivery, delivery.attempts, error)
        continue
      }
      const id = `${delivery.target}\u0000${delivery.document}`
      let lane = this.lanes.get(id)
      if (!lane) {
        lane = emptyLane(target, delivery.document)
        this.lanes.set(id, lane)
        const left = this.leftBehindLanes.get(id)
        if (left) {
          // Recorded here again, so ordered here again: what was dropped goes first, read from the outbox
          // in order with this one (held at once, it would go before them).
          clearTimeout(left.timer)
          this.leftBehindLanes.delete(id)
          this.owe(lane, 1)
          this.pump(lane, id)
          continue
        }
      }
      // Read already, in a page that ran after its enqueue committed (and before this call).
      if (delivery.seq <= lane.after) continue
      if (lane.more || lane.queue.length >= this.laneWindow || this.count + this.reserved >= this.maxHeld)
        this.owe(lane, 1)
      else {
        lane.queue.push(this.entering(delivery))
        lane.after = delivery.seq
        this.count++
      }
      this.pump(lane, id)
    }
    this.gauge()
  }

  /**
   * Moves matching dead letters back to pending and delivers them again: each
   * lane reads them from the outbox, after what it holds (paged like the rest).
   */
  async replay(filter?: DeadLetterFilter): Promise<Delivery[]> {
    const revived = await this.options.outbox.replay(filter)
    for (const delivery of revived) {
      const target = this.targets.get(delivery.target)
      if (!target) {
        this.add([delivery])
        continue
      }
      const id = `${delivery.target}\u0000${delivery.document}`
      let lane = this.lanes.get(id)
      if (lane) lane.rescan = true
      else {
        lane = emptyLane(target, delivery.document)
        this.lanes.set(id, lane)
      }
      this.owe(lane, 1)
      this.pump(lane, id)
    }
    this.gauge()
    return revived
  }

  /**
   * A purge removed content of `name` from storage (see `RelayExtension.contentPurged`): the
   * deliveries held in memory lose it too, at once, and so does every delivery of the document
   * taken in over the next minutes (a page read, or an event recorded, before the purge; an attempt
   * coming back to be retried) and every attempt started meanwhile; targets keeping content of their
   * own are told. Only an attempt already running goes on with what it was given.
   */
  purged(purge: PurgedContent): void {
    const { name, scope } = purge
    this.purges.note(name, scope)
    for (const target of this.targets.values()) {
      const lane = this.lanes.get(`${target.name}\u0000${name}`)
      if (!lane) continue
      for (let i = 0; i < lane.queue.length; i++) {
        const delivery = lane.queue[i]!
        if (delivery === lane.attempting) continue
        // As remembered, not `scope` itself: a whole purge leaves the events of a later reopen alone.
        const event = this.purges.redact(name, delivery.event)
        if (event !== delivery.event) lane.queue[i] = { ...delivery, event }
      }
    }
    for (const target of this.targets.values()) {
      try {
        target.purged?.(purge)
      } catch (error) {
        this.options.log.error(
          { err: error, hook: target.name, doc: name },
          "a target failed to purge content",
        )
      }
    }
  }

  /** The lane's document is held (see {@link DeliveryHolds}): it starts nothing until {@link released}. */
  private park(lane: Lane): void {
    clearTimeout(lane.timer)
    if (lane.parked) return
    lane.parked = true
    this.options.log.debug(
      { conversationId: lane.document, hook: lane.target.name },
      "hook deliveries held until the conversation's purge is done",
    )
  }

  /** `document` (undefined: any) is no longer held: its parked lanes go on, with what the purge left them. */
  private released(document: string | undefined): void {
    if (this.stopped) return
    const ids =
      document === undefined
        ? [...this.lanes.keys()]
        : [...this.targets.keys()].map((target) => `${target}\u0000${document}`)
    for (const id of ids) {
      const lane = this.lanes.get(id)
      if (!lane?.parked) continue
      lane.parked = false
      this.pump(lane, id)
    }
  }

  /** `delivery` without what a purge of its document in the last minutes removed (see {@link purged}). */
  private entering(delivery: Delivery): Delivery {
    if (this.purges.size === 0) return delivery
    const event = this.purges.redact(delivery.document, delivery.event)
    return event === delivery.event ? delivery : { ...delivery, event }
  }

  /** Resolves once nothing is queued or running (tests and shutdown). */
  idle(): Promise<void> {
    if (this.count === 0 && this.owing === 0 && this.marking.size === 0) return Promise.resolve()
    return new Promise((resolve) => this.waiters.add(resolve))
  }

  private wakeIfIdle(): void {
    if (this.count !== 0 || this.owing !== 0 || this.marking.size !== 0) return
    for (const resolve of this.waiters) resolve()
    this.waiters.clear()
  }

  /**
   * Stops taking new attempts and gives the running ones a moment (at most 5 s)
   * to finish, so that they are not delivered again after the restart. An
   * attempt still running then is abandoned: it stays in the outbox.
   */
  async stop(): Promise<void> {
    this.stopped = true
    clearInterval(this.recheckTimer)
    for (const left of this.leftBehindLanes.values()) clearTimeout(left.timer)
    this.leftBehindLanes.clear()
    for (const lane of this.lanes.values()) clearTimeout(lane.timer)
    let timer: NodeJS.Timeout | undefined
    const grace = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, Math.min(this.timeoutMs, 5_000))
    })
    await Promise.race([Promise.allSettled([...this.inFlight, ...this.marking]), grace])
    clearTimeout(timer)
  }

  private pump(lane: Lane, id: string): void {
    if (lane.running || this.stopped || (lane.unmarked ?? 0) >= MAX_UNMARKED_PER_LANE) return
    if (lane.pausedUntil !== undefined) {
      const left = lane.pausedUntil - this.now()
      if (left > 0) {
        clearTimeout(lane.timer)
        lane.timer = setTimeout(() => this.pump(lane, id), left)
        lane.timer.unref?.()
        return
      }
      lane.pausedUntil = undefined
    }
    const head = lane.queue[0]
    if (!head) {
      if (lane.more) this.read(lane, id)
      else this.lanes.delete(id)
      return
    }
    const wait = head.nextAttemptAt - this.now()
    if (wait > 0) {
      // A lane waiting out a retry (a stalled target) keeps only its head: the rest is read again
      // from the outbox when it goes on, so that the window is held by lanes that deliver.
      if (lane.queue.length > 1) {
        const trimmed = lane.queue.length - 1
        this.count -= trimmed
        lane.queue.length = 1
        lane.after = head.seq
        this.owe(lane, trimmed)
        this.gauge()
      }
      clearTimeout(lane.timer)
      lane.timer = setTimeout(() => this.pump(lane, id), wait)
      lane.timer.unref?.()
      return
    }
    if (lane.target.heldForPurges !== false && this.options.holds?.holds(lane.document)) {
      this.park(lane)
      return
    }
    lane.running = true
    lane.attempting = head
    // One reaction for either outcome (not a then, a catch and a finally: three promises per delivery).
    const after = (outboxFailed: boolean, held = false) => {
      lane.running = false
      lane.attempting = undefined
      this.inFlight.delete(run)
      // An attempt finished in this process: the lane's next first attempts need no start mark.
      if (!outboxFailed && !held) lane.wary = false
      if (outboxFailed) {
        // The outcome is not recorded (e.g. the outbox's database is unreachable), so the head is
        // attempted again; at once, an outage would replay it to the target in a tight loop.
        clearTimeout(lane.timer)
        lane.timer = setTimeout(() => this.pump(lane, id), this.outboxRetryMs)
        lane.timer.unref?.()
      } else this.pump(lane, id)
      this.wakeIfIdle()
    }
    const failed = (error: unknown) => {
      this.options.log.error({ err: error }, "hook outbox failed")
      after(true)
    }
    const run: Promise<void> = this.attempt(lane.target, head, lane, id).then((next) => {
      try {
        // Found by identity: a delivery whose mark failed meanwhile may have been put back before it.
        const at = lane.queue.indexOf(head)
        if (next === HELD) {
          // Not made: the head stays first, and the lane parks when pumped below.
          after(false, true)
          return
        }
        if (next === FENCED) {
          // Another relay orders the document (or may, by now): what is queued here is its to deliver.
          this.count -= lane.queue.length
          lane.queue.length = 0
          lane.rescan = false
          this.paid(lane)
          this.gauge()
          this.leftBehind(lane, id)
        } else if (at < 0) {
          // Dropped meanwhile (fenced): nothing to update.
        } else if (next) lane.queue[at] = this.entering(next)
        else {
          lane.queue.splice(at, 1)
          this.count--
          this.gauge()
        }
      } catch (error) {
        failed(error)
        return
      }
      after(false)
    }, failed)
    this.inFlight.add(run)
  }

  /**
   * Reads the lane's next page from the outbox (its queue is empty): up to
   * its window, within what all lanes may hold, but always one (so that every
   * lane goes on, however full the others are).
   */
  private read(lane: Lane, id: string): void {
    const room = Math.max(1, Math.min(this.laneWindow, this.maxHeld - this.count - this.reserved))
    const noted = lane.noted
    lane.running = true
    this.reserved += room
    const done = () => {
      lane.running = false
      this.reserved -= room
      this.inFlight.delete(run)
      lane.reading = undefined
    }
    const run: Promise<void> = (async () => {
      const page = await this.options.outbox.pendingPage(lane.document, lane.target.name, lane.after, room)
      return { page, read: page.length, last: page[page.length - 1] }
    })().then(
      ({ page, read, last }) => {
        done()
        if (last) lane.after = last.seq
        for (const delivery of page) lane.queue.push(this.entering(delivery))
        this.count += page.length
        const known = Math.min(lane.outside ?? 0, read)
        lane.outside = (lane.outside ?? 0) - known
        this.outside -= known
        this.gauge()
        if (read < room && lane.noted === noted) {
          // Nothing after the cursor is owed but what this page held.
          if (!lane.rescan) this.paid(lane)
          else if (read === 0) {
            // Read from the start only once the marks of what it delivered are written (not read back as owed).
            if ((lane.unmarked ?? 0) > 0) return this.wakeIfIdle()
            lane.rescan = false
            lane.after = 0
          }
        }
        this.pump(lane, id)
        this.wakeIfIdle()
      },
      (error: unknown) => {
        done()
        this.options.log.error({ err: error }, "hook outbox failed to read a lane's deliveries")
        clearTimeout(lane.timer)
        lane.timer = setTimeout(() => this.pump(lane, id), this.outboxRetryMs)
        lane.timer.unref?.()
      },
    )
    lane.reading = run
    this.inFlight.add(run)
  }

  /**
   * Records `delivery` as delivered without holding up its lane: the lane
   * goes on to its next delivery while the mark is written, so that marks of
   * deliveries finishing in one turn share one outbox write (a backlog's
   * deliveries would otherwise cost one commit each). A mark the outbox fails
   * to write puts the delivery back first in its lane, delivered again
   * (at least once) after a pause, as when the outbox fails to record any
   * outcome; a crash before the mark is written delivers it again too.
   */
  private markDelivered(delivery: Delivery, lane: Lane, id: string): void {
    const mark = this.options.outbox.delivered(delivery.seq, delivery.target)
    this.marking.add(mark)
    lane.unmarked = (lane.unmarked ?? 0) + 1
    const done = () => {
      this.marking.delete(mark)
      lane.unmarked = (lane.unmarked ?? 1) - 1
      // A lane held back by its unwritten marks goes on (unless it was dropped meanwhile).
      if (this.lanes.get(id) === lane) this.pump(lane, id)
      this.wakeIfIdle()
    }
    // One reaction for either outcome (not a catch and a finally).
    mark.then(done, (error: unknown) => {
      try {
        this.options.log.error({ err: error }, "hook outbox failed")
        let current = this.lanes.get(id)
        if (!current) {
          current = { ...emptyLane(lane.target, lane.document), after: delivery.seq }
          this.lanes.set(id, current)
        }
        current.queue.unshift(this.entering(delivery))
        this.count++
        this.gauge()
        // Redelivered in a tight loop while the outbox is down otherwise.
        if (current.pausedUntil === undefined || current.pausedUntil <= this.now()) {
          const paused = current
          paused.pausedUntil = this.now() + this.outboxRetryMs
          clearTimeout(paused.timer)
          paused.timer = setTimeout(() => this.pump(paused, id), this.outboxRetryMs)
          paused.timer.unref?.()
        }
      } finally {
        done()
      }
    })
  }

  /**
   * One attempt; returns the delivery to retry later, undefined when it is
   * done (delivered or dead), or {@link FENCED} when this relay may no longer
   * deliver the document's events (nothing recorded: the outbox still owes it).
   */
  private async attempt(
    target: DeliveryTarget,
    delivery: Delivery,
    lane: Lane,
    id: string,
  ): Promise<Delivery | undefined | typeof FENCED | typeof HELD> {
    const fence = this.options.fence
    let token = fence?.tokenOf(delivery.document)
    if (fence && token === undefined) return FENCED
    if (
      delivery.lastError === INTERRUPTED &&
      target.retryDelay(delivery.attempts, new Error(INTERRUPTED)) === undefined
    )
      return this.interruptedForGood(target, delivery, token)
    // A retry, or the first attempt of a lane found owing at a start: counted before it runs, so that
    // one that ends the process is counted (see markStarted). Other first attempts cost no write.
    if (delivery.attempts > 0 || lane.wary) {
      if (!(await this.markStarted(delivery, token))) {
        this.abandoned(target, delivery, "its start mark was refused (another relay holds a newer token)")
        return FENCED
      }
      // Checked last thing before the call: the lease must outlast the request's sending by a margin.
      token = fence?.tokenOf(delivery.document)
      if (fence && token === undefined) return FENCED
    }
    // Checked again last thing before the call, with no wait between: a deletion stored while the start
    // mark was written holds the document from before its append (a start mark written for an attempt
    // not made only counts one attempt more if the process ends before the next one).
    if (target.heldForPurges !== false && this.options.holds?.holds(delivery.document)) return HELD
    const started = performance.now()
    // No timer, AbortController or deadline promise per call (they were a visible part of a busy
    // relay's CPU and garbage): one timer serves every running attempt, the signal is made only for
    // a handler that asks for it, and the attempt is one promise that the call, the deadline or a
    // lapsed lease settles, whichever comes first.
    const allowance = target.timeoutMs ?? this.timeoutMs
    let deadlines = this.deadlines.get(allowance)
    if (!deadlines) {
      deadlines = new Deadlines()
      this.deadlines.set(allowance, deadlines)
    }
    const running = deadlines.start(Date.now() + allowance, delivery.attempts + 1, allowance)
    let lapsed = false
    if (fence && token !== undefined)
      this.watchLease(running, delivery.document, token, () => {
        lapsed = true
        running.fail(
          new ParleyError(
            ErrorCode.UNAVAILABLE,
            "this relay's lease on the conversation lapsed during the attempt: abandoned to its next owner",
          ),
        )
      })
    try {
      // A purge may have landed while the start mark was written.
      await running.run(target, this.entering(delivery).event)
    } catch (error) {
      if (lapsed) {
        this.abandoned(target, delivery, "its lease lapsed during the attempt")
        return FENCED
      }
      return this.failed(target, delivery, running.attempt, error, token)
    } finally {
      deadlines.finish(running)
      this.fenced.delete(running)
      this.options.metrics.duration.observe(
        this.labelsOf(target).target,
        (performance.now() - started) / 1000,
      )
    }
    this.options.metrics.attempts.inc(this.labelsOf(target).ok)
    if (fence && token !== undefined) {
      if (!(await fence.delivered(delivery, token))) {
        this.abandoned(target, delivery, "its delivery mark was refused (another relay holds a newer token)")
        return FENCED
      }
    } else this.markDelivered(delivery, lane, id)
    return undefined
  }

  /**
   * Records, before an attempt runs, that it started: the next attempt's number as the delivery's
   * attempts, {@link INTERRUPTED} as its last error, due at once. The attempt's outcome overwrites
   * it (a delivered mark, a retry or a deferral); found at a start or takeover, it tells an attempt
   * that was running when the process ended (or the lease was lost), maybe because of it: a hook
   * that ends the process on one event (a throw from a timer, memory without bound, an endless
   * loop) is then counted on every restart and dead-lettered once its attempts are spent, instead of
   * given the same event forever. A delivery only waiting for its retry, or never attempted, carries
   * no such mark and is not counted; an interrupted one is tried again at once (the target did not
   * fail it). False when the fence refused the mark.
   */
  private async markStarted(delivery: Delivery, token: number | undefined): Promise<boolean> {
    const attempts = delivery.attempts + 1
    const at = this.now()
    if (this.options.fence && token !== undefined)
      return this.options.fence.retryLater(delivery, token, attempts, at, INTERRUPTED)
    await this.options.outbox.retryLater(delivery.seq, delivery.target, attempts, at, INTERRUPTED)
    return true
  }

  /** Dead-letters a delivery whose last attempt was interrupted and whose attempts are spent. */
  private async interruptedForGood(
    target: DeliveryTarget,
    delivery: Delivery,
    token: number | undefined,
  ): Promise<undefined | typeof FENCED> {
    this.options.log.error(
      {
        hook: target.name,
        eventId: delivery.event.event.id,
        conversationId: delivery.document,
        attempt: delivery.attempts,
      },
      "hook delivery interrupted by the end of the process on every attempt: moved to dead letters",
    )
    this.options.metrics.attempts.inc({ target: target.name, outcome: "dead" })
    if (await this.bury(delivery, delivery.attempts, INTERRUPTED, token)) return undefined
    this.abandoned(target, delivery, "its dead-letter mark was refused (another relay holds a newer token)")
    return FENCED
  }

  /** The metric labels of each target's every attempt, made once (not two objects per delivery). */
  private readonly labels = new Map<
    DeliveryTarget,
    { readonly target: { target: string }; readonly ok: { target: string; outcome: string } }
  >()

  private labelsOf(target: DeliveryTarget) {
    let labels = this.labels.get(target)
    if (!labels) {
      labels = { target: { target: target.name }, ok: { target: target.name, outcome: "ok" } }
      this.labels.set(target, labels)
    }
    return labels
  }

  /** Aborts `running` through `lapse` once `document`'s lease no longer carries `token` by this relay's clock. */
  private watchLease(running: RunningAttempt, document: string, token: number, lapse: () => void): void {
    this.fenced.set(running, { document, token, lapse })
    if (this.fenceTimer) return
    this.fenceTimer = setInterval(() => {
      for (const [attempt, watched] of this.fenced) {
        if (this.options.fence!.tokenOf(watched.document) === watched.token) continue
        this.fenced.delete(attempt)
        watched.lapse()
      }
      if (this.fenced.size === 0) {
        clearInterval(this.fenceTimer)
        this.fenceTimer = undefined
      }
    }, this.options.fence!.checkEveryMs)
    this.fenceTimer.unref?.()
  }

  private abandoned(target: DeliveryTarget, delivery: Delivery, why: string): void {
    this.options.metrics.attempts.inc({ target: target.name, outcome: "fenced" })
    this.options.log.warn(
      { hook: target.name, eventId: delivery.event.event.id, conversationId: delivery.document },
      `left the conversation's deliveries to its next owner: ${why}`,
    )
  }

  private async failed(
    target: DeliveryTarget,
    delivery: Delivery,
    attempt: number,
    error: unknown,
    token: number | undefined,
  ): Promise<Delivery | undefined | typeof FENCED> {
    const message = error instanceof Error ? error.message : String(error)
    if (error instanceof DeferDelivery) {
      // A deferral is a retry mark that does not count as an attempt: fenced like one.
      if (this.options.fence && token !== undefined) {
        if (
          !(await this.options.fence.retryLater(delivery, token, delivery.attempts, error.until, message))
        ) {
          this.abandoned(
            target,
            delivery,
            "its deferral mark was refused (another relay holds a newer token)",
          )
          return FENCED
        }
      } else
        await this.options.outbox.retryLater(
          delivery.seq,
          delivery.target,
          delivery.attempts,
          error.until,
          message,
        )
      return { ...delivery, nextAttemptAt: error.until, lastError: message }
    }
    const delay = error instanceof PermanentDeliveryError ? undefined : target.retryDelay(attempt, error)
    const fields = {
      hook: target.name,
      eventId: delivery.event.event.id,
      eventType: delivery.event.event.type,
      conversationId: delivery.document,
      attempt,
    }
    if (delay === undefined) {
      this.options.log.error(
        { ...fields, err: error },
        "hook delivery failed for good: moved to dead letters",
      )
      this.options.metrics.attempts.inc({ target: target.name, outcome: "dead" })
      if (!(await this.bury(delivery, attempt, message, token))) {
        this.abandoned(
          target,
          delivery,
          "its dead-letter mark was refused (another relay holds a newer token)",
        )
        return FENCED
      }
      return undefined
    }
    this.options.log.warn({ ...fields, err: error, retryInMs: delay }, "hook delivery failed, will retry")
    this.options.metrics.attempts.inc({ target: target.name, outcome: "retry" })
    const nextAttemptAt = this.now() + delay
    if (this.options.fence && token !== undefined) {
      if (!(await this.options.fence.retryLater(delivery, token, attempt, nextAttemptAt, message))) {
        this.abandoned(target, delivery, "its retry mark was refused (another relay holds a newer token)")
        return FENCED
      }
    } else
      await this.options.outbox.retryLater(delivery.seq, delivery.target, attempt, nextAttemptAt, message)
    return { ...delivery, attempts: attempt, nextAttemptAt, lastError: message }
  }

  /** Dead-letters `delivery`; false when its fence refused (the document's owner buries it, not this relay). */
  private async bury(delivery: Delivery, attempts: number, error: string, token?: number): Promise<boolean> {
    const fence = this.options.fence
    if (fence) {
      const current = token ?? fence.tokenOf(delivery.document)
      if (current === undefined || !(await fence.deadLetter(delivery, current, attempts, error, this.now())))
        return false
    } else await this.options.outbox.deadLetter(delivery.seq, delivery.target, attempts, error, this.now())
    this.options.metrics.deadLetters.inc({ target: delivery.target })
    return true
  }
}

/**
 * A running attempt, as {@link Deadlines} tracks it; also what the target is
 * given (`attempt`, `signal`). An object with methods, not closures and
 * promises made for every attempt (one per delivery).
 */
class RunningAttempt implements DeliveryAttempt {
  private controller: AbortController | undefined
  private listener: ((reason: unknown) => void) | undefined
  private aborted = false
  private reason: unknown
  private settle: { resolve: () => void; reject: (error: unknown) => void } | undefined

  constructor(
    readonly deadline: number,
    /** The attempt's number (1 for the first), as the target is told. */
    readonly attempt: number,
    private readonly timeoutMs: number,
  ) {}

  /** The attempt's signal, made on first use (aborted already if the attempt expired or was abandoned). */
  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController()
      if (this.aborted) this.controller.abort(this.reason)
    }
    return this.controller.signal
  }

  /**
   * Calls `target.deliver`; settles as the call does, or rejects at the
   * deadline ({@link expire}) or when abandoned ({@link fail}), whichever
   * comes first. A target that throws synchronously rejects it too.
   */
  run(target: DeliveryTarget, event: HookEvent): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.settle = { resolve, reject }
      // Called in a later microtask, as before (the dispatcher's caller finishes its bookkeeping first).
      queueMicrotask(() => {
        if (this.aborted) return
        try {
          const result: unknown = target.deliver(event, this)
          if (typeof (result as PromiseLike<void> | undefined)?.then === "function")
            (result as PromiseLike<void>).then(resolve, reject)
          else resolve()
        } catch (error) {
          reject(error)
        }
      })
    })
  }

  /** The deadline passed before the attempt finished: aborts it and fails it with TIMEOUT. */
  expire(): void {
    this.fail(new ParleyError(ErrorCode.TIMEOUT, `timed out after ${this.timeoutMs} ms`))
  }

  onAbort(listener: (reason: unknown) => void): void {
    this.listener = listener
  }

  /** Aborts the attempt's signal with `error` and fails the attempt with it (if still running). */
  fail(error: unknown): void {
    if (this.aborted) return
    this.aborted = true
    this.reason = error
    this.controller?.abort(error)
    this.listener?.(error)
    this.settle?.reject(error)
  }
}

/**
 * The deadlines of running attempts, served by one timer: attempts all get
 * the same allowance, so they expire in the order they started, and the
 * timer only ever waits for the oldest one still running.
 */
class Deadlines {
  private readonly running = new Set<RunningAttempt>()
  private timer: NodeJS.Timeout | undefined

  start(deadline: number, attempt: number, timeoutMs: number): RunningAttempt {
    const running = new RunningAttempt(deadline, attempt, timeoutMs)
    this.running.add(running)
    if (!this.timer) this.schedule()
    return running
  }

  finish(running: RunningAttempt): void {
    this.running.delete(running)
  }

  private schedule(): void {
    const oldest = this.running.values().next().value as RunningAttempt | undefined
    if (!oldest) {
      this.timer = undefined
      return
    }
    this.timer = setTimeout(() => this.sweep(), Math.max(0, oldest.deadline - Date.now()))
    this.timer.unref?.()
  }

  private sweep(): void {
    const now = Date.now()
    for (const running of this.running) {
      if (running.deadline > now) break
      this.running.delete(running)
      running.expire()
    }
    this.schedule()
  }
}
