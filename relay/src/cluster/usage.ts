import type { UserId } from "@parley/shared"
import type { Redis } from "ioredis"
import type { Logger } from "../log.js"
import type { HeldElsewhere, OtherRelays, UsageReport, UserLedger } from "../user-limits.js"

/** Default time between two reports of a relay's per-user usage to the others. */
export const DEFAULT_USAGE_INTERVAL_MS = 250

/** A report stops counting after this many intervals without a newer one (its relay died or lost Redis). */
const REPORT_LIFETIMES = 4

/** Delay before an early report, after a heavy user's connections changed (so that a burst is one report). */
const EARLY_REPORT_MS = 10

/** What travels on the usage channel: one relay's reports since its last message. */
interface UsageMessage {
  readonly from: string
  /**
   * `[user, sockets, documents, updates, conversations, participants, connectionAttempts, answerBytes,
   * storedBytes]` per user (a relay of an earlier version sends no `answerBytes` or `storedBytes`: read
   * as 0; one of an earlier version reading this ignores what it does not know).
   */
  readonly users: readonly Row[]
}

/** One user's report on the channel (see {@link UsageMessage}). */
type Row = readonly [string, number, number, number, number, number, number, number, number]

const count = (value: unknown): number =>
  typeof value === "number" && Number.isSafeInteger(value) && value >= 0 ? value : 0

/** The message's reports, or undefined when it is not one (another version, garbage on the channel). */
function decode(bytes: Buffer): UsageMessage | undefined {
  let value: unknown
  try {
    value = JSON.parse(bytes.toString("utf8"))
  } catch {
    return undefined
  }
  const message = value as { from?: unknown; users?: unknown }
  if (typeof message?.from !== "string" || !Array.isArray(message.users)) return undefined
  const users: Row[] = []
  for (const entry of message.users) {
    if (!Array.isArray(entry) || typeof entry[0] !== "string") continue
    users.push([
      entry[0],
      count(entry[1]),
      count(entry[2]),
      count(entry[3]),
      count(entry[4]),
      count(entry[5]),
      count(entry[6]),
      count(entry[7]),
      count(entry[8]),
    ])
  }
  return { from: message.from, users }
}

/**
 * Per-user limits across the relays of a cluster. Each relay publishes on one
 * Redis channel, every {@link DEFAULT_USAGE_INTERVAL_MS}, what its users spent
 * of their update, creation and connection budgets (every relay takes it from
 * its own buckets too, into debt if need be) and of the bytes answered to their requests, and how many connections and
 * documents its heavy users hold (a user holding an eighth of a limit or
 * more; a change is reported within ~10 ms). So a user's budgets are the
 * user's across the cluster, whatever the load balancer does, to within what
 * the relays admit in one interval. Bytes waiting in a relay's queues stay
 * counted per relay: they are that relay's memory.
 *
 * Redis down: nothing is reported, and each relay counts what it sees (the
 * limits hold per relay); reports of a relay that stopped stop counting after
 * four intervals.
 */
export class ClusterUsage implements OtherRelays {
  /** user → relay → what that relay last reported the user holds, and until when it counts. */
  private readonly heldBy = new Map<UserId, Map<string, HeldElsewhere & { until: number }>>()
  private readonly timer: NodeJS.Timeout
  private early: NodeJS.Timeout | undefined
  private publishing = false
  private failing = false
  private closed = false

  constructor(
    private readonly redis: Redis,
    readonly channel: string,
    private readonly relayId: string,
    private readonly ledger: UserLedger,
    private readonly log: Logger,
    private readonly intervalMs = DEFAULT_USAGE_INTERVAL_MS,
  ) {
    ledger.shareWith(this)
    this.timer = setInterval(() => this.report(), intervalMs)
    this.timer.unref()
  }

  held(user: UserId): HeldElsewhere | undefined {
    const relays = this.reportsOf(user)
    if (!relays) return undefined
    let sockets = 0
    let documents = 0
    for (const held of relays.values()) {
      sockets += held.sockets
      documents += held.documents
    }
    return { sockets, documents }
  }

