import { CloseCode, ErrorCode, inboxDocumentName, ParleyError, type UserId, UserLimit } from "@parley/shared"
import { FairShare } from "./fair-share.js"
import type { Principal } from "./principal.js"
import { RateLimiter } from "./rate-limit.js"

/**
 * Limits per user (token subject), across all of the user's connections: a
 * per-connection limit alone is multiplied by opening more connections. A
 * value of 0 turns a limit off. Service tokens and the relay's own writes are
 * not limited per user (they are the operator's).
 */
export interface UserLimits {
  /** Connections one user may have open at once; beyond, new ones are closed (4429 `sockets-per-user`). */
  readonly maxSocketsPerUser: number
  /**
   * Documents one user may have open at once, not counting the user's own inbox; beyond, opening
   * another is refused (4429 `documents-per-user`).
   */
  readonly maxDocumentsPerUser: number
  /**
   * Connections to documents one user may have open at once, each multiplexed
   * channel counted (a socket counts once toward `maxSocketsPerUser` however
   * many channels it carries); beyond, a new one is refused (4429
   * `connections-per-user`).
   */
  readonly maxConnectionsPerUser: number
  /** Updates per second one user may send on average, across connections (see {@link updateCost}). */
  readonly userUpdatesPerSecond: number
  /** Updates one user may send in a burst. */
  readonly userUpdateBurst: number
  /** Update bytes of one user that may wait in documents' queues at once (then 4429 `pending-bytes-per-user`). */
  readonly maxPendingBytesPerUser: number
  /**
   * Bytes queued to one user's connections, unread, at once: every connection's
   * send queue including the answers to its sync requests, except the largest
   * single initial sync (so one conversation of any size still downloads).
   * Beyond, the connection holding the most is closed (4429 `queued-bytes-per-user`).
   */
  readonly maxQueuedBytesPerUser: number
  /** Conversations one user may create per minute (then `RATE_LIMITED`, rule `conversations-per-minute`). */
  readonly userConversationsPerMinute: number
  /** Participants one user may add per minute, others than themselves (then `RATE_LIMITED`, rule `participants-per-minute`). */
  readonly userParticipantsPerMinute: number
  /**
   * Connection attempts (WebSocket connections with a valid token) one user
   * may make per minute, across all their devices: a bucket of this many,
   * refilled over a minute. Each attempt costs a token verification, a
   * document load and a sync; beyond, 4429 `connection-attempts-per-user`.
   * A token refresh over an open socket takes one too (a verification).
   */
  readonly userConnectionAttemptsPerMinute: number
  /**
   * Bytes of answers to a user's requests the relay may send per second on
   * average, across connections: sync step 2 answers (an encoding of what the
   * client's state vector lacks: up to the whole live document for a request
   * of a few bytes), presence listings, history pages. Beyond, answers wait
   * until the budget refills (a connection's requests meanwhile fold into one).
   */
  readonly userAnswerBytesPerSecond: number
  /** Answer bytes one user may be sent in a burst (a new device opening every conversation at once). */
  readonly userAnswerBurstBytes: number
  /**
   * HTTP requests one user may make per second on average with their own
   * token (or a signed URL of theirs), across tokens and devices: attachment
   * downloads, signed URLs, uploads, push registrations, link previews. Each
   * costs a token verification, a record read and an access check that may
   * load the conversation, whatever it returns (a `Range: bytes=0-0` sends one
   * byte). Beyond, 429 `http-requests-per-user` with `Retry-After`.
   */
  readonly userHttpRequestsPerSecond: number
  /** HTTP requests one user may make in a burst (a conversation of images opening). */
  readonly userHttpRequestBurst: number
  /**
   * Sealed history segments the relay may read and decode for one user's
   * changes per minute, across connections and conversations (a bucket of
   * this many, refilled over a minute): an edit, reaction, deletion or pin
   * of a sealed message needs the segment holding it (a few milliseconds
   * each), and a change of a few bytes may name messages in many. Beyond,
   * such a change is refused with the retryable `RATE_LIMITED`
   * (`sealed-reads-per-user`) and nothing is read.
   */
  readonly userSealedReadsPerMinute: number
  /**
   * Bytes of one user's changes the relay may store per day (a bucket of this
   * many, refilled over 24 hours), across connections, documents, relays of a
   * cluster and HTTP API writes: what one account can add to the disk. The
   * update rate alone lets an account store about 1.6 MB a second, over a
   * hundred gigabytes a day. Beyond, a change is refused with the retryable
   * `RATE_LIMITED` (`update-bytes-per-day`) before it is decoded.
   */
  readonly userUpdateBytesPerDay: number
  /**
   * Bytes of frames the relay reads from one user's connections per second
   * on average, across connections: every frame costs the relay its
   * unmasking and reading (about 1.8 ms of CPU per megabyte), whether it is
   * then applied, dropped (an awareness echo) or refused, and a connection
   * may send hundreds of frames a second. Beyond, the connection that went
   * over is not read until the budget is back (TCP holds the sender);
   * nothing is refused or closed. Per relay.
   */
  readonly userReceiveBytesPerSecond: number
  /** Bytes one user's connections may send in a burst (an offline device's backlog, sent at once). */
  readonly userReceiveBurstBytes: number
}

