import {
  ErrorCode,
  expireMessage,
  fleetingExpiry,
  fleetingSecondsOf,
  getMessage,
  type MessageId,
  messageIndex,
  ParleyError,
} from "@parley/shared"
import type * as Y from "yjs"
import type { RunningCore } from "../extension.js"
import { DeferDelivery, type DeliveryTarget, exponentialBackoff } from "../hooks/dispatcher.js"
import type { HookEvent } from "../hooks/events.js"
import { RELAY } from "../principal.js"

/** What the target decided about one fleeting message, read from its conversation. */
type Due = { readonly state: "gone" } | { readonly state: "due"; readonly at: number }

/**
 * Makes `fleeting` messages disappear: a delivery target of the hook
 * pipeline that takes each `message.sent` of a fleeting message and, once
 * its time is up (the conversation's `fleetingSeconds` after it was written;
 * shared `fleetingExpiry`), has the relay replace it by a deletion
 * placeholder, which the relay then purges from storage like any deletion
 * (relay README, "Deletion and erasure").
 *
 * The schedule is the outbox itself: until the message is due, the delivery
 * is deferred to its due time ({@link DeferDelivery}), which the outbox
 * stores, so that it survives a restart and an overdue one runs at start.
 * Due times are read again when the delivery runs, so a changed setting
 * counts (a shortened one waits for the deferral in place, since a
 * conversation's deliveries to a target run in order).
 */
export function fleetingTarget(core: RunningCore): DeliveryTarget {
  return {
    name: "fleeting",
    accepts: (type) => type === "message.sent",
    // Only fleeting messages are owed anything: the others cost no outbox row.
    wants: (event) =>
      event.event.type === "message.sent" &&
      (event as HookEvent<"message.sent">).subject.message.priority === "fleeting",
    async deliver(hookEvent) {
      const event = hookEvent as HookEvent<"message.sent">
      // A purged event (its conversation or message deleted since) has no message left to expire.
      const message = event.subject.message as HookEvent<"message.sent">["subject"]["message"] | undefined
      if (message?.priority !== "fleeting") return
      const name = event.event.conversationId
      const id = message.id as MessageId
      const accepted = event.event.time
      let due: Due
      try {
        due = await core.read(name, (doc) => dueOf(doc, id, accepted))
      } catch (error) {
        if (error instanceof ParleyError && error.code === ErrorCode.NOT_FOUND) return
        throw error
      }
      if (due.state === "gone") return
      if (due.at > Date.now()) throw new DeferDelivery(due.at)
      await expire(core, name, id)
    },
    retryDelay: exponentialBackoff({ baseMs: 1_000, maxMs: 60_000, attempts: 20 }),
  }
}

function dueOf(doc: Y.Doc, id: MessageId, accepted: number): Due {
  const view = getMessage(doc, id)
  // Not here (sealed, and the directory not loaded) counts as due: `expire` loads it.
  if (!view) return { state: "due", at: 0 }
  if (view.deleted) return { state: "gone" }
  const at = fleetingExpiry(view, fleetingSecondsOf(doc), accepted)
  return at === undefined ? { state: "gone" } : { state: "due", at }
}

/**
 * Writes the expiry as the relay; a sealed message needs its segment held
 * first: only the segments its id filter names are read (not the
 * conversation's whole history, once per expiring message).
 */
async function expire(core: RunningCore, name: string, id: MessageId): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const doc = await core.read(name, (d) => d)
    const live = getMessage(doc, id)
    if (!live) await core.settleSealedIds?.(name, [id])
    let done = false
    await core.write(name, RELAY, (current) => {
      // The segment of a sealed message is held by the document read. A write on another copy (unloaded
      // in between; a relay that does not own the conversation runs it on a fresh one) holds the message
      // only while it is live: waiting for the same object looped for ever there (an outside probe found
      // the erasure's twin of this loop spinning at full CPU).
      if (current !== doc && !getMessage(current, id)) return
      done = true
      expireMessage(current, id)
      // The others already due go in the same change: their own deliveries then find them gone.
      // One change per message cost a relay write, a broadcast and a purge each (a frame of 1,000
      // fleeting messages, two seconds of the relay's time).
      for (const other of dueLiveMessages(current, Date.now(), EXPIRED_PER_CHANGE))
        expireMessage(current, other)
    })
    if (done) return
    // Unloaded in between: the segment went with it, so again on the fresh load; not for ever (the
    // delivery is retried with its backoff).
    if (attempt >= EXPIRE_ATTEMPTS)
      throw new ParleyError(
        ErrorCode.UNAVAILABLE,
        `fleeting message ${id} of ${name} is sealed and its segment could not be held for the expiry; tried again later`,
      )
    await new Promise((resolve) => setTimeout(resolve, 20 * attempt))
  }
}

/** Tries of one expiry (see {@link expire}) before its delivery is retried later. */
const EXPIRE_ATTEMPTS = 5

/** Most messages one expiry change removes (about an at-cap frame's values). */
const EXPIRED_PER_CHANGE = 1_000

/**
 * Live fleeting messages of `doc` whose time is up at `now` by their own
 * `createdAt` (the time the relay accepted one may make it due sooner, never
 * later), at most `most`.
 */
function dueLiveMessages(doc: Y.Doc, now: number, most: number): MessageId[] {
  const index = messageIndex(doc)
  const seconds = fleetingSecondsOf(doc)
  const due: MessageId[] = []
  for (const [id, record] of index.records) {
    if (due.length >= most) break
    if (index.deleted.has(id)) continue
    const at = fleetingExpiry(record, seconds)
    if (at !== undefined && at <= now) due.push(id)
  }
  return due
}
