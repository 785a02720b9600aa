import {
  type ChangeEventType,
  type ConversationId,
  conversationHead,
  ErrorCode,
  entryFromHead,
  type InboxEntry,
  InboxTopLevel,
  inboxDocumentName,
  type MemberReadState,
  memberReadState,
  ParleyError,
  parseDocumentName,
  typesOf,
  type UserId,
  writeInboxEntry,
} from "@parley/shared"
import type * as Y from "yjs"
import type { AfterSaved, ConnectionChange, RelayExtension, RunningCore } from "../extension.js"
import { deferEntryReplacement, EntryValues } from "./entry-update.js"

/** Changes that alter what an inbox entry shows (reactions and delivery markers do not). */
const SHOWN: ReadonlySet<ChangeEventType> = new Set<ChangeEventType>([
  "conversation.created",
  "conversation.updated",
  "conversation.deleted",
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
 * derived before a crash, never stored) or writes itself is derived again
 * right after it is stored, so the list converges on the conversations.
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
  private readonly refreshing = new Map<UserId, { again: boolean }>()
  /**
   * Each connected user's inbox document name, made once: the relay looks the
   * inbox up by it once per member and message, and a name built afresh each
   * time is hashed afresh.
   */
  private readonly inboxNames = new Map<UserId, string>()

  start(core: RunningCore): void {
    this.core = core
  }

  connectionChanged({ name, principal, open }: ConnectionChange): void {
    const parsed = safeParse(name)
    if (parsed?.kind !== "inbox" || principal.kind !== "user" || principal.user !== parsed.user) return
    const user = parsed.user
    const count = (this.connected.get(user) ?? 0) + (open ? 1 : -1)
    if (count > 0) {
      this.connected.set(user, count)
      if (!this.inboxNames.has(user)) this.inboxNames.set(user, inboxDocumentName(user))
    } else {
      this.connected.delete(user)
      this.shown.delete(user)
      this.inboxNames.delete(user)
    }
    if (open) this.refresh(user)
  }

  afterSaved({ name, doc, actor, events }: AfterSaved): void {
    const parsed = safeParse(name)
    if (parsed?.kind === "inbox") {
      // The user wrote entries (or muted): derive what they may have changed.
      if (actor.kind === "user" && actor.user === parsed.user) this.refresh(parsed.user)
      return
    }
    if (parsed?.kind !== "conversation" || this.connected.size === 0) return
    if (!events.some((e) => SHOWN.has(e.type))) return
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

  /** Derives every entry of `user`'s inbox from the conversations and writes what differs. */
  private refresh(user: UserId): void {
    const running = this.refreshing.get(user)
    if (running) {
      running.again = true
      return
    }
    const state = { again: false }
    this.refreshing.set(user, state)
    const run = async (): Promise<void> => {
      do {
        state.again = false
        await this.refreshOnce(user)
      } while (state.again && this.connected.has(user))
    }
    run()
      .catch(() => {
        // Derived data: the next connection or change derives it again.
      })
      .finally(() => this.refreshing.delete(user))
  }

  private async refreshOnce(user: UserId): Promise<void> {
    const core = this.core
    if (!core || !this.connected.has(user)) return
    const ids = await core.read(inboxDocumentName(user), (inbox) => [
      ...inbox.getMap(InboxTopLevel.entries).keys(),
    ])
    for (const id of ids) {
      if (!this.connected.has(user)) return
      let entry: InboxEntry | undefined
      let headJson = "null"
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
      await this.write(user, id as ConversationId, entry, headJson)
    }
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
   * user may have written it), in a transaction.
   */
  private write(
    user: UserId,
    id: ConversationId,
    entry: InboxEntry | undefined,
    headJson: string,
  ): Promise<boolean> {
    const core = this.core
    if (!core) return Promise.resolve(false)
    const state = entry && {
      unread: entry.unread,
      readUpTo: entry.readUpTo,
      emergency: entry.emergency ?? [],
    }
    this.remember(user, id, state, headJson, true)
    return core
      .derive(inboxDocumentName(user), (inbox) => {
        writeInboxEntry(inbox, id, entry)
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