/** Defaults of {@link UserLimits}. */
export const DEFAULT_USER_LIMITS: UserLimits = {
  maxSocketsPerUser: 256,
  maxDocumentsPerUser: 128,
  // Every connection costs its document's senders a share of their update budget and the relay
  // memory (an outside probe held 3,766 channels to one group over 3 sockets, ~10 KB each, until the
  // group's honest members were closed 4429). An SDK device holds its inbox and the conversations open
  // on screen; 512 is several devices with dozens each.
  maxConnectionsPerUser: 512,
  userUpdatesPerSecond: 100,
  userUpdateBurst: 1000,
  maxPendingBytesPerUser: 32 * 1024 * 1024,
  maxQueuedBytesPerUser: 32 * 1024 * 1024,
  userConversationsPerMinute: 30,
  userParticipantsPerMinute: 1_000,
  // Every socket of a user at --max-sockets-per-user reconnecting after a network blip, twice in a
  // minute, fits; a reconnect loop is held to 10 a second.
  userConnectionAttemptsPerMinute: 600,
  // Encoding 4 MiB of a live document costs the relay about 25 ms: a user asking without end costs
  // a fortieth of a core, like one at the update budget. A new device's first sync of 64 MiB fits.
  userAnswerBytesPerSecond: 4 * 1024 * 1024,
  userAnswerBurstBytes: 64 * 1024 * 1024,
  // One request costs the relay up to about a millisecond (a token verification, a record read, an
  // access check): a user asking without end costs a fiftieth of a core. A conversation of 100 images
  // opening (a signed URL and a thumbnail each) fits in the burst.
  userHttpRequestsPerSecond: 20,
  userHttpRequestBurst: 200,
  // A segment read and decoded costs about a millisecond or two: a user spending the bucket without
  // end costs a few thousandths of a core. An offline device's few dozen operations on sealed messages
  // (each segment read once, then held) fit several times over.
  userSealedReadsPerMinute: 256,
  // A very busy person writes a few megabytes a day; an offline device's whole backlog is a few more.
  // One account fills 256 MiB a day at most: 7.5 GiB a month, instead of the update rate's 130 GiB a day.
  userUpdateBytesPerDay: 256 * 1024 * 1024,
  // Twice what the update budget lets through (100 a second of 16 KB each: 1.6 MB/s; bursts of 16 MB),
  // so that it never slows an honest writer; a user spending it without end costs under 1 % of a core.
  userReceiveBytesPerSecond: 4 * 1024 * 1024,
  userReceiveBurstBytes: 32 * 1024 * 1024,
}

/**
 * Answer bytes every answer to a request costs beyond its own size: sending
 * one (a socket write, the request's dispatch, the answer's frame) costs the
 * relay 10-20 µs however small it is, as much as encoding a few kilobytes of
 * it. Charged at its size alone, an answer of a few bytes to an up-to-date
 * state vector was almost free, and one user's 250 sockets had 22,000 of them
 * answered a second (43 % of the relay's CPU, measured).
 */
export const ANSWER_BASE_BYTES = 4096

/** Update bytes that cost one more token of the update budget. */
export const UPDATE_COST_BYTES = 16 * 1024

/** Values (messages, reactions, markers...) that cost one more token, counted once the update is checked. */
export const UPDATE_COST_VALUES = 16

/** Connections to a document that cost one more token for each update to it: each is sent the change. */
export const UPDATE_COST_RECIPIENTS = 100

/**
 * What one update costs of its user's update budget when it arrives: one,
 * plus one per {@link UPDATE_COST_BYTES}, because what an update costs the
 * relay to check and store grows with its size, plus one per
 * {@link UPDATE_COST_RECIPIENTS} connections it will be sent to. Once checked,
 * its values may cost more ({@link UserLedger.chargeValues}).
 */
export const updateCost = (bytes: number, recipients = 0): number =>
  1 + Math.floor(bytes / UPDATE_COST_BYTES) + Math.floor(recipients / UPDATE_COST_RECIPIENTS)

/** A connection as the ledger sees it (the transport's socket). */
export interface UserSocket {
  /** Bytes queued to the client and not yet read. */
  buffered(): number
  /** Of those, the bytes of its unread initial sync (the answer to its sync request). */
  initialSyncBytes(): number
  /** True once the connection is being closed (its queue still holds memory until it is gone). */
  closing(): boolean
  /** Closes the connection. */
  close(code: number, reason: string): void
}

/** What a change does that a user's per-minute budgets count. */
export interface Growth {
  /** It creates the conversation. */
  readonly creates: boolean
  /** Participants it adds, other than the sender. */
  readonly participantsAdded: number
}

const limited = (limit: UserLimit, message: string) =>
  new ParleyError(ErrorCode.RATE_LIMITED, message, { rule: limit })

/** What one user spent of the per-user budgets since it was last reported to the other relays. */
export interface Spent {
  updates: number
  conversations: number
  participants: number
  connectionAttempts: number
  answerBytes: number
  storedBytes: number
}

/** One user's usage on this relay, as reported to the other relays of a cluster ({@link UserLedger.takeReport}). */
export interface UsageReport extends Readonly<Spent> {
  readonly user: UserId
  /** Connections the user has open here (0 when under an eighth of the limit: see {@link HELD_SHARE}). */
  readonly sockets: number
  /** Documents the user has open here (likewise). */
  readonly documents: number
}

/** Sockets and documents a user holds on the other relays of a cluster, as they last reported. */
export interface HeldElsewhere {
  readonly sockets: number
  readonly documents: number
}

