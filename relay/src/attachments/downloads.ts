import type { UserId } from "@parley/shared"

/**
 * Downloads being sent to each user at once. A download holds a socket, an
 * open file or database read and a chunk of memory for as long as its reader
 * takes to read it: without a bound per user, one account could open them at
 * its request rate and never read, until the relay ran out of descriptors.
 */
export class DownloadSlots {
  private readonly open = new Map<UserId, number>()

  constructor(private readonly perUser: number) {}

  /** Takes one of `user`'s slots: a release function to call once (more calls do nothing), or undefined when none is free. */
  take(user: UserId): (() => void) | undefined {
    const held = this.open.get(user) ?? 0
    if (held >= this.perUser) return undefined
    this.open.set(user, held + 1)
    let released = false
    return () => {
      if (released) return
      released = true
      const left = (this.open.get(user) ?? 1) - 1
      if (left > 0) this.open.set(user, left)
      else this.open.delete(user)
    }
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
