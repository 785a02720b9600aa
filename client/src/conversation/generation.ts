import {
  type ChangeEvent,
  ErrorCode,
  observeChanges,
  ParleyError,
  Rule,
  sealedSegments,
  typesOf,
  type UserId,
} from "@parley/shared"
import { Awareness } from "y-protocols/awareness"
import type * as Y from "yjs"
import type { DocumentConnection } from "../connection.js"
import { MessageStatuses } from "../message-status.js"
import { PresenceTracker, type UserPresence } from "../presence.js"
import type { LocalReplica } from "../storage.js"
import { TypingIndicator } from "../typing.js"
import type { ConversationParts } from "./types.js"

/** One generation of the local replica: a document and what is bound to it. A resync replaces it whole. */
export interface Generation {
  readonly doc: Y.Doc
  readonly awareness: Awareness
  readonly connection: DocumentConnection
  readonly statuses: MessageStatuses
  readonly typing: TypingIndicator
  readonly presence: PresenceTracker
  replica: LocalReplica
  /** Unbinds and frees everything but the replica and the document. */
  readonly dispose: () => void
}

/** What a generation reports to its conversation. */
export interface GenerationEvents {
  typing(users: readonly UserId[]): void
  presence(list: readonly UserPresence[]): void
  /** The relay's history of this replica's client id is someone else's: rebuild (once per generation). */
  diverged(error: ParleyError): void
  /** The connection's status changed. */
  status(): void
  /** The relay saved everything up to this state vector (not reported once diverged). */
  saved(stateVector: Map<number, number>): void
  /** The relay refused a frame (retryable refusals are resent here, not reported). */
  refused(error: ParleyError): void
  /** The relay will not let this connection in again. */
  unavailable(error: ParleyError): void
  /** The relay refused to open it for now (`documents-per-user`); the connection keeps trying. */
  limited(error: ParleyError): void
  /** The document changed. */
  changed(events: ChangeEvent[], transaction: Y.Transaction): void
  /** The relay re-sealed or dropped sealed segments, in `transaction` (which says what left the document with them). */
  segmentsChanged(doc: Y.Doc, transaction: Y.Transaction): void
}

/**
 * Binds `doc` and everything that lives with it: awareness, the connection to
 * the relay, message statuses, typing and presence, and the observers that
 * turn what happens to them into {@link GenerationEvents}.
 */
export function bindGeneration(
  parts: ConversationParts,
  doc: Y.Doc,
  replica: LocalReplica,
  shareWithTabs: boolean,
  on: GenerationEvents,
): Generation {
  const awareness = new Awareness(doc)
  const statuses = new MessageStatuses(doc, parts.user)
  const typing = new TypingIndicator(awareness, parts.user, on.typing, parts.clock)
  const presence = new PresenceTracker(awareness, parts.user, parts.presence, on.presence, parts.clock)
  const connection = parts.connect(doc, awareness, shareWithTabs)
  // Set once the relay's history of this replica's client id turned out to be someone else's:
  // its "saved" acknowledgements then cover their structs, not ours, and the replica is rebuilt.
  let diverged = false
  const diverge = (error: ParleyError) => {
    if (diverged) return
    diverged = true
    on.diverged(error)
  }
  // The relay re-seals a segment without a purged message, or drops a deleted conversation's segments.
  // Summaries are decoded first: shared's cache of them then drops them (its observer) before this runs.
  sealedSegments(doc)
  const onSegments = (_event: unknown, transaction: Y.Transaction) => on.segmentsChanged(doc, transaction)
  typesOf(doc).segments.observe(onSegments)
  const ownId = doc.clientID
  const onCleanup = (transaction: Y.Transaction) => {
    if (transaction.local || transaction.afterState.get(ownId) === transaction.beforeState.get(ownId)) return
    // Another client wrote under this replica's id on the relay first. Yjs has just moved the
    // document to a new id, but the awareness (the user's presence, typing) stays keyed by the
    // id it was made with, and the replica is rebuilt anyway: keep the id until then.
    doc.clientID = ownId
    const error = new ParleyError(
      ErrorCode.FORBIDDEN,
      "another client wrote under this replica's client id",
      {
        rule: Rule.clientIdOwner,
      },
    )
    queueMicrotask(() => diverge(error))
  }
  doc.on("afterTransactionCleanup", onCleanup)
  connection.on("diverged", ({ error }) => diverge(error))
  connection.on("status", () => on.status())
  connection.on("saved", ({ stateVector }) => {
    if (!diverged) on.saved(stateVector)
  })
  connection.on("refused", ({ error }) => on.refused(error))
  connection.on("unavailable", ({ error }) => on.unavailable(error))
  connection.on("limited", ({ error }) => on.limited(error))
  const unobserve = observeChanges(doc, on.changed)
  return {
    doc,
    awareness,
    connection,
    statuses,
    typing,
    presence,
    replica,
    dispose: () => {
      doc.off("afterTransactionCleanup", onCleanup)
      typesOf(doc).segments.unobserve(onSegments)
      unobserve()
      typing.destroy()
      presence.destroy()
      connection.destroy()
      awareness.destroy()
    },
  }
}