/** What the ledger learns of the other relays of a cluster (`relay/src/cluster/usage.ts`). */
export interface OtherRelays {
  /** What `user` holds open on the other relays, or undefined when none reported anything. */
  held(user: UserId): HeldElsewhere | undefined
  /** Called when a user's connections or documents here cross a reporting threshold: report soon. */
  changed(): void
}

/**
 * A user's connections and documents on one relay are reported to the others
 * once they reach this fraction of the limit: an honest user's few sockets
 * cost the cluster nothing, and a user spread over N relays below it holds at
 * most the limit plus N times an eighth of it.
 */
export const HELD_SHARE = 1 / 8

const noneSpent = (): Spent => ({
  updates: 0,
  conversations: 0,
  participants: 0,
  connectionAttempts: 0,
  answerBytes: 0,
  storedBytes: 0,
})

const spentAny = (spent: Readonly<Spent>): boolean =>
  spent.updates +
    spent.conversations +
    spent.participants +
    spent.connectionAttempts +
    spent.answerBytes +
    spent.storedBytes >
  0

/** One user's usage; dropped once the user has nothing open and every budget has refilled. */
class Usage {
  readonly sockets = new Set<UserSocket>()
  /** Open documents → connections to each, oldest first. */
  readonly documents = new Map<string, number>()
  /** Connections to documents, all together (the sum of {@link documents}' counts). */
  connections = 0
  /** How to close each connection to each open document, for {@link UserLedger.trimDocuments}. */
  readonly documentClosers = new Map<string, Set<() => void>>()
  pendingBytes = 0
  /**
   * Answers waiting for the answer budget, in the order they were asked, and
   * the one timer that serves them (see {@link UserLedger.whenAnswerable}).
   */
  readonly answerWaiters = new Set<() => void>()
  answerTimer: NodeJS.Timeout | undefined
  /** Spent since the last report, when this relay is in a cluster. */
  spent: Spent | undefined
  forgetTimer: NodeJS.Timeout | undefined
  readonly connectionAttempts: RateLimiter | undefined
  // The other budgets are made when first spent: most connected users write nothing most of the time.
  private updateBudget: RateLimiter | undefined
  private conversationBudget: RateLimiter | undefined
  private participantBudget: RateLimiter | undefined
  private answerBudget: RateLimiter | undefined
  private requestBudget: RateLimiter | undefined
  private sealedReadBudget: RateLimiter | undefined
  private storedBytesBudget: RateLimiter | undefined
  private receiveBudget: RateLimiter | undefined

  constructor(
    private readonly limits: UserLimits,
    private readonly now: () => number,
  ) {
    this.connectionAttempts = perMinute(limits.userConnectionAttemptsPerMinute, now)
  }

  get updates(): RateLimiter | undefined {
    this.updateBudget ??= perSecond(this.limits.userUpdatesPerSecond, this.limits.userUpdateBurst, this.now)
    return this.updateBudget
  }

  get conversations(): RateLimiter | undefined {
    this.conversationBudget ??= perMinute(this.limits.userConversationsPerMinute, this.now)
    return this.conversationBudget
  }

  get participants(): RateLimiter | undefined {
    this.participantBudget ??= perMinute(this.limits.userParticipantsPerMinute, this.now)
    return this.participantBudget
  }

  get answers(): RateLimiter | undefined {
    this.answerBudget ??= perSecond(
      this.limits.userAnswerBytesPerSecond,
      this.limits.userAnswerBurstBytes,
      this.now,
    )
    return this.answerBudget
  }

  get requests(): RateLimiter | undefined {
    this.requestBudget ??= perSecond(
      this.limits.userHttpRequestsPerSecond,
      this.limits.userHttpRequestBurst,
      this.now,
    )
    return this.requestBudget
  }

  get sealedReads(): RateLimiter | undefined {
    this.sealedReadBudget ??= perMinute(this.limits.userSealedReadsPerMinute, this.now)
    return this.sealedReadBudget
  }

  get storedBytes(): RateLimiter | undefined {
    const perDay = this.limits.userUpdateBytesPerDay
    this.storedBytesBudget ??= perDay > 0 ? new RateLimiter(perDay / 86_400, perDay, this.now) : undefined
    return this.storedBytesBudget
  }

  get receives(): RateLimiter | undefined {
    this.receiveBudget ??= perSecond(
      this.limits.userReceiveBytesPerSecond,
      this.limits.userReceiveBurstBytes,
      this.now,
    )
    return this.receiveBudget
  }

  /** The answer budget if anything was answered yet (a user never answered waits for nothing). */
  get answersIfAny(): RateLimiter | undefined {
    return this.answerBudget
  }

  get inUse(): boolean {
    return (
      this.sockets.size > 0 || this.documents.size > 0 || this.pendingBytes > 0 || this.answerWaiters.size > 0
    )
  }

  /** How long until every budget is full again, i.e. until forgetting the user changes nothing. */
  msUntilRefilled(): number {
    return Math.max(
      this.updateBudget?.msUntilFull() ?? 0,
      this.conversationBudget?.msUntilFull() ?? 0,
      this.participantBudget?.msUntilFull() ?? 0,
      this.connectionAttempts?.msUntilFull() ?? 0,
      this.answerBudget?.msUntilFull() ?? 0,
      this.requestBudget?.msUntilFull() ?? 0,
      this.sealedReadBudget?.msUntilFull() ?? 0,
      this.storedBytesBudget?.msUntilFull() ?? 0,
      this.receiveBudget?.msUntilFull() ?? 0,
    )
  }
}

