import type { ConversationId } from "@parley/shared"

/**
 * Hands out sequence numbers for a conversation. One relay uses
 * {@link LocalSequencer}; several relays serving one conversation will share a
 * counter behind the same interface.
 */
export interface Sequencer {
  /** Reserves `count` consecutive numbers and returns the first. */
  reserve(conversation: ConversationId, count: number): Promise<number>
}

/**
 * A single relay's sequencer: continues from the highest number in the loaded
 * document (`lastSequenceOf`), so nothing is kept across an unload or restart.
 */
export class LocalSequencer implements Sequencer {
  private readonly next = new Map<ConversationId, number>()

  constructor(private readonly lastSequenceOf: (conversation: ConversationId) => number) {}

  async reserve(conversation: ConversationId, count: number): Promise<number> {
    const first = Math.max(this.next.get(conversation) ?? 1, this.lastSequenceOf(conversation) + 1)
    this.next.set(conversation, first + count)
    return first
  }

  /** Forgets a conversation (on unload); the document is the source of truth. */
  forget(conversation: ConversationId): void {
    this.next.delete(conversation)
  }
}
