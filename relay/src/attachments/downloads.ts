import type { UserId } from "@parley/shared"
import { HeldCounts } from "../held-counts.js"

/**
 * Downloads being sent to each user at once. A download holds a socket, an
 * open file or database read and a chunk of memory for as long as its reader
 * takes to read it: without a bound per user, one account could open them at
 * its request rate and never read, until the relay ran out of descriptors.
 */
export class DownloadSlots {
  private readonly open = new HeldCounts<UserId>()

  constructor(private readonly perUser: number) {}

  /** Takes one of `user`'s slots: a release function to call once (more calls do nothing), or undefined when none is free. */
  take(user: UserId): (() => void) | undefined {
    return this.open.count(user) >= this.perUser ? undefined : this.open.hold(user)
  }
}

/** `source`, calling `release` once it ends, fails or is abandoned by its consumer. */
export async function* releasing<T>(source: AsyncIterable<T>, release: () => void): AsyncIterable<T> {
  try {
    yield* source
  } finally {
    release()
  }
}