  /** The other relays' current reports of what `user` holds (stale ones dropped), if any. */
  private reportsOf(user: UserId, now = Date.now()): Map<string, HeldElsewhere> | undefined {
    const relays = this.heldBy.get(user)
    if (!relays) return undefined
    for (const [relay, held] of relays) if (held.until < now) relays.delete(relay)
    if (relays.size > 0) return relays
    this.heldBy.delete(user)
    return undefined
  }

  changed(): void {
    if (this.early || this.closed) return
    this.early = setTimeout(() => {
      this.early = undefined
      this.report()
    }, EARLY_REPORT_MS)
    this.early.unref()
  }

  /** Takes in a message from the usage channel (the cluster's subscriber hands it over). */
  received(bytes: Buffer): void {
    const message = decode(bytes)
    if (!message || message.from === this.relayId) return
    const until = Date.now() + this.intervalMs * REPORT_LIFETIMES
    for (const [
      name,
      sockets,
      documents,
      updates,
      conversations,
      participants,
      connectionAttempts,
      answerBytes,
      storedBytes,
    ] of message.users) {
      const user = name as UserId
      let relays = this.heldBy.get(user)
      if (sockets > 0 || documents > 0) {
        if (!relays) {
          relays = new Map()
          this.heldBy.set(user, relays)
        }
        relays.set(message.from, { sockets, documents, until })
      } else if (relays) {
        relays.delete(message.from)
        if (relays.size === 0) this.heldBy.delete(user)
      }
      this.ledger.spentElsewhere(user, {
        updates,
        conversations,
        participants,
        connectionAttempts,
        answerBytes,
        storedBytes,
      })
      if (sockets > 0 || documents > 0) this.enforce(user)
    }
  }

  /**
   * Connections (and documents) opened on several relays at once may add up to more than the
   * limit before any report arrives: the relays share the limit in the order
   * of their ids (the first keeps what it holds, the next what is left, and so
   * on), so each closes its newest beyond its share and none closes more.
   */
  private enforce(user: UserId): void {
    const relays = this.reportsOf(user)
    if (!relays) return
    const { maxSocketsPerUser, maxDocumentsPerUser } = this.ledger.limits
    let sockets = 0
    let documents = 0
    for (const [relay, held] of relays)
      if (relay < this.relayId) {
        sockets += held.sockets
        documents += held.documents
      }
    if (maxSocketsPerUser > 0) this.ledger.trimSockets(user, maxSocketsPerUser - sockets)
    if (maxDocumentsPerUser > 0) this.ledger.trimDocuments(user, maxDocumentsPerUser - documents)
  }

  private report(): void {
    if (this.closed || this.publishing) return
    this.prune()
    const reports = this.ledger.takeReport()
    if (reports.length === 0) return
    const message: UsageMessage = { from: this.relayId, users: reports.map(row) }
    this.publishing = true
    this.redis
      .publish(this.channel, JSON.stringify(message))
      .then(
        () => {
          if (this.failing) this.log.info("per-user usage is shared with the other relays again")
          this.failing = false
        },
        (error: unknown) => {
          // What was spent meanwhile is not told again: the other relays undercount for one interval.
          if (!this.failing)
            this.log.warn({ err: error }, "could not share per-user usage: limits count this relay only")
          this.failing = true
        },
      )
      .finally(() => {
        this.publishing = false
      })
  }

  /** Drops reports of relays that stopped reporting (died, lost Redis), and users nobody reports. */
  private prune(): void {
    const now = Date.now()
    for (const user of this.heldBy.keys()) this.reportsOf(user, now)
  }

  close(): void {
    this.closed = true
    clearInterval(this.timer)
    clearTimeout(this.early)
  }
}

const row = (r: UsageReport): Row => [
  r.user,
  r.sockets,
  r.documents,
  r.updates,
  r.conversations,
  r.participants,
  r.connectionAttempts,
  r.answerBytes,
  r.storedBytes,
]