/** A budget of `n` a second, in bursts of up to `burst` (at least 1); none when `n` is 0. */
function perSecond(n: number, burst: number, now: () => number): RateLimiter | undefined {
  return n > 0 ? new RateLimiter(n, Math.max(1, burst), now) : undefined
}

/** A budget of `n` a minute (a bucket of `n`, refilled over a minute); none when `n` is 0. */
function perMinute(n: number, now: () => number): RateLimiter | undefined {
  return n > 0 ? new RateLimiter(n / 60, n, now) : undefined
}

/**
 * Sockets a user may hold that a newcomer never closes when the relay is full
 * (see {@link UserLedger.shareSockets}): an SDK device holds one, a stock
 * client one per open conversation.
 */
export const FAIR_SOCKETS = 8

/** Sockets of `sockets` not closing. */
function liveSockets(sockets: ReadonlySet<UserSocket>): number {
  let live = 0
  for (const socket of sockets) if (!socket.closing()) live++
  return live
}

/**
 * Connections of a relay's cap kept from users' sockets (see
 * {@link UserLedger.shareSockets}): a sixteenth of the cap, at least 8 (or a
 * quarter of a smaller cap) and at most 1,024.
 */
export function connectionReserve(maxConnections: number): number {
  return Math.min(1024, Math.max(Math.min(8, Math.floor(maxConnections / 4)), Math.ceil(maxConnections / 16)))
}

/**
 * The relay's per-user bookkeeping: who has how many connections and
 * documents open, how much of their update budget is left, how many bytes
 * they have waiting in either direction. The transport, the core and the
 * update path consult it; each refusal is a `RATE_LIMITED` {@link ParleyError}
 * whose `rule` names the {@link UserLimit}.
 *
 * Memory: a user's entry exists while they have a connection, an open
 * document or an update waiting, and after that only until their budgets
 * have refilled (at most a minute; closing every connection must not reset a
 * budget), then it is deleted.
 */
export class UserLedger {
  /** Shares the relay between users when it is saturated (see {@link FairShare}): fed what each spends of the update budget. */
  readonly fair = new FairShare()
  private readonly users = new Map<UserId, Usage>()
  /** In a cluster: what the other relays hold, and the users with something to report. */
  private others: OtherRelays | undefined
  private readonly toReport = new Set<UserId>()
  /** Users whose last report said they hold many sockets or documents here. */
  private readonly held = new Set<UserId>()
  /** Every user's sockets here, together. */
  private sockets = 0
  /** Users' sockets this relay holds before a newcomer must take a hog's (0: no cap; see {@link shareSockets}). */
  private socketSlots = 0

  constructor(
    readonly limits: UserLimits,
    private readonly now: () => number = () => performance.now(),
    /** Told of every refusal, with the limit's name (metrics, logs). */
    private readonly onLimit: (limit: UserLimit, user: UserId) => void = () => {},
  ) {}

  /** Users with an entry (connected, or whose budgets are still refilling). */
  get size(): number {
    return this.users.size
  }

  private usage(principal: Principal): Usage | undefined {
    if (principal.kind !== "user") return undefined
    let usage = this.users.get(principal.user)
    if (!usage) {
      usage = new Usage(this.limits, this.now)
      this.users.set(principal.user, usage)
    }
    clearTimeout(usage.forgetTimer)
    usage.forgetTimer = undefined
    return usage
  }

  private refuse(user: UserId, limit: UserLimit, message: string): never {
    this.onLimit(limit, user)
    throw limited(limit, message)
  }

  /**
   * Counts what the user spent toward the next report to the other relays of
   * a cluster (nothing outside a cluster).
   */
  private spend(user: UserId, usage: Usage, kind: keyof Spent, amount: number): void {
    if (!this.others || amount === 0) return
    usage.spent ??= noneSpent()
    usage.spent[kind] += amount
    this.toReport.add(user)
  }

  /** Whether `count` of a limit `max` is worth telling the other relays (see {@link HELD_SHARE}). */
  private static heavy(count: number, max: number): boolean {
    return max > 0 && count >= Math.max(1, Math.ceil(max * HELD_SHARE))
  }

  /** After a user's sockets or documents here changed: report them soon when they matter to the other relays. */
  private heldChanged(user: UserId, usage: Usage): void {
    if (!this.others) return
    const heavy =
      UserLedger.heavy(usage.sockets.size, this.limits.maxSocketsPerUser) ||
      UserLedger.heavy(usage.documents.size, this.limits.maxDocumentsPerUser)
    if (!heavy && !this.held.has(user)) return
    this.toReport.add(user)
    this.others.changed()
  }

  /**
   * Joins a cluster: from now on the connections and documents other relays
   * report count against this relay's limits, and what users spend here is
   * gathered for {@link takeReport}.
   */
  shareWith(others: OtherRelays): void {
    this.others = others
  }

  /**
   * What to tell the other relays since the last report: each user who spent
   * any budget, or whose connections or documents here are (or were, at the
   * last report) at least {@link HELD_SHARE} of the limit. Resets what was spent.
   */
  takeReport(): UsageReport[] {
    // Users held heavy are reported every time, so that the other relays' view of them does not expire.
    for (const user of this.held) this.toReport.add(user)
    const reports: UsageReport[] = []
    for (const user of this.toReport) {
      const usage = this.users.get(user)
      const sockets = usage?.sockets.size ?? 0
      const documents = usage?.documents.size ?? 0
      const heavy =
        UserLedger.heavy(sockets, this.limits.maxSocketsPerUser) ||
        UserLedger.heavy(documents, this.limits.maxDocumentsPerUser)
      const spent = usage?.spent ?? noneSpent()
      if (usage) usage.spent = undefined
      const wasHeld = this.held.has(user)
      if (heavy) this.held.add(user)
      else this.held.delete(user)
      // A user no longer heavy is reported once with nothing held, which clears the others' view.
      if (heavy || wasHeld || spentAny(spent))
        reports.push({ user, sockets: heavy ? sockets : 0, documents: heavy ? documents : 0, ...spent })
      if (usage) this.release(user)
    }
    this.toReport.clear()
    return reports
  }

