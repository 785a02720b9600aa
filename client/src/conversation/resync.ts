import {
  ErrorCode,
  getConversation,
  getMessage,
  type MessageId,
  messageIndex,
  ParleyError,
  type RebaseResult,
  type RefusedWork,
  Rule,
  rebasePendingWork,
  toParleyError,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import type { DocumentConnection } from "../connection.js"
import type { Generation } from "./generation.js"
import type { SealedHistory } from "./history.js"
import type { StatusTracker } from "./statuses.js"
import type { ConversationParts, EmitConversationEvent } from "./types.js"

/** Resyncs in a row without the relay saving anything in between, before unsaved work counts as failed. */
const MAX_RESYNCS_WITHOUT_SAVE = 3

const unsaved = (status: string | undefined) => status === "pending" || status === "failed"

/**
 * What a rebuild does with the user's pending work: re-apply what the rules
 * allow (after a refusal), or, on a readmission, fail all of it (see
 * {@link Resync.readmit}) with the error its refusal failed it with.
 */
type PendingWork = "rebase" | { readonly readmit: ParleyError }

/** What {@link Resync} needs of its conversation. */
export interface ResyncHost {
  readonly user: UserId
  readonly parts: ConversationParts
  readonly statuses: StatusTracker
  readonly history: SealedHistory
  readonly emit: EmitConversationEvent
  readonly closed: () => boolean
  /** The current generation. */
  current(): Generation
  /** Binds `doc` as the new current generation (not yet sharing with other tabs: see `joinTabs`). */
  replace(doc: Y.Doc, replica: Generation["replica"]): Generation
  /** Opens the local persistence of `doc`, telling {@link Resync.replacedByAnotherTab} (see `persistDocument`). */
  openReplica(doc: Y.Doc): Generation["replica"]
  /** Settles the conversation's state from the rebuilt replica. */
  settle(): void
  /** The id holds another conversation than the one created here: unavailable for good, with `error`. */
  taken(error: ParleyError): void
  /** The user is a participant again, the replica rebuilt on the relay's state: ready again (see {@link Resync.readmit}). */
  readmitted(): void
  /** Recounts the unread messages of the rebuilt replica. */
  refreshUnread(): void
}

/**
 * Recovery from the relay's refusals. The relay stores an update whole or
 * not at all, and every later update of this replica builds on a refused
 * one, so the replica cannot recover by itself: it is rebuilt from the
 * relay's state plus the user's pending work the rules still allow (shared
 * `rebasePendingWork`). A loop of refusals is bounded: after a few resyncs
 * without the relay saving anything, unsaved work counts as failed.
 */
export class Resync {
  private running = false
  /**
   * The document whose stored generation another tab replaced while a rebuild ran: rebuilt on what is
   * stored once that ends, if it is still the current one (not if the rebuild replaced it).
   */
  private replacedMeanwhile: Y.Doc | undefined
  /** Unsaved messages the relay's refusals named, with its error: left out of the next rebuild. */
  private readonly named = new Map<MessageId, ParleyError>()
  /** The work a removal refused that the replica still holds: left out of the next rebuild (see {@link refuseWork}). */
  private refusedWork: RefusedWork | undefined
  /** Resyncs since the relay last saved something: bounds a refuse → resync → refuse loop. */
  private withoutSave = 0
  /** Aborted when the conversation closes: ends a resync's fetch of the relay's state. */
  private readonly closing = new AbortController()

  constructor(private readonly host: ResyncHost) {}

  /**
   * The refusal the relay gave this replica's unsaved work for good (resyncing did not help), until it
   * saves something again: see {@link refusedForGood}.
   */
  private gaveUp: ParleyError | undefined

  /** The relay saved something: the loop bound starts over. */
  saved(): void {
    this.withoutSave = 0
    this.gaveUp = undefined
  }

  /**
   * The refusal the replica's unsaved work met for good, if it did (and the
   * relay saved nothing since). Everything the replica writes from then on
   * follows that work in its client's clock, so the relay refuses it too: as
   * following changes it does not have (`missing-changes`, retryable) when it
   * comes in a later part than the refused one. Re-sent on that, the refused
   * part was refused again, and the rest again, every few seconds for good (an
   * outside tester: a group creation the relay refused); such retryable
   * refusals fail the work with this error instead.
   */
  get refusedForGood(): ParleyError | undefined {
    return this.gaveUp
  }

  /** The conversation closed. */
  close(): void {
    this.closing.abort()
  }

  /** The relay refused an update (not retryably): resync, or give up on unsaved work after too many. */
  refused(error: ParleyError): void {
    const { emit, statuses } = this.host
    // The live document started a new epoch: rebuilding is the ordinary way onto it, not an error.
    if (error.rule === Rule.epoch) {
      void this.run().catch((failure: unknown) => {
        emit("error", { error: toParleyError(failure) })
        // The replica is kept (the rebuild never replaced it): rejoining gets the epoch refusal, and so
        // another try (its record or the relay's state was not to be had), a few times without a save.
        if (this.withoutSave < MAX_RESYNCS_WITHOUT_SAVE && this.host.parts.online())
          this.host.current().connection.start()
      })
      return
    }
    // The conversation was deleted while this device was offline: the deletion tells the app, as online
    // (`conversation.deleted`, its `deletedAt`), and the rebuild below tells what it refused, each once.
    let told = false
    const tell = () => {
      if (!told && error.rule !== Rule.conversationDeleted) emit("error", { error })
      told = true
    }
    // A refusal that names one of the user's unsaved messages (a rule of the relay's own, such as a
    // date checked against its clock) is about that message: the rebuild leaves it out, so it is not
    // sent again to be refused again with everything written after it (before: one message dated by a
    // clock two days ahead blocked every later send on the device, reloads included). Each such
    // rebuild drops a message, so it is progress, not a loop.
    const named = this.unsavedNamedBy(error)
    if (named.length > 0) {
      // Told as it came: the rebuild keeps the message failed with this error, and tells nothing more of it.
      tell()
      for (const id of named) this.named.set(id, error)
      void this.run("relay", false).catch((failure: unknown) => {
        emit("error", { error: toParleyError(failure) })
        if (this.host.parts.online()) this.host.current().connection.start()
      })
      return
    }
    if (this.withoutSave >= MAX_RESYNCS_WITHOUT_SAVE) {
      tell()
      // Resyncing did not help (the relay refuses even the re-applied work): give up on what is unsaved,
      // and say so once, in words, before the relay's refusal is repeated (see `refusedForGood`).
      if (this.gaveUp === undefined)
        emit("error", {
          error: new ParleyError(
            error.code,
            `the relay refused this device's unsaved changes to the conversation for good, also after ${MAX_RESYNCS_WITHOUT_SAVE} rebuilds on its state (${error.message}): they are failed and no longer retried (a new connection sends them once more)`,
            { cause: error, ...(error.rule === undefined ? {} : { rule: error.rule }) },
          ),
        })
      this.gaveUp = error
      this.host.current().connection.holdPendingWork()
      statuses.refuseUnsaved(error)
      statuses.refresh()
      return
    }
    // Told by the rebuild when it fails what was refused (each failed change as an `error` event with the
    // change, each message by its status); the relay's refusal only when it fails nothing. Before, a
    // reaction to a message deleted meanwhile was told twice: FORBIDDEN from the relay, NOT_FOUND from here.
    void this.run("relay", true, "rebase", tell).catch((failure: unknown) => {
      tell()
      emit("error", { error: toParleyError(failure) })
      // Try again on the next connect; meanwhile, show what is stuck as failed.
      statuses.refuseUnsaved(error)
      statuses.refresh()
      if (this.host.parts.online()) this.host.current().connection.start()
    })
  }

  /**
   * The user is a participant again after the relay refused them (removed,
   * or never a participant of what the relay holds under this id), the work
   * this replica never got saved told as failed then. That work is not sent
   * now: the replica is rebuilt on the relay's state without any of it (its
   * messages kept failed, outside the replica, until the app retries or
   * discards them), and the conversation is ready again once it is. Before,
   * the handle connected again with its replica, and messages the UI had
   * shown failed went out on their own, to an audience chosen by whoever
   * added the user back (an outside tester's report). Rejects when the
   * relay's state cannot be had (the conversation stays unavailable).
   */
  readmit(refusal: ParleyError): Promise<void> {
    return this.run("relay", false, { readmit: refusal })
  }

  /**
   * Message `id`, which the replica holds unsaved, was refused with `error`
   * (the user removed: see `Conversation`): every rebuild leaves it out from
   * now on, keeping it failed outside the replica.
   */
  leaveOut(id: MessageId, error: ParleyError): void {
    this.named.set(id, error)
  }

  /**
   * The relay refused the replica's work written up to `work.through` (the
   * user removed: see `Conversation`): the next rebuild leaves all of it out
   * (edits, reactions, deletions, ..., not only the messages of
   * {@link leaveOut}), failed with `work.error` and told, and re-applies what
   * was written after it. Kept on the device until then, so that a reload
   * does the same (before, a reload forgot it, and the replica's sync sent
   * the edits and reactions if the user had been added back).
   */
  refuseWork(work: RefusedWork): void {
    this.refusedWork = work
  }

  /**
   * Rebuilds the replica on the relay's state, leaving out the messages
   * named by {@link leaveOut} and the work of {@link refuseWork} (and re-applying the rest of the pending work):
   * after a reload, the replica still holds the messages a removal refused,
   * and connecting would send them (the user may have been added back).
   * Rejects when the relay's state cannot be had.
   */
  withoutRefused(): Promise<void> {
    return this.run("relay", false)
  }

  /** The user's unsaved messages in the replica whose ids `error`'s reason names (the relay names what it refuses). */
  private unsavedNamedBy(error: ParleyError): MessageId[] {
    if (error.rule === undefined) return []
    const { statuses, user } = this.host
    const named: MessageId[] = []
    for (const [id, record] of messageIndex(this.host.current().doc).records)
      if (record.author === user && error.message.includes(id) && unsaved(statuses.status(id))) named.push(id)
    return named
  }

  /**
   * Another tab of this user replaced what is stored with its rebuilt replica
   * (its own resync, onto the relay's state under a new client id). What this
   * replica writes from now on builds on structs the stored state no longer
   * holds: written, it could never be applied by a reload or the relay (an
   * outside tester: a message sent in that tab was gone after a reload, with
   * nothing said). So this replica is rebuilt the same way, on what is stored
   * instead of the relay's state (this tab may be offline): its pending work
   * is re-applied, and what the rules refuse is reported as a resync does.
   */
  replacedByAnotherTab(doc: Y.Doc): void {
    if (this.host.closed()) return
    if (this.running) {
      this.replacedMeanwhile = doc
      return
    }
    if (this.host.current().doc !== doc) return
    this.rebuildOnStore()
  }

  private rebuildOnStore(): void {
    void this.run("store").catch((failure: unknown) => {
      this.host.emit("error", { error: toParleyError(failure) })
      // The replica is kept (in memory: its writes no longer stored); it still talks to the relay.
      if (this.host.parts.online()) this.host.current().connection.start()
    })
  }

  /**
   * Replaces the replica with the relay's state (`source` "relay") or what is
   * stored locally ("store", see {@link replacedByAnotherTab}), plus this
   * user's pending work that the rules still allow. The refused work is
   * reported: `error` events with the change, and `failed` statuses for
   * messages. The new document gets a new Yjs client id; from the relay, local
   * storage is rewritten in one transaction, so a reload sees the old or the
   * new replica, never a mix.
   */
  private async run(
    source: "relay" | "store" = "relay",
    counted = true,
    pending: PendingWork = "rebase",
    /** Tells the refusal that asked for this rebuild, if the rebuild fails nothing (see `refused`). */
    unexplained?: () => void,
  ): Promise<void> {
    const host = this.host
    if (this.running || host.closed()) {
      unexplained?.()
      return
    }
    this.running = true
    try {
      await this.rebuild(source, counted, pending, unexplained)
    } finally {
      this.running = false
      const replaced = this.replacedMeanwhile
      this.replacedMeanwhile = undefined
      if (replaced && !host.closed() && host.current().doc === replaced) this.rebuildOnStore()
    }
  }

  private async rebuild(
    source: "relay" | "store",
    counted: boolean,
    pending: PendingWork,
    unexplained?: () => void,
  ): Promise<void> {
    const host = this.host
    if (source === "relay" && counted) this.withoutSave++
    const old = host.current()
    // A held connection (see `DocumentConnection.hold`) sends nothing; it is what rebuilds, and what
    // retries with backoff (or tells the relay's refusal) when this fails.
    if (!old.connection.held) old.connection.stop()
    const fresh = new Y.Doc()
    // How far the relay had the clients of the replica's epoch: what tells its pending work.
    let baseline: Map<number, number> | undefined
    // From the store: the replica of the fresh document, loaded with what the other tab stored.
    let stored: Generation["replica"] | undefined
    if (source === "store") {
      stored = host.openReplica(fresh)
      await stored.loaded
      // A stored state without the conversation was not read (local storage failing, told as an `error`
      // already): rebuilt on it, every record would count as pending work. This replica stays, in memory.
      const unread = getConversation(old.doc) !== undefined && getConversation(fresh) === undefined
      if (host.closed() || host.current() !== old || unread) {
        await stored.destroy()
        fresh.destroy()
        if (unread && !host.closed() && host.current() === old && host.parts.online()) old.connection.start()
        return
      }
    } else {
      try {
        // Pending work on messages sealed meanwhile needs their segments, and a replica of an epoch
        // two or more back its epoch record: fetched over the same connection.
        await host.parts.fetchRelayState(
          fresh,
          this.closing.signal,
          async (connection: DocumentConnection) => {
            baseline = await host.history.fetchForPendingWork(old.doc, fresh, connection)
          },
        )
      } catch (error) {
        fresh.destroy()
        throw error
      }
      if (host.closed() || host.current() !== old) {
        fresh.destroy()
        unexplained?.()
        return
      }
    }
    // Pending work on sealed messages is re-applied against the segments this replica holds.
    host.history.holdIn(fresh)
    // Synchronous from here to the swap: no write of the user can fall between the two documents.
    // (From the store, the epoch's baseline is the one the stored state holds: the other tab's rebuild
    // fetched what an older epoch needed.)
    const rebased =
      pending === "rebase"
        ? rebasePendingWork(old.doc, fresh, host.user, baseline, this.named, this.refusedWork)
        : this.refusedOnReadmission(old.doc, fresh, baseline, pending.readmit)
    // The id holds another conversation than the one created on this device: nothing of it was re-applied
    // (shared `rebasePendingWork`), and this conversation is not served here any more.
    const taken = rebased.failed.find(
      (f) => f.what.kind === "conversation.create" && f.error.rule === Rule.conversationIdTaken,
    )?.error
    // What the handle shows then: nothing, not the other conversation (its title, participants and messages
    // are a stranger's, which the user never opened), stored so too. The app may open that one afresh.
    const next = taken && source === "relay" ? new Y.Doc() : fresh
    // The messages left out as the relay refused them: kept as the user wrote them, failed, outside the
    // replica (the app may retry or discard them); their refusal was told as it came.
    const told = new Set<MessageId>()
    // Deleted meanwhile (offline across the deletion): its messages are kept failed the same way, so that
    // their status stays `failed` across reloads (before, it was `undefined` once the handle closed), and
    // each is told by its status alone, as a removal tells them; the markers it refused go unsaid (as a
    // removal's: nobody reads a deleted conversation). Other changes are `error` events, as a removal's.
    const deleted = getConversation(fresh)?.deletedAt !== undefined
    // Every refusal is the deletion's then, whatever the rebase met first (an edit or a reaction of a
    // message the deletion purged failed NOT_FOUND "no message …", which the message did not deserve).
    const deletion = new ParleyError(ErrorCode.FORBIDDEN, "the conversation is deleted", {
      rule: Rule.conversationDeleted,
    })
    const result = deleted
      ? { ...rebased, failed: rebased.failed.map((f) => ({ ...f, error: deletion })) }
      : rebased
    const byDeletion = (error: ParleyError) => deleted && error.rule === Rule.conversationDeleted
    // Kept failed outside the replica too: the messages written into a creation the relay never took, and
    // those a refusal failed before a readmission (their refusal told as it came).
    const refusedWork = this.refusedWork?.error
    const keptOut = (error: ParleyError) => error === taken || error === refusedWork || pending !== "rebase"
    for (const { what, error } of result.failed) {
      if (what.kind !== "message.send") continue
      if (this.named.get(what.id) !== error && !byDeletion(error) && !keptOut(error)) continue
      const view = getMessage(old.doc, what.id)
      if (view) host.statuses.keepRefused(view, error)
      told.add(what.id)
    }
    this.named.clear()
    // The rebuilt replica holds none of it: nothing to leave out any more (on the device once it is stored).
    const leftOutWork = this.refusedWork !== undefined
    this.refusedWork = undefined
    old.dispose()
    // Other tabs of this user may still hold the refused changes and would hand them back over the
    // cross-tab channel: the rebuilt replica shares only with the tabs on its stored generation, once
    // it is known (in memory there are none: it talks to the relay only).
    const current = host.replace(next, stored ?? old.replica)
    if (next !== fresh) fresh.destroy()
    const snapshot = Y.encodeStateAsUpdate(next)
    for (const { what, error } of result.failed)
      if (what.kind === "message.send") host.statuses.lost.set(what.id, error)
    host.statuses.trackAll(next, host.user, true)
    // Before settling: the relay's conversation must not make this one ready.
    if (taken) host.taken(taken)
    else if (pending !== "rebase") host.readmitted()
    host.settle()
    if (result.failed.length === 0) unexplained?.()
    host.emit("resynced", { reapplied: result.reapplied, failed: result.failed })
    for (const { what, error } of result.failed) {
      if (what.kind === "message.send") host.emit("status", { messageId: what.id, status: "failed", error })
      if (what.kind === "message.send" ? told.has(what.id) : what.kind === "marker" && byDeletion(error))
        continue
      // Readmitted, the other changes' refusal was told when it came (see `Conversation`'s `unavailable`).
      if (pending !== "rebase" && error !== taken) continue
      host.emit("error", { error, change: what })
    }
    host.emit("change", { events: [], local: false })
    host.refreshUnread()
    if (source === "relay") {
      await old.replica.replaceWith(snapshot)
      if (leftOutWork) host.parts.uploads?.dropRefusedWork()
      await old.replica.destroy()
      old.doc.destroy()
      if (host.closed() || host.current() !== current) return
      current.replica = host.openReplica(next)
      await current.replica.loaded
      if (host.closed() || host.current() !== current) return
    } else {
      // What is stored is the other tab's generation, kept: the re-applied work was written onto it.
      if (leftOutWork) host.parts.uploads?.dropRefusedWork()
      await old.replica.destroy()
      old.doc.destroy()
      if (host.closed() || host.current() !== current) return
    }
    const generation = current.replica.generation
    if (generation !== undefined) current.connection.joinTabs(generation)
    // Unavailable (its id taken), it does not talk to the relay's conversation: the app may open that as its own.
    if (taken) return
    if (!host.closed() && host.current() === current && host.parts.online()) current.connection.start()
  }

  /**
   * On a readmission (see {@link readmit}): all of the user's pending work in
   * `stale`, failed, none of it written into `fresh` (it is found as a rebase
   * finds it, onto a scratch copy). Messages keep the error their refusal
   * failed them with; a creation whose id holds another conversation fails
   * everything as taken, as a rebase does.
   */
  private refusedOnReadmission(
    stale: Y.Doc,
    fresh: Y.Doc,
    baseline: Map<number, number> | undefined,
    refusal: ParleyError,
  ): RebaseResult {
    const scratch = new Y.Doc()
    try {
      Y.applyUpdate(scratch, Y.encodeStateAsUpdate(fresh))
      const found = rebasePendingWork(stale, scratch, this.host.user, baseline, this.named)
      if (found.failed.some((f) => f.error.rule === Rule.conversationIdTaken)) return found
      const failed = [...found.reapplied.map((what) => ({ what })), ...found.failed].map(({ what }) => ({
        what,
        error: (what.kind === "message.send" && this.host.statuses.failure(what.id)) || refusal,
      }))
      return { reapplied: [], failed }
    } finally {
      scratch.destroy()
    }
  }
}
