import {
  type ChangeEventType,
  type ConversationId,
  conversationHead,
  type Decision,
  ErrorCode,
  entryFromHead,
  type InboxEntry,
  InboxTopLevel,
  inboxDocumentName,
  type MemberReadState,
  memberReadState,
  ParleyError,
  parseDocumentName,
  Rule,
  typesOf,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import * as Y from "yjs"
import type { AfterSaved, ConnectionChange, PolicyInput, RelayExtension, RunningCore } from "../extension.js"
import { entriesHandedBack, itemKey, MAX_UNLISTED_MUTES } from "./check-inbox-update.js"
import { deferEntryReplacement, EntryValues } from "./entry-update.js"

/**
 * How often a user's whole inbox may be derived again (each entry loads its
 * conversation): opening an inbox connection costs one frame, and a loop of
 * them must not buy a pass over every conversation each time.
 */
export const FULL_REFRESH_MS = 30_000

/** Longest a refresh runs before it lets the event loop serve others, in ms. */
const REFRESH_SLICE_MS = 5

/**
 * How often one entry a user's own write touched is derived again (loading
 * its conversation, writing a fresh entry that leaves the old one in the
 * inbox as a deleted item): once per key per this many ms; touched again
 * sooner, it is derived when the window ends. A device hands entries back
 * once, after the relay lost them; a loop of writes must not buy a
 * derivation and a lasting item per conversation each time.
 */
export const HAND_BACK_WINDOW_MS = 60 * 60_000

/** Users whose handed-back entries wait for their write to be stored, at most (then forgotten). */
const MAX_HANDED_BACK_USERS = 10_000
/** Items of one user's own entries listed under one key as pending removal (see `checkUpdate`). */
const MAX_PENDING_ITEMS_PER_KEY = 16
/** Keys of one user's own entries listed as pending removal. */
const MAX_PENDING_KEYS_PER_USER = 4_096

/** Options of {@link LiveInbox} (tests shorten the window or move the clock). */
export interface LiveInboxOptions {
  /** At most one whole-inbox derivation per user per this many ms (default {@link FULL_REFRESH_MS}). */
  readonly fullRefreshMs?: number
  /** An entry touched by its user's writes is derived again at most once per this many ms (default {@link HAND_BACK_WINDOW_MS}). */
  readonly handBackWindowMs?: number
  readonly now?: () => number
  /**
   * Whether every change to a conversation is stored through this relay
   * (default true). In a cluster it sees only those it orders, so a user
   * reconnecting within the window is derived what it saw change at once and
   * the whole inbox when the window ends.
   */
  readonly seesEveryChange?: boolean
}

/** The last whole-inbox derivation of a user, and what they missed since they left. */
interface LastFull {
  /** When it began. */
  readonly at: number
  /** Whether it went through every entry (cut short when the user left, or failed). */
  complete: boolean
  /** While no inbox connection of theirs is open: conversations whose change they were not shown. */
  missed: Set<ConversationId> | undefined
  /** Forgets this record when the window is over (set while they are away). */
  timer: ReturnType<typeof setTimeout> | undefined
}

/** Adds `keys` to `user`'s set in `sets` (made when there are any). */
function addKeys(
  sets: Map<UserId, Set<ConversationId>>,
  user: UserId,
  keys: readonly ConversationId[],
): void {
  if (keys.length === 0) return
  let mine = sets.get(user)
  if (!mine) {
    mine = new Set()
    sets.set(user, mine)
  }
  for (const key of keys) mine.add(key)
}

/** The entries a user's own writes had derived again lately (see {@link HAND_BACK_WINDOW_MS}). */
interface HandBackWindow {
  /** Keys derived in this window. */
  readonly derived: Set<ConversationId>
  /** Keys touched again in it, derived when it ends. */
  readonly waiting: Set<ConversationId>
  /** Ends the window. */
  timer: ReturnType<typeof setTimeout> | undefined
}

/** A refresh asked for: the whole inbox, or some entries. */
interface Wanted {
  full: boolean
  readonly keys: Set<ConversationId>
}

/** Changes that alter what an inbox entry shows (reactions and delivery markers do not). */
const SHOWN: ReadonlySet<ChangeEventType> = new Set<ChangeEventType>([
  "conversation.created",
  "conversation.updated",
  "conversation.deleted",
  "conversation.reopened",
  "participants.added",
  "participants.removed",
  "message.sent",
  "message.edited",
  "message.deleted",
  "messages.read",
  "messages.sequenced",
  // The last message's author's display name is in the preview.
  "profile.updated",
])

/**
 * Keeps the inboxes of connected users current, and derives a user's whole
 * inbox when they connect. What is durable per user is only what a
 * conversation list cannot be derived without: which conversations they are
 * in (the keys of their inbox, written by `inboxTarget` when membership
 * changes), their read markers (in the conversations) and their mute flags.
 * Everything else an entry shows (title, preview, unread count) is derived
 * from the conversation: for a connected user on every change, in memory
 * ({@link RunningCore.derive}: broadcast at once, stored when the inbox
 * unloads); for everyone else when they next connect. A message therefore
 * costs work for its connected members only and no durable write per member,
 * the Discord/Slack model of read states (design notes, "Large rooms").
 *
 * An entry the user's device hands back that the relay no longer has (one
 * derived before a crash, never stored) or writes itself is settled right
 * after it is stored, so the list converges on the conversations: under a key
 * the inbox shows an entry under, derived again (loading that one
 * conversation); under any other (the key itself was lost, or forged),
 * removed again without loading anything, until the relay writes the
 * membership again (`inboxTarget` recovering the change that made it). See
 * `entriesHandedBack`.
 *
 * What one frame can buy is bounded: the whole inbox is derived when a user
 * connects, at most once per {@link FULL_REFRESH_MS}; a user who reconnects
 * sooner is derived only the conversations that changed while they were away
 * (remembered meanwhile), so an honest device coming back from a network blip
 * still sees everything at once.
 */
export class LiveInbox implements RelayExtension {
  readonly name = "live-inbox"
  private core: RunningCore | undefined
  /** Users with an inbox connection open, and how many. */
  private readonly connected = new Map<UserId, number>()
  /**
   * What was last written for each connected user's entries, by user then
   * conversation: the head's JSON (one string shared by every member of a
   * change) and the user's own figures, so that telling an unchanged entry
   * costs no serialisation per member.
   */
  private readonly shown = new Map<UserId, Map<ConversationId, Shown>>()
  /** Refreshes running, and whether another was asked for meanwhile, by user. */
  private readonly refreshing = new Set<UserId>()
  /**
   * Each connected user's inbox document name, made once: the relay looks the
   * inbox up by it once per member and message, and a name built afresh each
   * time is hashed afresh.
   */
  private readonly inboxNames = new Map<UserId, string>()
  /** Each recent user's last whole-inbox derivation (while connected, or away within the window). */
  private readonly lastFull = new Map<UserId, LastFull>()
  /** Users away within the window: the conversations they missed (the same sets as in `lastFull`). */
  private readonly away = new Map<UserId, Set<ConversationId>>()
  /** Refreshes asked for and not begun, by user. */
  private readonly wanted = new Map<UserId, Wanted>()
  /** Entries each user's accepted, not yet stored writes touch (from `checkUpdate`). */
  private readonly touched = new Map<UserId, Set<ConversationId>>()
  /** Shown entries each user's accepted, not yet stored writes remove, writing nothing under their key. */
  private readonly removedByUser = new Map<UserId, Set<ConversationId>>()
  /** Each user's current hand-back window: the keys derived in it, and those waiting for its end. */
  private readonly handBackWindows = new Map<UserId, HandBackWindow>()
  /** Entries each user's accepted, not yet stored writes put under keys without one, by item id. */
  private readonly handedBack = new Map<UserId, Map<ConversationId, Set<string>>>()
  /** Full refreshes waiting for the window of an incomplete one to end, by user. */
  private readonly deferredFull = new Map<UserId, ReturnType<typeof setTimeout>>()
  /**
   * Conversations a refresh is reading and writing an entry of now: how many
   * such refreshes, and how often their membership changed meanwhile. A
   * refresh reads a conversation and writes the entry after an `await`; a
   * removal (with `inboxTarget`'s removal of the entry) landing in between
   * must not be undone by that stale write. Only conversations in flight are
   * kept, so it holds no more than the refreshes running.
   */
  private readonly inFlight = new Map<ConversationId, { readers: number; membershipChanges: number }>()
  private readonly fullRefreshMs: number
  private readonly handBackWindowMs: number
  private readonly now: () => number
  private readonly seesEveryChange: boolean

  constructor(options: LiveInboxOptions = {}) {
    this.fullRefreshMs = options.fullRefreshMs ?? FULL_REFRESH_MS
    this.handBackWindowMs = options.handBackWindowMs ?? HAND_BACK_WINDOW_MS
    this.now = options.now ?? Date.now
    this.seesEveryChange = options.seesEveryChange ?? true
  }

  start(core: RunningCore): void {
    this.core = core
  }

  stop(): void {
    for (const last of this.lastFull.values()) clearTimeout(last.timer)
    for (const timer of this.deferredFull.values()) clearTimeout(timer)
    for (const window of this.handBackWindows.values()) clearTimeout(window.timer)
    this.handBackWindows.clear()
    this.lastFull.clear()
    this.away.clear()
    this.deferredFull.clear()
  }

  /**
   * Notes which entries a user's own write to their inbox touches (the
   * membership policy, run first, allowed it): once it is stored, those the
   * inbox showed are derived again and the others removed (see
   * `entriesHandedBack`). Decides nothing.
   */
  checkUpdate({ name, doc, update, principal }: PolicyInput): Decision {
    if (name.kind === "inbox" && principal.kind === "user" && principal.user === name.user) {
      const pending = this.handedBack.get(name.user)
      const { derive, removed, remove, unlistedMutes } = entriesHandedBack(
        doc,
        update,
        (key, item) => pending?.get(key)?.has(item) === true,
      )
      // Judged here, where the user's own entries the relay is to remove are known: an entry written
      // under a made-up id just before its mute made that id look listed (a second probe: 60,000 flags).
      if (unlistedMutes !== undefined && unlistedMutes > MAX_UNLISTED_MUTES)
        return {
          allowed: false,
          rule: Rule.schema,
          reason: `at most ${MAX_UNLISTED_MUTES} conversations the inbox does not list may be muted`,
        }
      addKeys(this.removedByUser, name.user, removed)
      addKeys(this.touched, name.user, derive)
      if (remove.size > 0) {
        let mine = this.handedBack.get(name.user)
        if (!mine) {
          // Kept past a disconnect (the write may still be stored) until the relay removed the items, or a
          // later write replaced them. Bounded: past it the oldest user's go (their entries are then
          // derived by the next full refresh, loading one conversation each, and removed).
          if (this.handedBack.size >= MAX_HANDED_BACK_USERS)
            this.handedBack.delete(this.handedBack.keys().next().value!)
          mine = new Map()
          this.handedBack.set(name.user, mine)
        }
        for (const [key, items] of remove) {
          const known = mine.get(key)
          if (known) for (const item of items) known.add(item)
          else mine.set(key, new Set(items))
          // Items of writes refused after this check are never applied, so nothing removes them: per
          // key, only the newest few are kept (an older one, if ever applied, is derived: one load).
          const kept = mine.get(key)!
          for (const item of kept) {
            if (kept.size <= MAX_PENDING_ITEMS_PER_KEY) break
            kept.delete(item)
          }
        }
        // And per user, the newest keys: each write names at most a frame's worth.
        for (const key of mine.keys()) {
          if (mine.size <= MAX_PENDING_KEYS_PER_USER) break
          mine.delete(key)
        }
      }
    }
    return { allowed: true }
  }

  connectionChanged({ name, principal, open }: ConnectionChange): void {
    const parsed = safeParse(name)
    if (parsed?.kind !== "inbox" || principal.kind !== "user" || principal.user !== parsed.user) return
    const user = parsed.user
    const count = (this.connected.get(user) ?? 0) + (open ? 1 : -1)
    if (count > 0) {
      this.connected.set(user, count)
      if (!this.inboxNames.has(user)) this.inboxNames.set(user, inboxDocumentName(user))
      // A second connection finds the inbox current: it is kept so while one is open.
      if (open && count === 1) this.arrived(user)
    } else {
      this.connected.delete(user)
      this.shown.delete(user)
      this.inboxNames.delete(user)
      this.touched.delete(user)
      this.removedByUser.delete(user)
      this.left(user)
    }
  }

  /** The user's first inbox connection opened: derive the whole inbox, or what they missed. */
  private arrived(user: UserId): void {
    const last = this.lastFull.get(user)
    const now = this.now()
    if (!last || now - last.at >= this.fullRefreshMs) {
      this.refresh(user, "all")
      return
    }
    clearTimeout(last.timer)
    last.timer = undefined
    const missed = last.missed ?? new Set<ConversationId>()
    last.missed = undefined
    this.away.delete(user)
    if (missed.size > 0) this.refresh(user, missed)
    if ((!last.complete || !this.seesEveryChange) && !this.deferredFull.has(user)) {
      // The last one was cut short (or changes elsewhere were not seen): the rest waits for the window
      // (a connect loop buys one per window).
      const timer = setTimeout(
        () => {
          this.deferredFull.delete(user)
          if (this.connected.has(user)) this.refresh(user, "all")
        },
        last.at + this.fullRefreshMs - now,
      )
      timer.unref()
      this.deferredFull.set(user, timer)
    }
  }

  /** The user's last inbox connection closed: remember what they miss until the window ends. */
  private left(user: UserId): void {
    const wanted = this.wanted.get(user)
    this.wanted.delete(user)
    clearTimeout(this.deferredFull.get(user))
    this.deferredFull.delete(user)
    const last = this.lastFull.get(user)
    if (!last) return
    const remaining = last.at + this.fullRefreshMs - this.now()
    if (remaining <= 0) {
      this.lastFull.delete(user)
      return
    }
    if (wanted?.full) last.complete = false
    last.missed = new Set(wanted?.keys)
    this.away.set(user, last.missed)
    last.timer = setTimeout(() => {
      if (this.lastFull.get(user) !== last) return
      this.lastFull.delete(user)
      this.away.delete(user)
    }, remaining)
    last.timer.unref()
  }

  afterSaved({ name, doc, actor, events }: AfterSaved): void {
    const parsed = safeParse(name)
    if (parsed?.kind === "inbox") {
      // The user wrote (or handed back) entries: derive those again. A mute flag changes no entry.
      if (actor.kind === "user" && actor.user === parsed.user) {
        const keys = this.touched.get(parsed.user)
        this.touched.delete(parsed.user)
        if (keys && keys.size > 0) this.deriveTouched(parsed.user, keys)
        // Removed by the user: the relay's next write of each (a change, a whole derivation) puts it back.
        const removed = this.removedByUser.get(parsed.user)
        this.removedByUser.delete(parsed.user)
        if (removed) for (const key of removed) this.shown.get(parsed.user)?.delete(key)
        const handedBack = this.handedBack.get(parsed.user)
        if (handedBack) this.removeHandedBack(parsed.user, name, handedBack)
      }
      return
    }
    if (parsed?.kind === "conversation" && this.inFlight.size > 0) {
      const flight = this.inFlight.get(parsed.id)
      if (flight && events.some((e) => e.type === "participants.removed" || e.type === "participants.added"))
        flight.membershipChanges++
    }
    if (parsed?.kind !== "conversation" || (this.connected.size === 0 && this.away.size === 0)) return
    if (!events.some((e) => SHOWN.has(e.type))) return
    if (this.away.size > 0) this.noteMissed(parsed.id, doc, events)
    if (this.connected.size === 0) return
    const readOnly = events.every((e) => e.type === "messages.read")
    let users: UserId[] = []
    if (readOnly) {
      // A read marker moves its owner's count only.
      for (const e of events) if (e.type === "messages.read" && this.connected.has(e.user)) users.push(e.user)
    } else {
      const participants = typesOf(doc).participants
      // Whichever is smaller is walked: a big room with few connected, or a busy relay and a small room.
      // Sized by Yjs's own map (removed members included: only which side to walk depends on it), not
      // `Y.Map.size`, which walks every entry through iterators (a 1,000-member room: 1,000 of them
      // and their results allocated per message, a fifth of this extension's garbage).
      if (
        this.connected.size < (participants as unknown as { readonly _map: Map<string, unknown> })._map.size
      ) {
        for (const user of this.connected.keys()) if (participants.has(user)) users.push(user)
      } else {
        for (const user of participants.keys())
          if (this.connected.has(user as UserId)) users.push(user as UserId)
      }
    }
    // Who joins or leaves gets (or loses) the entry durably, from inboxTarget: their inbox's keys are
    // what it is derived from later, so they must not exist in memory only.
    const joining = new Set<UserId>()
    for (const e of events) {
      if (e.type === "conversation.created") return
      if (e.type === "participants.added") for (const p of e.participants) joining.add(p.user)
      // inboxTarget writes their entry behind this cache: forget what it remembers of them.
      const moved = e.type === "participants.added" ? e.participants.map((p) => p.user) : []
      if (e.type === "participants.removed") moved.push(...e.users)
      for (const user of moved) this.shown.get(user)?.delete(parsed.id)
    }
    if (joining.size > 0) users = users.filter((user) => !joining.has(user))
    if (users.length === 0) return
    const head = conversationHead(doc)
    if (!head) return
    const id = parsed.id
    const headJson = JSON.stringify(head.entry)
    // Every member's entry shares the head's values: encoded once for all of them, then each member's
    // read state written into its own frame (no entry object per member).
    const values = new EntryValues(head)
    this.writeStates(users, id, doc, headJson, values)
  }

  /**
   * Derives again the entries a user's own writes touched: each key at most
   * once per {@link HAND_BACK_WINDOW_MS}, the rest when the window ends (if
   * the user is still connected; otherwise their next connection derives
   * them).
   */
  private deriveTouched(user: UserId, keys: Iterable<ConversationId>): void {
    let window = this.handBackWindows.get(user)
    if (!window) {
      const opened: HandBackWindow = { derived: new Set(), waiting: new Set(), timer: undefined }
      opened.timer = setTimeout(() => {
        this.handBackWindows.delete(user)
        if (opened.waiting.size > 0 && this.connected.has(user)) this.deriveTouched(user, opened.waiting)
      }, this.handBackWindowMs)
      opened.timer.unref()
      this.handBackWindows.set(user, opened)
      window = opened
    }
    const now: ConversationId[] = []
    for (const key of keys) {
      if (window.derived.has(key)) window.waiting.add(key)
      else {
        window.derived.add(key)
        now.push(key)
      }
    }
    if (now.length > 0) this.refresh(user, now)
  }

  /**
   * Removes entries a user's write put under keys their inbox showed none
   * under, loading no conversation: stored (not only derived), so that even
   * if the user left at once no forged key stays for the next full refresh
   * to load. Only the items that write put there go: an entry the relay
   * wrote under the key since (`inboxTarget` recovering a membership a crash
   * lost) stays. Derived data: a failure leaves the entry to the next full
   * refresh, which derives it from the conversation.
   */
  private removeHandedBack(
    user: UserId,
    name: string,
    pending: ReadonlyMap<ConversationId, ReadonlySet<string>>,
  ): void {
    // The items stay listed as pending until their removal is applied: a write of the user's checked
    // meanwhile must not take one of them (shown until then) for an entry of the relay's.
    const handedBack = new Map([...pending].map(([key, items]) => [key, new Set(items)]))
    // Items done with: removed now, or already replaced (a later write); one of a write not applied
    // yet stays pending for that write's own turn.
    const done: [ConversationId, string][] = []
    this.core
      ?.write(name, { kind: "relay" }, (inbox) => {
        const entries = inbox.getMap(InboxTopLevel.entries)
        for (const [key, items] of handedBack) {
          const current = (entries as unknown as { readonly _map: Map<string, Y.Item> })._map.get(key)
          const shown = current && !current.deleted ? itemKey(current) : undefined
          for (const item of items) {
            const [client, clock] = item.split(":").map(Number) as [number, number]
            if (item === shown) entries.delete(key)
            if (item === shown || Y.getState(inbox.store, client) > clock) done.push([key, item])
          }
        }
      })
      .then(() => {
        const mine = this.handedBack.get(user)
        if (!mine) return
        for (const [key, item] of done) {
          const listed = mine.get(key)
          listed?.delete(item)
          if (listed?.size === 0) mine.delete(key)
        }
        if (mine.size === 0) this.handedBack.delete(user)
      })
      .catch(() => {})
  }

  /** Whether the entry `inbox` shows under `key` is one of `user`'s own writes the relay is to remove. */
  private pendingRemoval(user: UserId, inbox: Y.Doc, key: string): boolean {
    const listed = this.handedBack.get(user)?.get(key as ConversationId)
    if (!listed) return false
    const current = (
      inbox.getMap(InboxTopLevel.entries) as unknown as { readonly _map: Map<string, Y.Item> }
    )._map.get(key)
    return current !== undefined && listed.has(itemKey(current))
  }

  /** Records `id` as missed by the away users it concerns (its members, the change's readers). */
  private noteMissed(id: ConversationId, doc: Y.Doc, events: AfterSaved["events"]): void {
    for (const e of events) {
      if (e.type === "messages.read") this.away.get(e.user)?.add(id)
      if (e.type === "participants.added") for (const p of e.participants) this.away.get(p.user)?.add(id)
    }
    if (events.every((e) => e.type === "messages.read")) return
    const participants = typesOf(doc).participants
    if (this.away.size < (participants as unknown as { readonly _map: Map<string, unknown> })._map.size) {
      for (const [user, missed] of this.away) if (participants.has(user)) missed.add(id)
    } else {
      for (const user of participants.keys()) this.away.get(user as UserId)?.add(id)
    }
  }

  /**
   * Derives `user`'s entries from the conversations and writes what differs:
   * every entry (`"all"`) or those of `keys`. One refresh runs per user; what
   * is asked for meanwhile is merged and runs next.
   */
  private refresh(user: UserId, keys: "all" | Iterable<ConversationId>): void {
    let wanted = this.wanted.get(user)
    if (!wanted) {
      wanted = { full: false, keys: new Set() }
      this.wanted.set(user, wanted)
    }
    if (keys === "all") wanted.full = true
    else for (const key of keys) wanted.keys.add(key)
    if (this.refreshing.has(user)) return
    this.refreshing.add(user)
    const run = async (): Promise<void> => {
      for (;;) {
        const next = this.wanted.get(user)
        this.wanted.delete(user)
        if (!next || !this.connected.has(user)) return
        await this.refreshOnce(user, next)
      }
    }
    run()
      .catch(() => {
        // Derived data: the next connection or change derives it again.
        const last = this.lastFull.get(user)
        if (last) last.complete = false
      })
      .finally(() => this.refreshing.delete(user))
  }

  private async refreshOnce(user: UserId, wanted: Wanted): Promise<void> {
    const core = this.core
    if (!core || !this.connected.has(user)) return
    let ids: readonly string[] = [...wanted.keys]
    let last: LastFull | undefined
    if (wanted.full) {
      last = { at: this.now(), complete: false, missed: undefined, timer: undefined }
      const before = this.lastFull.get(user)
      if (before) clearTimeout(before.timer)
      this.lastFull.set(user, last)
      this.away.delete(user)
      // Not the user's own entries under keys the inbox showed nothing under (removed again at once):
      // deriving them would load conversations of the user's choosing.
      const all = await core.read(inboxDocumentName(user), (inbox) =>
        [...inbox.getMap(InboxTopLevel.entries).keys()].filter(
          (key) => !this.pendingRemoval(user, inbox, key),
        ),
      )
      ids = [...new Set([...all, ...wanted.keys])]
    }
    let slice = performance.now()
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!
      // Each conversation is a load and a read whose promises settle without waiting for I/O: a
      // user in thousands of conversations would hold the event loop for seconds, every other user's
      // frames waiting behind it. Back to the loop every few ms.
      if (performance.now() - slice > REFRESH_SLICE_MS) {
        await new Promise((resolve) => setImmediate(resolve))
        slice = performance.now()
      }
      if (!this.connected.has(user)) {
        // They left meanwhile: what was not derived yet is derived when they come back.
        const missed = this.away.get(user)
        if (missed) {
          for (const rest of ids.slice(i)) missed.add(rest as ConversationId)
          // What this pass did not reach is in their missed set: derived when they come back.
          if (last) last.complete = true
        }
        return
      }
      const conversation = id as ConversationId
      let flight = this.inFlight.get(conversation)
      if (!flight) {
        flight = { readers: 0, membershipChanges: 0 }
        this.inFlight.set(conversation, flight)
      }
      flight.readers++
      try {
        let entry: InboxEntry | undefined
        let headJson = "null"
        const seen = flight.membershipChanges
        try {
          ;[entry, headJson] = await core.read(id, (doc) => {
            const head = conversationHead(doc)
            return [head && entryFromHead(head, doc, user), JSON.stringify(head?.entry ?? null)] as const
          })
        } catch (error) {
          // A damaged conversation keeps its entry as it was until it is restored; a bad key goes.
          if (error instanceof ParleyError && error.code === ErrorCode.DAMAGED) continue
          if (!(error instanceof ParleyError && error.code === ErrorCode.NOT_FOUND)) throw error
          entry = undefined
        }
        const current = flight
        const written = await this.write(
          user,
          conversation,
          entry,
          headJson,
          () => current.membershipChanges === seen,
        )
        // Its membership changed between the read and the write: derived again from what it is now.
        if (written === "stale") this.refresh(user, [conversation])
      } finally {
        if (--flight.readers === 0) this.inFlight.delete(conversation)
      }
    }
    if (last) last.complete = true
  }

  /**
   * Writes the entries of `users` from a change: each one's read state in
   * `doc` (undefined: not a participant, the entry goes) on the change's head,
   * whose `values` are encoded once. An entry equal to the one last written
   * for its user is skipped without reading the inbox; the others' updates
   * are encoded by the relay, sent back to back, and applied to the relay's
   * copies later (`deferEntryReplacement`), in one call for all of them.
   */
  private writeStates(
    users: readonly UserId[],
    id: ConversationId,
    doc: Y.Doc,
    headJson: string,
    values: EntryValues,
  ): void {
    const core = this.core
    if (!core) return
    const names: string[] = []
    const states: (MemberReadState | undefined)[] = []
    const writing: UserId[] = []
    for (const user of users) {
      const state = memberReadState(doc, user)
      if (!this.remember(user, id, state, headJson, false)) continue
      names.push(this.inboxNames.get(user) ?? inboxDocumentName(user))
      states.push(state)
      writing.push(user)
    }
    if (names.length === 0) return
    core.deriveDeferredEach(
      names,
      (i, inbox, origin) => {
        const state = states[i]
        return deferEntryReplacement(inbox, id, state && values.member(state), origin)
      },
      (i) => this.shown.get(writing[i]!)?.delete(id),
    )
  }

  /**
   * Writes `user`'s entry from a refresh: compared with the inbox itself (the
   * user may have written it), in a transaction. "stale" (nothing written)
   * when `current()` says, as the write is applied, that the conversation's
   * membership changed since `entry` was read.
   */
  private write(
    user: UserId,
    id: ConversationId,
    entry: InboxEntry | undefined,
    headJson: string,
    current: () => boolean,
  ): Promise<boolean | "stale"> {
    const core = this.core
    if (!core) return Promise.resolve(false)
    const state = entry && {
      unread: entry.unread,
      readUpTo: entry.readUpTo,
      emergency: entry.emergency ?? [],
    }
    this.remember(user, id, state, headJson, true)
    let stale = false
    return core
      .derive(inboxDocumentName(user), (inbox) => {
        // Checked as the write is applied, not before the wait for it.
        if (!current()) {
          stale = true
          return
        }
        writeInboxEntry(inbox, id, entry)
      })
      .then((written) => {
        if (!stale) return written
        this.shown.get(user)?.delete(id)
        return "stale" as const
      })
      .catch(() => {
        this.shown.get(user)?.delete(id)
        return false
      })
  }

  /**
   * Records what `user`'s entry shows now; false when it shows what was last
   * written for them (and `always` is not set), so nothing needs writing.
   */
  private remember(
    user: UserId,
    id: ConversationId,
    state: MemberReadState | undefined,
    headJson: string,
    always: boolean,
  ): boolean {
    let mine = this.shown.get(user)
    const last = mine?.get(id)
    const emergency = state === undefined || state.emergency.length === 0 ? "" : state.emergency.join()
    if (
      !always &&
      last !== undefined &&
      (state === undefined
        ? last === GONE
        : last.head === headJson &&
          last.unread === state.unread &&
          last.readUpTo === state.readUpTo &&
          last.emergency === emergency)
    )
      return false
    if (state !== undefined && last !== undefined && last !== GONE) {
      // Updated in place: no record per connected member and message.
      last.head = headJson
      last.unread = state.unread
      last.readUpTo = state.readUpTo
      last.emergency = emergency
      return true
    }
    if (!mine) {
      mine = new Map()
      this.shown.set(user, mine)
    }
    mine.set(id, state ? { head: headJson, unread: state.unread, readUpTo: state.readUpTo, emergency } : GONE)
    return true
  }
}

/** What an entry written for a connected user showed: its head's JSON and the user's own figures. */
interface Shown {
  head: string
  unread: number
  readUpTo: number
  /** The user's unread emergency ids, joined (they change with the read marker, not always with `unread`). */
  emergency: string
}

/** A removed entry (the user is no longer a participant). */
const GONE: Readonly<Shown> = { head: "", unread: -1, readUpTo: -1, emergency: "" }

function safeParse(name: string) {
  try {
    return parseDocumentName(name)
  } catch {
    return undefined
  }
}
