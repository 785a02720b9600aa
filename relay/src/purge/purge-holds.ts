import type { DeliveryHolds } from "../hooks/dispatcher.js"

/**
 * The documents whose hook deliveries wait for a purge (relay README, "Deletion and erasure"):
 * from before a change that deletes is stored until the document's purges are done. A delivery
 * read or recorded before the deletion (a `message.sent` waiting for its retry, a backlog behind a
 * slow webhook) still holds the deleted text until the purge redacts it, in memory and in the
 * outbox; a relay killed after storing the deletion restarts with the text in its outbox and the
 * purge still to run. Holding the document's lanes until the purge is done is what keeps that text
 * from leaving the relay, whatever the order in which the restarted relay's dispatcher and its
 * background purges get to the document.
 *
 * Held: a document about to store a deleting change (the update path, before its append), one a
 * load or a takeover finds owing a purge, one a takeover has not looked at yet (from its claim),
 * and, until a start has read it, every document the durable record of owed purges lists (see
 * `ContentPurge.owed`) — before that read, every document. Released once nothing is owed: the
 * purges done, or a load or takeover found nothing owed. A purge that keeps failing keeps its
 * document held; the others' deliveries go on.
 */
export class PurgeHolds implements DeliveryHolds {
  private readonly held = new Set<string>()
  /** False until {@link settle}: every document is held (a start has not read the record yet). */
  private known = false
  private readonly listeners = new Set<(document: string | undefined) => void>()

  holds(document: string): boolean {
    return !this.known || this.held.has(document)
  }

  /** Whether `document` is held for itself (not only because the record is not read yet). */
  holding(document: string): boolean {
    return this.held.has(document)
  }

  /** Documents held for themselves (metrics, tests). */
  get size(): number {
    return this.held.size
  }

  /** Whether a start read the durable record of owed purges (see {@link settle}): until then every document is held. */
  get settled(): boolean {
    return this.known
  }

  /** The documents held for themselves now (a copy). */
  documents(): Set<string> {
    return new Set(this.held)
  }

  /** Holds `document`'s deliveries until {@link release}. */
  hold(document: string): void {
    this.held.add(document)
  }

  /** `document` owes no purge: its deliveries go on. */
  release(document: string): void {
    if (!this.held.delete(document) || !this.known) return
    for (const listener of this.listeners) listener(document)
  }

  /**
   * The durable record of owed purges is read (`documents`, held), or there is none to read (a
   * cluster's relays hold a document from its claim instead; the memory backend): every other
   * document's deliveries go. Later calls hold what they list too.
   */
  settle(documents: Iterable<string>): void {
    for (const document of documents) this.held.add(document)
    if (this.known) return
    this.known = true
    for (const listener of this.listeners) listener(undefined)
  }

  onRelease(listener: (document: string | undefined) => void): void {
    this.listeners.add(listener)
  }
}