  /**
   * What `user` spent on another relay of the cluster: taken from the user's
   * budgets here too (they may go into debt), so that the user's rate across
   * the cluster is held to the limits, not multiplied by the relays.
   */
  spentElsewhere(user: UserId, spent: Readonly<Spent>): void {
    if (!spentAny(spent)) return
    const usage = this.usage({ kind: "user", user })
    if (!usage) return
    if (spent.updates > 0) usage.updates?.spend(spent.updates)
    if (spent.conversations > 0) usage.conversations?.spend(spent.conversations)
    if (spent.participants > 0) usage.participants?.spend(spent.participants)
    if (spent.connectionAttempts > 0) usage.connectionAttempts?.spend(spent.connectionAttempts)
    if (spent.answerBytes > 0) usage.answers?.spend(spent.answerBytes)
    if (spent.storedBytes > 0) usage.storedBytes?.spend(spent.storedBytes)
    this.release(user)
  }

  /**
   * Closes the newest of `user`'s connections here beyond `allowed` (4429
   * `sockets-per-user`): the other relays reported that the user holds more
   * than the limit leaves this one (connections opened on several relays at
   * once, before any report arrived).
   */
  trimSockets(user: UserId, allowed: number): void {
    const usage = this.users.get(user)
    if (!usage) return
    const open = [...usage.sockets].filter((socket) => !socket.closing())
    if (open.length <= allowed) return
    this.onLimit(UserLimit.sockets, user)
    for (const socket of open.slice(Math.max(0, allowed)))
      socket.close(CloseCode.TooManySockets.code, CloseCode.TooManySockets.reason)
  }

  /**
   * Closes the connections to the newest of `user`'s documents here beyond
   * `allowed` (4429 `documents-per-user`): as {@link trimSockets}, for
   * documents opened on several relays at once.
   */
  trimDocuments(user: UserId, allowed: number): void {
    const usage = this.users.get(user)
    if (!usage || usage.documents.size <= allowed) return
    this.onLimit(UserLimit.documents, user)
    for (const name of [...usage.documents.keys()].slice(Math.max(0, allowed)))
      for (const close of [...(usage.documentClosers.get(name) ?? [])]) close()
  }

  /**
   * Registers how to close one of `principal`'s connections to document `name`
   * (counted by {@link openDocument}) should the other relays of a cluster
   * report more documents than the limit leaves this one; returns its removal.
   */
  closeOnTrim(principal: Principal, name: string, close: () => void): () => void {
    if (principal.kind !== "user") return () => {}
    const usage = this.users.get(principal.user)
    if (!usage) return () => {}
    let closers = usage.documentClosers.get(name)
    if (!closers) {
      closers = new Set()
      usage.documentClosers.set(name, closers)
    }
    closers.add(close)
    return () => {
      closers.delete(close)
      if (closers.size === 0 && usage.documentClosers.get(name) === closers)
        usage.documentClosers.delete(name)
    }
  }

  /** Deletes the user's entry once nothing of it matters any more. */
  private release(user: UserId): void {
    const usage = this.users.get(user)
    if (!usage || usage.inUse || usage.forgetTimer || usage.spent) return
    const wait = usage.msUntilRefilled()
    if (wait === 0) {
      this.users.delete(user)
      return
    }
    usage.forgetTimer = setTimeout(
      () => {
        usage.forgetTimer = undefined
        this.release(user)
      },
      Math.min(wait, 120_000),
    )
    usage.forgetTimer.unref()
  }

  /**
   * Takes one connection attempt of `principal` from their per-minute budget
   * (call once the token is verified, before anything is loaded). Throws
   * `connection-attempts-per-user` when it is spent.
   */
  admitConnection(principal: Principal): void {
    const usage = this.usage(principal)
    if (!usage || principal.kind !== "user") return
    const { user } = principal
    try {
      if (usage.connectionAttempts && !usage.connectionAttempts.take(1))
        this.refuse(
          user,
          UserLimit.connectionAttempts,
          `a user may open ${this.limits.userConnectionAttemptsPerMinute} connections per minute`,
        )
      this.spend(user, usage, "connectionAttempts", 1)
    } finally {
      this.release(user)
    }
  }

  /**
   * Milliseconds until `principal` may make another connection attempt (0:
   * now), counting a meeting of `connection-attempts-per-user` when they must
   * wait. Takes nothing: for refusing an attempt before its upgrade.
   */
  connectionAttemptWait(principal: Principal): number {
    if (principal.kind !== "user") return 0
    const wait = this.users.get(principal.user)?.connectionAttempts?.msUntil(1) ?? 0
    if (wait > 0) this.onLimit(UserLimit.connectionAttempts, principal.user)
    return wait
  }

