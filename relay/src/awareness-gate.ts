import {
  encodeAwareness,
  encodeAwarenessEntries,
  PRESENCE_STAMP,
  readAwarenessEntries,
  type UserId,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as awarenessProtocol from "y-protocols/awareness"
import { LARGE_ROOM_CONNECTIONS } from "./awareness-fanout.js"
import { Connection } from "./connection.js"
import type { DocumentHost } from "./document-host.js"
import type { ClientIdOwners } from "./policy.js"
import { describePrincipal } from "./principal.js"
import { RateLimiter } from "./rate-limit.js"

/** Per-user limits of awareness (presence, typing) in one document. */
export interface AwarenessLimits {
  /** Most awareness entries (client ids) one user may have in one document at once. */
  readonly maxAwarenessEntries: number
  /** Largest awareness state (its JSON, in bytes); larger ones are dropped. */
  readonly maxAwarenessStateBytes: number
  /** Awareness frames per second one user may have applied in one document, on average. */
  readonly awarenessFramesPerSecond: number
  /** ... and in a burst. */
  readonly awarenessBurst: number
  /** New client ids one user may claim through awareness in one document per minute. */
  readonly awarenessClaimsPerMinute: number
}

/** Defaults of {@link AwarenessLimits}. */
export const DEFAULT_AWARENESS_LIMITS: AwarenessLimits = {
  maxAwarenessEntries: 16,
  maxAwarenessStateBytes: 4096,
  awarenessFramesPerSecond: 10,
  awarenessBurst: 30,
  awarenessClaimsPerMinute: 10,
}

/** Why an awareness entry was not applied (the label of `parley_awareness_dropped_total`). */
export type AwarenessDrop = "foreign" | "entries" | "bytes" | "claims"

/** What the gate needs from around it. */
export interface AwarenessGateOptions {
  readonly host: DocumentHost
  readonly owners: ClientIdOwners
  readonly limits: AwarenessLimits
  /** An entry was dropped. */
  readonly dropped: (connection: Connection, reason: AwarenessDrop, count: number) => void
  /** Claiming an id failed to persist (it stays claimed in memory). */
  readonly claimFailed: (error: unknown) => void
  /**
   * Takes one new client id from `user`'s allowance in this document (the one updates take theirs
   * from: every claim is a binding kept for good); false when none is left. Absent: no allowance.
   */
  readonly takeClientId?: (user: UserId) => boolean
  readonly now?: () => number
}

/** An entry ready to apply: its state parsed (and stamped) or null for a removal. */
interface Accepted {
  readonly clientId: number
  readonly clock: number
  readonly state: unknown
  /** The state's bytes as the client sent them (absent for a removal). */
  readonly sentAs?: Uint8Array
}

const MINUTE = 60_000

/**
 * How far the relay moves the clock of an entry that (re)appears, and of the entries a returning
 * client sees again, above the clock it was sent with: peers may hold the entry one clock above it (a
 * removal, the relay's or their own on disconnect), and y-protocols takes only a higher clock.
 */
export const JOIN_CLOCK_STEP = 2

/** How long, and for how many client ids, a document remembers that an entry left (see {@link AwarenessGate.forget}). */
const LEFT_MS = 10 * MINUTE
const LEFT_KEPT = 256

/**
 * Least time between two rounds of moving a room's entries on for returning clients (see
 * {@link AwarenessGate.moveOthersOn}): each round costs every member a frame each way and one of
 * its applied frames, so a client reconnecting over and over must not buy one per reconnect.
 */
const MOVE_ROUND_MS = 1_000

/** The state bytes of a removal (`null`). */
const NULL_STATE = new TextEncoder().encode("null")
const utf8 = new TextDecoder("utf-8", { fatal: true })
const utf8Encoder = new TextEncoder()

/**
 * The relay's awareness of one document, owned: a connection sets and removes
 * only entries whose client ids are bound to its own user (an id nobody owns
 * yet is claimed for that user, durably, so nobody else can write under it
 * either). Entries for other users' ids are dropped silently, since a stock
 * y-websocket client re-sends every awareness update it receives. Every state
 * applied is stamped with its user ({@link PRESENCE_STAMP}); a connection's
 * entries go when it closes, and only its own.
 *
 * Per user and document: at most `maxAwarenessEntries` entries at once,
 * `maxAwarenessStateBytes` per state, `awarenessClaimsPerMinute` new ids, and
 * `awarenessFramesPerSecond` applied frames; a frame over that budget is not
 * lost but held (the latest state of each entry) until the budget allows.
 * Frames that change nothing of the sender's (echoes of others' entries) cost
 * no budget. Removed entries leave no record behind, so the memory an abusive
 * sender caused is freed when it leaves.
 */
export class AwarenessGate {
  private readonly host: DocumentHost
  private readonly owners: ClientIdOwners
  private readonly limits: AwarenessLimits
  private readonly now: () => number
  /** The connection that last set each present entry. */
  private readonly setBy = new Map<number, Connection>()
  /**
   * The state bytes (as the client sent them, before the stamp) each present
   * entry was last set from: a frame that repeats them is a renewal, which
   * needs no parsing, checking or re-stamping (see {@link renew}).
   */
  private readonly sentAs = new Map<number, Uint8Array>()
  /** While {@link apply} runs: the bytes each entry it applies was sent as. */
  private applying: Map<number, Uint8Array | undefined> | undefined
  /** Present entries, by user key. */
  private readonly byUser = new Map<string, Set<number>>()
  /** Frame budgets, by user key; gone when the user has no connection here. */
  private readonly budgets = new Map<string, RateLimiter>()
  /** Claims in the current minute, by user key. */
  private readonly claims = new Map<string, { readonly since: number; count: number }>()
  /**
   * Entries of ids being claimed, until storage says whose they are: applied if the claimant's
   * (the latest state it sent meanwhile), dropped if another relay's user had bound the id first.
   */
  private readonly claiming = new Map<
    number,
    { readonly key: string; connection: Connection; entry: Accepted }
  >()
  /**
   * Client ids whose removal went out lately, oldest first, with when: one that comes back is a
   * client that reconnected (see {@link apply}).
   */
  private readonly left = new Map<number, number>()
  /** When the last round of {@link moveOthersOn} ran, and the timer of the next one, if one waits. */
  private lastMoveRound = Number.NEGATIVE_INFINITY
  private moveTimer: NodeJS.Timeout | undefined
  /** Entries held back by the frame budget, by connection, with the timer that applies them. */
  private readonly held = new Map<Connection, { entries: Map<number, Accepted>; timer: NodeJS.Timeout }>()

  constructor(private readonly options: AwarenessGateOptions) {
    this.host = options.host
    this.owners = options.owners
    this.limits = options.limits
    this.now = options.now ?? Date.now
  }

  /**
   * Applies what `connection` may change of an awareness update (y-protocols
   * encoding) and drops the rest. Throws on a malformed update, before
   * applying any of it (one that holds nothing newer than the entries here is
   * ignored unread: its states would not be applied whatever they are).
   */
  receive(connection: Connection, update: Uint8Array): void {
    const principal = connection.principal
    // Services watch; they have no presence of their own.
    if (principal.kind !== "user") return
    // A frame can list no more entries than the room's awareness has ever held, plus the sender's own:
    // reading one entry costs about half a microsecond, and a 1 MB frame lists 80,000 of them.
    const declared = declaredEntries(update)
    if (declared > this.host.awareness.meta.size + this.limits.maxAwarenessEntries) {
      this.options.dropped(connection, "entries", declared)
      return
    }
    // Most frames of a room are stock clients' echoes of what the relay sent them: nothing in them
    // is newer than what the awareness holds, and they are dropped before anything is allocated.
    if (changesNothing(this.host.awareness, update)) return
    const key = describePrincipal(principal)
    // Read whole before anything is applied: a malformed update is refused whole, not half-applied.
    // States stay bytes: only those the sender may set are parsed.
    const entries = readAwarenessEntries(update)
    if (this.renew(connection, key, entries)) return
    const accepted = new Map<number, Accepted>()
    let count = (this.byUser.get(key)?.size ?? 0) + this.heldNew(key)
    // Most frames a room's members send are echoes of others' entries (stock clients send back every
    // awareness update they get): dropped whole, they should cost little.
    let drops: Map<AwarenessDrop, number> | undefined
    const drop = (reason: AwarenessDrop) => {
      drops ??= new Map()
      drops.set(reason, (drops.get(reason) ?? 0) + 1)
    }
    for (const { clientId, clock, state: json } of entries) {
      const owner = this.owners.owner(clientId)
      if (owner !== undefined && owner !== key) {
        drop("foreign")
        continue
      }
      const claiming = this.claiming.get(clientId)
      if (claiming && claiming.key !== key) {
        drop("foreign")
        continue
      }
      const present = this.host.awareness.states.has(clientId)
      if (json.length > this.limits.maxAwarenessStateBytes) {
        drop("bytes")
        continue
      }
      const state: unknown = JSON.parse(utf8.decode(json))
      // Removing what is not there would only leave a record behind.
      if (state === null && !present) continue
      const entry: Accepted =
        state === null
          ? { clientId, clock, state }
          : { clientId, clock, state: stamp(state, principal.user), sentAs: json }
      if (claiming) {
        // The claimant again, before storage answered: its latest state waits with the claim.
        if (clock >= claiming.entry.clock) {
          claiming.entry = entry
          claiming.connection = connection
        }
        continue
      }
      const adds = !present && !accepted.has(clientId)
      if (adds && count >= this.limits.maxAwarenessEntries) {
        drop("entries")
        continue
      }
      // No owner known here, even for an entry present here: another relay of a cluster may have set
      // it, and bound its id for its user. Storage says whose it is before anything is applied.
      if (owner === undefined) {
        if (!this.mayClaim(key, principal.user)) drop("claims")
        else {
          if (adds) count++
          this.claim(connection, key, entry)
        }
        continue
      }
      if (adds) count++
      accepted.set(clientId, entry)
    }
    if (drops) for (const [reason, n] of drops) this.options.dropped(connection, reason, n)
    if (accepted.size > 0) this.admit(connection, key, accepted.values())
  }

  /** Applies `entries` of `connection` (whose user is `key`) within the user's frame budget, or holds them. */
  private admit(connection: Connection, key: string, entries: Iterable<Accepted>): void {
    let budget = this.budgets.get(key)
    if (!budget) {
      budget = new RateLimiter(this.limits.awarenessFramesPerSecond, this.limits.awarenessBurst)
      this.budgets.set(key, budget)
    }
    const held = this.held.get(connection)
    if (held || !budget.take()) {
      this.hold(connection, entries)
      return
    }
    this.apply(connection, entries)
  }

  /** Bookkeeping of an awareness change (every origin: connections, the timeout check, the relay). */
  changed(
    added: readonly number[],
    updated: readonly number[],
    removed: readonly number[],
    origin: unknown,
  ): void {
    if (origin instanceof Connection && origin.principal.kind === "user") {
      const key = describePrincipal(origin.principal)
      for (const clientId of [...added, ...updated]) {
        this.setBy.set(clientId, origin)
        // Set through the gate: the bytes it was set from; a renewal (see `renew`) keeps them.
        if (this.applying) {
          const sentAs = this.applying.get(clientId)
          if (sentAs) this.sentAs.set(clientId, sentAs.slice())
          else this.sentAs.delete(clientId)
        }
        let mine = this.byUser.get(key)
        if (!mine) {
          mine = new Set()
          this.byUser.set(key, mine)
        }
        mine.add(clientId)
      }
    }
    // Set by anything else (another relay): what it was sent as here no longer describes it.
    else for (const clientId of [...added, ...updated]) this.sentAs.delete(clientId)
    for (const clientId of removed) {
      const connection = this.setBy.get(clientId)
      this.setBy.delete(clientId)
      this.sentAs.delete(clientId)
      if (connection) {
        const key = describePrincipal(connection.principal)
        const mine = this.byUser.get(key)
        mine?.delete(clientId)
        if (mine?.size === 0) this.byUser.delete(key)
      }
    }
  }

  /**
   * Forgets removed entries entirely (y-protocols keeps the clock of every id
   * it ever saw). Called once the removal has been broadcast.
   */
  /** The connection that set the present entry of `clientId`, if any. */
  setterOf(clientId: number): Connection | undefined {
    return this.setBy.get(clientId)
  }

  forget(removed: readonly number[]): void {
    const now = this.now()
    for (const clientId of removed) {
      if (this.host.awareness.states.has(clientId)) continue
      this.host.awareness.meta.delete(clientId)
      this.left.delete(clientId)
      this.left.set(clientId, now)
    }
    for (const [clientId, at] of this.left) {
      if (this.left.size <= LEFT_KEPT && now - at < LEFT_MS) break
      this.left.delete(clientId)
    }
  }

  /** `connection` left: removes the entries it set (and no other), and what it held. */
  detach(connection: Connection): void {
    const held = this.held.get(connection)
    if (held) {
      clearTimeout(held.timer)
      this.held.delete(connection)
    }
    const own = [...this.setBy].filter(([, c]) => c === connection).map(([clientId]) => clientId)
    if (own.length > 0) awarenessProtocol.removeAwarenessStates(this.host.awareness, own, "relay")
    if (connection.principal.kind !== "user") return
    const key = describePrincipal(connection.principal)
    const stays = [...this.host.connections].some(
      (c) => c !== connection && c.principal.kind === "user" && describePrincipal(c.principal) === key,
    )
    if (!stays) this.budgets.delete(key)
  }

  /** Stops the timers of held entries (the document is going away). */
  destroy(): void {
    clearTimeout(this.moveTimer)
    this.moveTimer = undefined
    for (const { timer } of this.held.values()) clearTimeout(timer)
    this.held.clear()
  }

  /** Client ids the relay holds an awareness record of (present or removed). */
  get records(): number {
    // The relay's own id has a record too (its state is null).
    return Math.max(0, this.host.awareness.meta.size - 1)
  }

  /** Entries of `key`'s connections held back that would add an entry. */
  private heldNew(key: string): number {
    let n = 0
    for (const [connection, { entries }] of this.held) {
      if (connection.principal.kind !== "user" || describePrincipal(connection.principal) !== key) continue
      for (const e of entries.values())
        if (e.state !== null && !this.host.awareness.states.has(e.clientId)) n++
    }
    return n
  }

  /** Whether `key` may claim one more id now (its claims this minute, its allowance of new ids). */
  private mayClaim(key: string, user: UserId): boolean {
    const now = this.now()
    let window = this.claims.get(key)
    if (!window || now - window.since >= MINUTE) {
      window = { since: now, count: 0 }
      this.claims.set(key, window)
    }
    if (window.count >= this.limits.awarenessClaimsPerMinute) return false
    // Old windows of users long gone need not stay.
    if (this.claims.size > 64) {
      for (const [k, w] of this.claims) if (now - w.since >= MINUTE) this.claims.delete(k)
    }
    if (this.options.takeClientId && !this.options.takeClientId(user)) return false
    window.count++
    return true
  }

  /**
   * Claims `entry`'s id for `key` and applies the entry once storage answered that it is theirs.
   * Not before: memory may take an id for free that another relay's user bound first, and an entry
   * applied for the wrong user reaches every peer (a stock client takes a state set under its own
   * id as its own and announces it again).
   */
  private claim(connection: Connection, key: string, entry: Accepted): void {
    const claim = { key, connection, entry }
    this.claiming.set(entry.clientId, claim)
    const settle = (owner: string | undefined) => {
      if (this.claiming.get(entry.clientId) !== claim) return
      this.claiming.delete(entry.clientId)
      if (owner !== key) this.options.dropped(claim.connection, "foreign", 1)
      else if (!claim.connection.closed && !this.host.destroyed)
        this.admit(claim.connection, key, [claim.entry])
    }
    this.owners.claim(entry.clientId, key).then(settle, (error: unknown) => {
      this.options.claimFailed(error)
      // Not stored: the claim holds in memory (the next update's check stores it), as before storage failed.
      settle(this.owners.owner(entry.clientId))
    })
  }

  private hold(connection: Connection, entries: Iterable<Accepted>): void {
    let held = this.held.get(connection)
    if (!held) {
      // One frame's worth of budget comes back in 1/rate seconds.
      const delay = Math.ceil(1000 / Math.max(this.limits.awarenessFramesPerSecond, 0.001))
      const timer = setTimeout(() => this.release(connection), delay)
      timer.unref()
      held = { entries: new Map(), timer }
      this.held.set(connection, held)
    }
    for (const entry of entries) {
      const before = held.entries.get(entry.clientId)
      if (!before || before.clock <= entry.clock) held.entries.set(entry.clientId, entry)
    }
  }

  private release(connection: Connection): void {
    const held = this.held.get(connection)
    if (!held) return
    this.held.delete(connection)
    if (connection.closed || this.host.destroyed || connection.principal.kind !== "user") return
    const budget = this.budgets.get(describePrincipal(connection.principal))
    if (budget && !budget.take()) {
      this.hold(connection, held.entries.values())
      return
    }
    this.apply(connection, held.entries.values())
  }

  private apply(connection: Connection, entries: Iterable<Accepted>): void {
    const list = [...entries]
    const awareness = this.host.awareness
    // An entry that appears (a client connecting, or coming back) goes out JOIN_CLOCK_STEP clocks above
    // the one it came with, and its client is told to move there too (see `bump`): a stock client that
    // reconnects announces its state at its old clock, which every peer that saw it leave ignores.
    const joins = new Set<number>()
    for (const { clientId, state } of list)
      if (state !== null && !awareness.states.has(clientId)) joins.add(clientId)
    if (joins.size > 0) {
      // A client that comes back also holds every entry here one clock above ours (it removed them
      // itself when its socket closed): their owners move on too, so that it takes them again.
      if ([...joins].some((id) => this.left.has(id))) this.moveOthersOn(connection)
      for (const id of joins) this.left.delete(id)
      this.bump(
        connection,
        list
          .filter((e) => joins.has(e.clientId))
          .map((e) => ({ clientId: e.clientId, clock: e.clock + JOIN_CLOCK_STEP })),
      )
    }
    const update = encodeAwarenessEntries(
      list.map(({ clientId, clock, state }) => ({
        clientId,
        clock: joins.has(clientId) ? clock + JOIN_CLOCK_STEP : clock,
        state: utf8Encoder.encode(JSON.stringify(state)),
      })),
    )
    // What the awareness applies (not an entry whose clock it refused) is recorded by `changed`, from here.
    this.applying = new Map(list.map((e) => [e.clientId, e.sentAs]))
    try {
      awarenessProtocol.applyAwarenessUpdate(this.host.awareness, update, connection)
    } finally {
      this.applying = undefined
    }
  }

  /**
   * Tells `connection`'s client that its entries were removed at these clocks: y-protocols keeps a
   * local state a peer removes, moves its clock one above, and announces it again (stock providers
   * and the SDK alike), so the client goes on from above the clock the relay gave its entry. Sent
   * before that entry goes out: a client shown its own entry at a clock above its own would take the
   * relay's stamped copy as its state.
   */
  private bump(connection: Connection, entries: readonly { clientId: number; clock: number }[]): void {
    if (entries.length === 0 || connection.closed) return
    connection.send(
      encodeAwareness(encodeAwarenessEntries(entries.map((e) => ({ ...e, state: NULL_STATE })))),
    )
  }

  /**
   * Moves every entry another connection here set JOIN_CLOCK_STEP clocks on, and tells each owner
   * to follow ({@link bump}): a returning client takes them again. Only in a small room: a large
   * one forwards no renewals, and a member's presence reaches others with its next change there
   * (see `AwarenessFanout`). At most one round per {@link MOVE_ROUND_MS}: a client returning sooner
   * after the last round waits for the next, which moves every entry (its own too).
   */
  private moveOthersOn(joiner: Connection): void {
    if (this.host.connections.size > LARGE_ROOM_CONNECTIONS) return
    const wait = this.lastMoveRound + MOVE_ROUND_MS - this.now()
    if (wait <= 0) {
      this.lastMoveRound = this.now()
      this.moveOn(joiner)
      return
    }
    if (this.moveTimer) return
    this.moveTimer = setTimeout(() => {
      this.moveTimer = undefined
      if (this.host.destroyed || this.host.connections.size > LARGE_ROOM_CONNECTIONS) return
      this.lastMoveRound = this.now()
      this.moveOn(undefined)
    }, wait)
    this.moveTimer.unref()
  }

  /**
   * One round of {@link moveOthersOn}: the entries of every connection but `joiner`'s. They are
   * announced as changed, so that they go out now (a renewal may wait: see `AwarenessFanout`), in
   * one announcement (one frame to each connection, not one per owner), made by the relay.
   */
  private moveOn(joiner: Connection | undefined): void {
    const awareness = this.host.awareness
    const byOwner = new Map<Connection, { clientId: number; clock: number }[]>()
    for (const [clientId, owner] of this.setBy) {
      const meta = awareness.meta.get(clientId)
      if (owner === joiner || owner.closed || !meta || !awareness.states.has(clientId)) continue
      let moved = byOwner.get(owner)
      if (!moved) {
        moved = []
        byOwner.set(owner, moved)
      }
      moved.push({ clientId, clock: meta.clock + JOIN_CLOCK_STEP })
    }
    if (byOwner.size === 0) return
    const now = Date.now()
    const updated: number[] = []
    for (const [owner, moved] of byOwner) {
      this.bump(owner, moved)
      for (const { clientId, clock } of moved) {
        awareness.meta.set(clientId, { clock, lastUpdated: now })
        updated.push(clientId)
      }
    }
    const change = { added: [], updated, removed: [] }
    awareness.emit("change", [change, "relay"])
    awareness.emit("update", [change, "relay"])
  }

  /**
   * Applies `entries` at once if each only renews an entry `connection` set,
   * with the very bytes it was set from and a newer clock (the client's
   * 15-second renewal): the state was checked and stamped when it was set,
   * so only its clock and time move, and the awareness announces the update
   * as y-protocols would (a renewal: no 'change'). The frame budget is spent
   * as for any applied frame. False, doing nothing, for any other frame.
   */
  private renew(
    connection: Connection,
    key: string,
    entries: ReturnType<typeof readAwarenessEntries>,
  ): boolean {
    if (entries.length === 0 || this.held.has(connection)) return false
    const awareness = this.host.awareness
    for (const { clientId, clock, state } of entries) {
      if (this.setBy.get(clientId) !== connection || !awareness.states.has(clientId)) return false
      if ((awareness.meta.get(clientId)?.clock ?? 0) >= clock) return false
      const before = this.sentAs.get(clientId)
      if (!before || !sameBytes(before, state)) return false
    }
    if (!this.budgets.get(key)?.take()) return false
    const now = Date.now()
    const updated: number[] = []
    for (const { clientId, clock } of entries) {
      awareness.meta.set(clientId, { clock, lastUpdated: now })
      updated.push(clientId)
    }
    awareness.emit("update", [{ added: [], updated, removed: [] }, connection])
    return true
  }
}

/** The entry count an awareness update declares (its first number); 0 when it has none to read. */
function declaredEntries(update: Uint8Array): number {
  try {
    return decoding.readVarUint(decoding.createDecoder(update))
  } catch {
    // Malformed: refused as such by the full read below.
    return 0
  }
}

/**
 * True if y-protocols would apply none of `update`'s entries to `awareness`:
 * each is older than the entry held, or as old and not a removal of a present
 * one (a removal at the same clock applies). Reads the update in place; false
 * for one it cannot read (the full read refuses it).
 */
function changesNothing(awareness: awarenessProtocol.Awareness, update: Uint8Array): boolean {
  const decoder = decoding.createDecoder(update)
  try {
    const count = decoding.readVarUint(decoder)
    if (count === 0) return false
    for (let i = 0; i < count; i++) {
      const clientId = decoding.readVarUint(decoder)
      const clock = decoding.readVarUint(decoder)
      const length = decoding.readVarUint(decoder)
      const start = decoder.pos
      if (start + length > update.length) return false
      decoder.pos = start + length
      const held = awareness.meta.get(clientId)?.clock
      if (held === undefined || clock > held) return false
      if (clock === held && isNull(update, start, length) && awareness.states.has(clientId)) return false
    }
    return true
  } catch {
    return false
  }
}

/** Whether `update[start, start + length)` is the JSON `null`. */
function isNull(update: Uint8Array, start: number, length: number): boolean {
  return (
    length === 4 &&
    update[start] === 0x6e &&
    update[start + 1] === 0x75 &&
    update[start + 2] === 0x6c &&
    update[start + 3] === 0x6c
  )
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

/** The state with the relay's stamp: objects carry their user; other JSON values are left as they are. */
function stamp(state: unknown, user: string): unknown {
  if (typeof state !== "object" || state === null || Array.isArray(state)) return state
  return { ...(state as Record<string, unknown>), [PRESENCE_STAMP]: user }
}
