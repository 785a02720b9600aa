import {
  type ConversationId,
  ErrorCode,
  type MessageId,
  ParleyError,
  type PendingChange,
} from "@parley/shared"

/**
 * Work written on this device that the relay has not acknowledged as saved,
 * in one document: a conversation, or the user's inbox (mutes). See
 * `ChatClient.unsaved()`, `ChatClient.flush()` and `ChatClient.destroy()`.
 */
export interface UnsavedWork {
  /** The conversation; absent for the user's inbox (a mute or unmute). */
  readonly conversationId?: ConversationId
  /** The user's messages not saved yet (status `pending`), those waiting for file uploads included. */
  readonly messageIds: readonly MessageId[]
  /** The user's other changes not saved yet: edits, deletions, reactions, participants, title, profile. */
  readonly changes: readonly PendingChange[]
}

/** How often a wait for the relay's acknowledgements looks again. */
const POLL_MS = 25

/**
 * Waits until `pending()` is false (resolves true), `timeoutMs` passed, or
 * `progressing()` says waiting cannot help (both resolve false). `cancels`
 * holds the wait's cancel function, so that destroying the client ends it.
 * `pending` is polled: it must be cheap (no listing of the changes).
 */
export function waitUntilSaved(
  pending: () => boolean,
  timeoutMs: number,
  cancels: Set<() => void>,
  progressing: () => boolean = () => true,
): Promise<boolean> {
  if (!pending()) return Promise.resolve(true)
  return new Promise<boolean>((resolve) => {
    // Polled, not driven by events: a resync replaces the connection, uploads and saves end it alike,
    // and a few checks of a state vector per poll cost nothing next to the network.
    const started = Date.now()
    const finish = (saved: boolean) => {
      clearInterval(timer)
      cancels.delete(cancel)
      resolve(saved)
    }
    const cancel = () => finish(false)
    cancels.add(cancel)
    const timer = setInterval(() => {
      if (!pending()) finish(true)
      else if (Date.now() - started >= timeoutMs || !progressing()) finish(false)
    }, POLL_MS)
  })
}

/** Says what is not saved, e.g. `g~team: 3 messages (m_a, m_b, m_c) and 1 other change; the inbox: 1 change`. */
export function describeUnsaved(work: readonly UnsavedWork[]): string {
  return work
    .map((w) => {
      const parts: string[] = []
      if (w.messageIds.length > 0)
        parts.push(
          `${w.messageIds.length} message${w.messageIds.length === 1 ? "" : "s"} (${w.messageIds.join(", ")})`,
        )
      if (w.changes.length > 0 || parts.length === 0) {
        const n = w.changes.length
        const what =
          n === 0 ? "changes" : `${n} ${parts.length > 0 ? "other " : ""}change${n === 1 ? "" : "s"}`
        parts.push(
          n === 0 ? `unacknowledged ${what}` : `${what} (${w.changes.map((c) => c.kind).join(", ")})`,
        )
      }
      return `${w.conversationId ?? "the inbox"}: ${parts.join(" and ")}`
    })
    .join("; ")
}

/**
 * The retryable error that says `work` is not saved by the relay: TIMEOUT
 * when the client is online (the relay is slow to acknowledge), else
 * UNAVAILABLE (the relay cannot be reached, or the client is offline).
 */
export function unsavedError(work: readonly UnsavedWork[], online: boolean, what: string): ParleyError {
  return new ParleyError(
    online ? ErrorCode.TIMEOUT : ErrorCode.UNAVAILABLE,
    `${what}: not saved by the relay${online ? "" : " (not connected)"}: ${describeUnsaved(work)}`,
  )
}
