import type { Redis } from "ioredis"
import type { Logger } from "../log.js"
import type { ConversationPresence } from "../push/extension.js"

/** Default lifetime of a relay's presence entry without a refresh: how long a dead relay's users count as present. */
export const DEFAULT_PRESENCE_TTL_MS = 15_000

/**
 * Who is connected to which conversation, across the relays of a cluster:
 * per conversation a sorted set in Redis (`<prefix>present:<document>`) whose
 * members are `user NUL relay` and whose scores are expiry times. Each relay
 * adds its users when their first connection to the conversation opens,
 * removes them when their last one closes, and refreshes its entries every
 * third of their lifetime; a relay that dies stops refreshing, and its
 * entries stop counting after at most one lifetime (15 s by default: a user
 * of a dead relay who does not reconnect misses pushes that long).
 */
export class ClusterPresence implements ConversationPresence {
  /** `document NUL user` of the users connected through this relay. */
  private readonly here = new Set<string>()
  private readonly timer: NodeJS.Timeout
  private closed = false

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly relayId: string,
    private readonly log: Logger,
    private readonly ttlMs = DEFAULT_PRESENCE_TTL_MS,
  ) {
    this.timer = setInterval(() => void this.refresh(), Math.max(50, Math.floor(ttlMs / 3)))
    this.timer.unref()
  }

  private key(document: string): string {
    return `${this.prefix}present:${document}`
  }

  private member(user: string): string {
    return `${user}\u0000${this.relayId}`
  }

  changed(document: string, user: string, present: boolean): void {
    if (this.closed) return
    const pair = `${document}\u0000${user}`
    if (present) {
      this.here.add(pair)
      void this.write([pair])
    } else {
      this.here.delete(pair)
      this.redis.zrem(this.key(document), this.member(user)).catch((error: unknown) => {
        // Its entry expires by itself: the user counts as present a little longer.
        this.log.warn({ err: error, doc: document }, "could not record a user leaving a conversation")
      })
    }
  }

  async present(document: string): Promise<ReadonlySet<string>> {
    const members = await this.redis.zrangebyscore(this.key(document), Date.now(), "+inf")
    return new Set(members.map((member) => member.slice(0, member.lastIndexOf("\u0000"))))
  }

  private async write(pairs: readonly string[]): Promise<void> {
    if (pairs.length === 0) return
    const expires = Date.now() + this.ttlMs
    const pipeline = this.redis.pipeline()
    for (const pair of pairs) {
      const split = pair.indexOf("\u0000")
      const key = this.key(pair.slice(0, split))
      pipeline.zadd(key, expires, this.member(pair.slice(split + 1)))
      // Entries of relays that died are dropped here; the set goes once nobody refreshes it.
      pipeline.zremrangebyscore(key, "-inf", Date.now())
      pipeline.pexpire(key, this.ttlMs)
    }
    try {
      await pipeline.exec()
    } catch (error) {
      this.log.warn({ err: error }, "could not record who is connected to which conversation")
    }
  }

  private async refresh(): Promise<void> {
    if (!this.closed) await this.write([...this.here])
  }

  /** Removes this relay's entries. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearInterval(this.timer)
    const pipeline = this.redis.pipeline()
    for (const pair of this.here) {
      const split = pair.indexOf("\u0000")
      pipeline.zrem(this.key(pair.slice(0, split)), this.member(pair.slice(split + 1)))
    }
    this.here.clear()
    await pipeline.exec().catch(() => undefined)
  }
}