  /**
   * Takes one HTTP request of `principal` from their request budget (call
   * once the token or signature is verified, before anything is read).
   * Returns 0 when it is admitted, else the milliseconds until one more fits
   * (for `Retry-After`), counting a refusal by `http-requests-per-user`.
   * Per relay: not reported to the other relays of a cluster.
   */
  admitRequest(principal: Principal): number {
    const usage = this.usage(principal)
    if (!usage || principal.kind !== "user") return 0
    try {
      const budget = usage.requests
      if (!budget || budget.take(1)) return 0
      this.onLimit(UserLimit.httpRequests, principal.user)
      return Math.max(1, budget.msUntil(1))
    } finally {
      this.release(principal.user)
    }
  }

  /**
   * Takes up to `wanted` sealed segment reads from `principal`'s per-minute
   * budget and returns how many (all of them for anyone but a user, or when
   * the limit is off). Fewer are counted as a meeting of
   * `sealed-reads-per-user`. Per relay, like the HTTP request budget: a
   * document is read on the relay that holds it.
   */
  takeSealedReads(principal: Principal, wanted: number): number {
    if (wanted <= 0) return 0
    const usage = this.usage(principal)
    if (!usage || principal.kind !== "user") return wanted
    try {
      const budget = usage.sealedReads
      if (!budget) return wanted
      const granted = Math.min(wanted, Math.max(0, Math.floor(budget.available())))
      if (granted > 0) budget.take(granted)
      if (granted < wanted) this.onLimit(UserLimit.sealedReads, principal.user)
      return granted
    } finally {
      this.release(principal.user)
    }
  }

  /**
   * Shares the relay's connection cap `maxConnections` (0: none) between users:
   * their sockets take at most the cap less {@link connectionReserve}, which
   * stays for requests, health checks and sockets whose token is being
   * checked. Without it a few accounts, each within `--max-sockets-per-user`,
   * held every slot, and the relay refused everyone new at accept, `/healthz`
   * included (an outside probe: three users of one address, 256 idle sockets
   * each, filled a cap of 768).
   */
  shareSockets(maxConnections: number): void {
    this.socketSlots =
      maxConnections > 0 ? Math.max(1, maxConnections - connectionReserve(maxConnections)) : 0
  }

  /**
   * Counts an open connection of `principal`; returns its release. Throws
   * `sockets-per-user` when the user already has the most allowed, and
   * `relay-full` when the relay's slots are taken and nobody holds more than
   * a fair few (see {@link makeRoom}).
   */
  addSocket(principal: Principal, socket: UserSocket): () => void {
    const usage = this.usage(principal)
    if (!usage || principal.kind !== "user") return () => {}
    const { user } = principal
    const max = this.limits.maxSocketsPerUser
    if (max > 0 && usage.sockets.size + (this.others?.held(user)?.sockets ?? 0) >= max) {
      this.release(user)
      this.refuse(user, UserLimit.sockets, `a user may have ${max} connections open`)
    }
    if (this.socketSlots > 0 && this.sockets >= this.socketSlots && !this.makeRoom(usage)) {
      this.release(user)
      this.refuse(user, UserLimit.relayFull, "the relay holds as many connections as it can: try again later")
    }
    usage.sockets.add(socket)
    this.sockets++
    this.heldChanged(user, usage)
    return () => {
      if (!usage.sockets.delete(socket)) return
      this.sockets--
      this.heldChanged(user, usage)
      this.release(user)
    }
  }

  /**
   * At the relay's slots: closes a socket of the user who holds the most, when
   * they hold more than {@link FAIR_SOCKETS} and more than `newcomer` would
   * with this one, so that the newcomer takes its place; false when nobody
   * does (the relay is full of users with few sockets each). One scan of the
   * users, only while the relay is full.
   */
  private makeRoom(newcomer: Usage): boolean {
    let hog: [UserId, Usage] | undefined
    let most = Math.max(FAIR_SOCKETS, newcomer.sockets.size + 1)
    for (const entry of this.users) {
      // Sockets already closing (made room before, their close not done) do not count: counted, a
      // burst of newcomers took a user below the floor.
      if (entry[1].sockets.size <= most || entry[1] === newcomer) continue
      const open = liveSockets(entry[1].sockets)
      if (open > most) {
        most = open
        hog = entry
      }
    }
    if (!hog) return false
    const [user, usage] = hog
    for (const socket of usage.sockets) {
      if (socket.closing()) continue
      this.onLimit(UserLimit.relayFull, user)
      socket.close(CloseCode.RelayFull.code, CloseCode.RelayFull.reason)
      return true
    }
    return false
  }

  /**
   * Counts a connection of `principal` to document `name`; returns its
   * release. Throws `documents-per-user` when `name` is not open yet and the
   * user already has the most documents allowed open. Call before loading the
   * document, so that a refused user never makes the relay load one.
   */
  openDocument(principal: Principal, name: string): () => void {
    const usage = this.usage(principal)
    if (!usage || principal.kind !== "user") return () => {}
    const { user } = principal
    const max = this.limits.maxDocumentsPerUser
    // The user's own inbox is one document per user whatever else they open: counting it would
    // leave an SDK, which always has it open, one conversation short of the documented limit.
    const ownInbox = name === inboxDocumentName(user)
    const count = ownInbox ? 1 : (usage.documents.get(name) ?? 0)
    if (count === 0 && max > 0 && usage.documents.size + (this.others?.held(user)?.documents ?? 0) >= max) {
      this.release(user)
      this.refuse(user, UserLimit.documents, `a user may have ${max} documents open`)
    }
    const maxConnections = this.limits.maxConnectionsPerUser
    if (maxConnections > 0 && usage.connections >= maxConnections) {
      this.release(user)
      this.refuse(
        user,
        UserLimit.connections,
        `a user may have ${maxConnections} connections to documents open`,
      )
    }
    usage.connections++
    if (!ownInbox) usage.documents.set(name, count + 1)
    if (count === 0) this.heldChanged(user, usage)
    let released = false
    return () => {
      if (released) return
      released = true
      usage.connections--
      if (ownInbox) {
        this.release(user)
        return
      }
      const left = (usage.documents.get(name) ?? 1) - 1
      if (left > 0) usage.documents.set(name, left)
      else {
        usage.documents.delete(name)
        this.heldChanged(user, usage)
      }
      this.release(user)
    }
  }

