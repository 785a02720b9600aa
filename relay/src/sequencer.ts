import type { ConversationId } from "@parley/shared"

/**
 * Hands out sequence numbers for a conversation. One relay uses
 * {@link LocalSequencer}; several relays serving one conversation will share a
 * counter behind the same interface.
 */
export interface Sequencer {
  /** Reserves `count` consecutive numbers and returns the first. */
  reserve(conversation: ConversationId, count: number): Promise<number>
  /**
   * The same, answered at once, for a sequencer that needs no round trip (a
   * single relay's): the relay then numbers a client's messages inside the
   * Yjs transaction that applies them (one stored update and one frame for
   * both). Without it, the numbers are written in a transaction of their own
   * after the reservation.
   */
  reserveNow?(conversation: ConversationId, count: number): number
}

/**
 * A single relay's sequencer: continues from the highest number in the loaded
 * document (`lastSequenceOf`), so nothing is kept across an unload or restart.
 */
export class LocalSequencer implements Sequencer {
  private readonly next = new Map<ConversationId, number>()

  constructor(private readonly lastSequenceOf: (conversation: ConversationId) => number) {}

  async reserve(conversation: ConversationId, count: number): Promise<number> {
    return this.reserveNow(conversation, count)
  }

  reserveNow(conversation: ConversationId, count: number): number {
    const first = Math.max(this.next.get(conversation) ?? 1, this.lastSequenceOf(conversation) + 1)
    this.next.set(conversation, first + count)
    return first
  }

  /** Forgets a conversation (on unload); the document is the source of truth. */
  forget(conversation: ConversationId): void {
    this.next.delete(conversation)
  }
}