  /**
   * Takes an incoming update of `bytes` from the user's budget and counts its
   * bytes as waiting; returns the release of those bytes (call once the update
   * path is done with it). Throws `updates-per-user` when the budget is spent,
   * `pending-bytes-per-user` when too many of the user's bytes wait already.
   */
  admitUpdate(principal: Principal, bytes: number, recipients = 0): () => void {
    const usage = this.usage(principal)
    if (!usage || principal.kind !== "user") return () => {}
    const { user } = principal
    const max = this.limits.maxPendingBytesPerUser
    if (max > 0 && usage.pendingBytes + bytes > max) {
      this.release(user)
      this.refuse(user, UserLimit.pendingBytes, `a user may have ${max} update bytes waiting`)
    }
    const cost = updateCost(bytes, recipients)
    if (usage.updates && !usage.updates.take(cost)) {
      this.release(user)
      this.refuse(
        user,
        UserLimit.updates,
        `a user may send ${this.limits.userUpdatesPerSecond} updates per second (bursts of ${this.limits.userUpdateBurst})`,
      )
    }
    this.spend(user, usage, "updates", cost)
    this.fair.charge(user, cost)
    usage.pendingBytes += bytes
    let released = false
    return () => {
      if (released) return
      released = true
      usage.pendingBytes -= bytes
      this.release(user)
    }
  }

  /**
   * Takes from the user's update budget what an update's `values` cost
   * beyond its bytes (one token per {@link UPDATE_COST_VALUES}): a frame of a
   * thousand short messages is small, and its hook events, stored rows and
   * pushes are a thousand messages' worth. Called once the update is checked;
   * the budget may go into debt (the next update waits for it: refused with
   * `updates-per-user` until it is paid off).
   */
  chargeValues(principal: Principal, values: number, bytes: number): void {
    const extra = Math.ceil(values / UPDATE_COST_VALUES) - 1 - Math.floor(bytes / UPDATE_COST_BYTES)
    if (extra <= 0) return
    const usage = this.usage(principal)
    if (!usage || principal.kind !== "user") return
    usage.updates?.spend(extra)
    this.spend(principal.user, usage, "updates", extra)
    this.fair.charge(principal.user, extra)
    this.release(principal.user)
  }

  /**
   * Counts a frame of `bytes` read from one of `principal`'s connections;
   * returns the milliseconds the relay should stop reading that connection
   * (0: none) while the user's receive budget is overdrawn, counting a
   * meeting of `received-bytes-per-user` when it is.
   */
  received(principal: Principal, bytes: number): number {
    if (principal.kind !== "user" || this.limits.userReceiveBytesPerSecond <= 0) return 0
    const usage = this.usage(principal)!
    try {
      const budget = usage.receives!
      budget.spend(bytes)
      const wait = budget.msUntil(0)
      if (wait > 0) this.onLimit(UserLimit.receivedBytes, principal.user)
      return wait
    } finally {
      this.release(principal.user)
    }
  }

  /**
   * Throws `update-bytes-per-day` when `principal` has less than `bytes` left
   * of their daily budget of stored bytes. Called before the change is
   * decoded, so that a user who spent the day's budget costs the relay next
   * to nothing per refused change; {@link chargeStored} takes the bytes once
   * the change is accepted.
   */
  checkStored(principal: Principal, bytes: number): void {
    if (principal.kind !== "user" || this.limits.userUpdateBytesPerDay <= 0) return
    const usage = this.users.get(principal.user)
    // No entry: nothing spent lately, so the whole budget is there (an update of more than a day's
    // budget is refused by the update size limit long before).
    const budget = usage?.storedBytes
    if (!budget || budget.available() >= Math.min(bytes, this.limits.userUpdateBytesPerDay)) return
    this.refuse(
      principal.user,
      UserLimit.updateBytesPerDay,
      `a user's changes may add ${this.limits.userUpdateBytesPerDay} bytes a day; try again in ${Math.ceil(budget.msUntil(bytes) / 60_000)} minutes`,
    )
  }

  /**
   * {@link checkStored} as an answer rather than a throw: false (a meeting of
   * `update-bytes-per-day` counted) when `principal` has less than `bytes`
   * left today. For what is refused without an error frame (a presence claim).
   */
  mayStore(principal: Principal, bytes: number): boolean {
    try {
      this.checkStored(principal, bytes)
      return true
    } catch (error) {
      if (error instanceof ParleyError) return false
      throw error
    }
  }

  /** Takes an accepted change's `bytes` from `principal`'s daily budget (see {@link checkStored}). */
  chargeStored(principal: Principal, bytes: number): void {
    const usage = this.usage(principal)
    if (!usage || principal.kind !== "user") return
    usage.storedBytes?.spend(bytes)
    this.spend(principal.user, usage, "storedBytes", bytes)
    this.release(principal.user)
  }

  /**
   * Takes what a change creates from the user's per-minute budgets, both or
   * neither. Throws `conversations-per-minute` or `participants-per-minute`.
   */
  chargeGrowth(principal: Principal, growth: Growth): void {
    if (!growth.creates && growth.participantsAdded === 0) return
    const usage = this.usage(principal)
    if (!usage || principal.kind !== "user") return
    const { user } = principal
    try {
      const { conversations, participants } = usage
      if (growth.creates && conversations && !conversations.take(1))
        this.refuse(
          user,
          UserLimit.conversations,
          `a user may create ${this.limits.userConversationsPerMinute} conversations per minute`,
        )
      // One change may add more than a minute's budget (a group created with 1,000 members): taken whole
      // from a full bucket, not refused for ever as retryable.
      if (growth.participantsAdded > 0 && participants && !participants.takeWhole(growth.participantsAdded)) {
        // Both or neither: the conversation was not created either.
        if (growth.creates) conversations?.give(1)
        this.refuse(
          user,
          UserLimit.participants,
          `a user may add ${this.limits.userParticipantsPerMinute} participants per minute`,
        )
      }
      this.spend(user, usage, "conversations", growth.creates ? 1 : 0)
      this.spend(user, usage, "participants", growth.participantsAdded)
    } finally {
      this.release(user)
    }
  }

  /**
   * Milliseconds until `principal` may be sent another answer to a request (0:
   * now): while their answer budget is overdrawn, answers wait. Counted as a
   * meeting of `answer-bytes-per-user` when they must wait.
   */
  answerDelay(principal: Principal): number {
    if (principal.kind !== "user") return 0
    const wait = this.users.get(principal.user)?.answersIfAny?.msUntil(0) ?? 0
    if (wait > 0) this.onLimit(UserLimit.answers, principal.user)
    return wait
  }

  /**
   * Calls `answer` once `principal` may be sent another answer: now (and
   * returns undefined) while their answer budget is not overdrawn and none of
   * theirs waits, else in turn after the answers already waiting, and returns
   * a function that withdraws it (a connection closing). One timer per user
   * serves the queue: a timer per waiting connection woke every one of a
   * user's 250 connections for each answer the budget allowed, and each found
   * the budget spent again.
   */
  whenAnswerable(principal: Principal, answer: () => void): (() => void) | undefined {
    const user = principal.kind === "user" ? principal.user : undefined
    const usage = user === undefined ? undefined : this.users.get(user)
    if (
      user === undefined ||
      !usage ||
      (usage.answerWaiters.size === 0 && this.answerDelay(principal) <= 0)
    ) {
      answer()
      return undefined
    }
    // A function of its own per call: the same callback asked twice waits twice.
    const waiter = () => answer()
    usage.answerWaiters.add(waiter)
    this.serveAnswers(user, usage)
    return () => {
      usage.answerWaiters.delete(waiter)
      if (usage.answerWaiters.size === 0) {
        clearTimeout(usage.answerTimer)
        usage.answerTimer = undefined
        this.release(user)
      }
    }
  }

  /** Answers the waiting answers the budget allows, in order; the rest wait for it to refill. */
  private serveAnswers(user: UserId, usage: Usage): void {
    if (usage.answerTimer) return
    for (const waiter of usage.answerWaiters) {
      const wait = usage.answersIfAny?.msUntil(0) ?? 0
      if (wait > 0) {
        usage.answerTimer = setTimeout(() => {
          usage.answerTimer = undefined
          this.serveAnswers(user, usage)
        }, wait)
        usage.answerTimer.unref()
        return
      }
      usage.answerWaiters.delete(waiter)
      // Each waiter handles its own failures (a connection's are its own); the others still go.
      try {
        waiter()
      } catch {}
    }
    this.release(user)
  }

  /**
   * Counts `bytes` answered to `principal` against their answer budget, which
   * may go into debt (an answer's size is known once it is made): the next
   * answers wait for the debt to be paid off.
   */
  answered(principal: Principal, bytes: number): void {
    if (bytes <= 0) return
    const usage = this.usage(principal)
    if (!usage || principal.kind !== "user") return
    usage.answers?.spend(bytes)
    this.spend(principal.user, usage, "answerBytes", bytes)
    this.release(principal.user)
  }

  /**
   * After bytes were queued to one of the user's connections: when the user's
   * unread bytes across connections exceed the limit, closes the connection
   * holding the most (4429 `queued-bytes-per-user`) and returns true.
   */
  checkQueued(principal: Principal): boolean {
    const max = this.limits.maxQueuedBytesPerUser
    if (principal.kind !== "user" || max <= 0) return false
    const usage = this.users.get(principal.user)
    if (!usage) return false
    let total = 0
    let largestInitial = 0
    let worst: UserSocket | undefined
    let worstBytes = -1
    for (const socket of usage.sockets) {
      const buffered = socket.buffered()
      total += buffered
      largestInitial = Math.max(largestInitial, socket.initialSyncBytes())
      if (buffered > worstBytes && !socket.closing()) {
        worst = socket
        worstBytes = buffered
      }
    }
    if (total - largestInitial <= max || !worst) return false
    this.onLimit(UserLimit.queuedBytes, principal.user)
    worst.close(CloseCode.TooManyQueuedBytes.code, CloseCode.TooManyQueuedBytes.reason)
    return true
  }
}
