import { type ConversationId, ErrorCode, ParleyError, type UserId } from "@parley/shared"
import type { Context } from "hono"
import { streamSSE } from "hono/streaming"
import type { HookEventType } from "../hooks/events.js"
import type { Logger } from "../log.js"
import { RecentPurges } from "../purge/recent-purges.js"
import type { PurgedContent } from "../purge/redact.js"
import { RateLimiter } from "../rate-limit.js"
import type { ApiEventEntry, ApiEventSource } from "./event-source.js"
import type { ApiLimits } from "./limits.js"
import { problemResponse } from "./problem.js"

/** Entries one read of the log takes while a stream catches up. */
const BATCH = 200
/**
 * Longest a stream writes from one read of the log: a client reading slowly
 * gets the rest of its batch read again, as the log now holds it (a purge on
 * another relay of a cluster redacts the log but tells only its own streams).
 */
export const STALE_BATCH_MS = 5_000

/** Whether log id `a` comes after `b` (ids are decimal and increase; anything else is not compared). */
const isLater = (a: string, b: string): boolean => /^\d+$/.test(a) && /^\d+$/.test(b) && BigInt(a) > BigInt(b)

/** What one stream asks for. */
export interface StreamQuery {
  readonly after?: string
  readonly conversation?: ConversationId
  readonly user?: UserId
  readonly types?: readonly HookEventType[]
}

/**
 * The open `/v1/events` streams: each reads the durable event log from where
 * its client left off, then waits for new entries (woken by the log's
 * in-process subscription, and re-reading the log, so nothing the log holds is
 * skipped or sent twice), with a heartbeat while idle.
 */
export class EventStreams {
  private readonly openPerKey = new Map<string, number>()
  /** Events sent from the log per key (see {@link ApiLimits.streamEventsPerSecond}), while it has a stream open. */
  private readonly paces = new Map<string, RateLimiter>()
  /** Each open stream's batch being written (held for as long as its client takes to read it). */
  private readonly batches = new Set<ApiEventEntry[]>()
  /** Purges of the last minutes, by conversation id, applied to batches read before them. */
  private readonly purges = new RecentPurges()

  constructor(
    private readonly options: {
      readonly source?: ApiEventSource
      readonly limits: ApiLimits
      readonly log: Logger
      readonly signal?: AbortSignal
      readonly now?: () => number
    },
  ) {}

  /**
   * A purge removed content of a conversation: the batches the open streams hold (a client reading
   * slowly holds its stream's batch) lose it too, and so do batches read while the purge ran.
   */
  purged({ conversationId, scope }: PurgedContent): void {
    this.purges.note(conversationId, scope)
    for (const batch of this.batches)
      for (let i = 0; i < batch.length; i++) {
        const entry = batch[i]!
        if (entry.event.event.conversationId !== conversationId) continue
        // As remembered, not `scope` itself: a whole purge leaves the events of a later reopen alone.
        const event = this.purges.redact(conversationId, entry.event)
        if (event !== entry.event) batch[i] = { ...entry, event }
      }
  }

  /** `entries`, as a batch a stream holds: without what a purge of the last minutes removed. */
  private hold(entries: readonly ApiEventEntry[]): ApiEventEntry[] {
    const batch = entries.map((entry) => {
      if (this.purges.size === 0) return entry
      const event = this.purges.redact(entry.event.event.conversationId, entry.event)
      return event === entry.event ? entry : { ...entry, event }
    })
    this.batches.add(batch)
    return batch
  }

  /**
   * Opens a stream for API key `keyId`, or answers 429 (too many open), 503
   * (no log), 400/410 (bad resume point). `authorized` is asked before every
   * batch and heartbeat: once it answers false (the key was revoked) or
   * throws, the stream ends before it sends another byte. A key is checked
   * once per request, and an open stream is one request for as long as it
   * lasts: a revoked key's stream went on delivering every event.
   */
  async open(
    c: Context,
    keyId: string,
    query: StreamQuery,
    authorized: () => Promise<boolean> = async () => true,
  ): Promise<Response> {
    const source = this.options.source
    if (!source)
      return problemResponse(c, new ParleyError(ErrorCode.UNAVAILABLE, "this relay keeps no event log"), 503)
    const count = this.openPerKey.get(keyId) ?? 0
    if (count >= this.options.limits.streamsPerKey)
      return problemResponse(
        c,
        new ParleyError(
          ErrorCode.RATE_LIMITED,
          `at most ${this.options.limits.streamsPerKey} event streams per API key are open at once`,
        ),
        429,
      )
    // Counted before the first await, so that concurrent opens cannot pass the bound together.
    this.openPerKey.set(keyId, count + 1)
    const release = () => {
      const left = (this.openPerKey.get(keyId) ?? 1) - 1
      if (left > 0) this.openPerKey.set(keyId, left)
      else this.openPerKey.delete(keyId)
    }
    const perSecond = this.options.limits.streamEventsPerSecond
    let pace = this.paces.get(keyId)
    if (!pace && perSecond > 0) {
      pace = new RateLimiter(perSecond, perSecond * 20)
      this.paces.set(keyId, pace)
      // Forgotten once it is full again and the key has no stream open (bounded by the keys streaming).
      const forget = setInterval(() => {
        if (this.openPerKey.has(keyId) || pace!.msUntilFull() > 0) return
        this.paces.delete(keyId)
        clearInterval(forget)
      }, 10_000)
      forget.unref()
    }
    const now = this.options.now ?? Date.now
    let after: string
    let first: Awaited<ReturnType<ApiEventSource["read"]>>
    /** How far the last read looked: the log's newest id before it, when it found less than a batch. */
    let scanned: string | undefined
    // Without a filter every entry is sent, so the position is the last one's: the log's newest id is
    // asked for (one more query per read) only when a filter may skip entries.
    const filtered =
      query.conversation !== undefined || query.user !== undefined || (query.types?.length ?? 0) > 0
    const newestIfFiltered = () => (filtered ? source.latest() : Promise.resolve(undefined))
    let readAt = now()
    try {
      // The resume point is checked before the stream starts: an expired or unknown one is a plain error.
      after = query.after ?? (await source.latest())
      const newest = await newestIfFiltered()
      first = await source.read({ ...query, after, limit: BATCH })
      if (first.length < BATCH) scanned = newest
    } catch (error) {
      release()
      throw error
    }
    return streamSSE(c, async (stream) => {
      let wake: (() => void) | undefined
      // Subscribed after the first read: read once more at once, so that nothing recorded in between waits.
      let dirty = true
      const unsubscribe = source.subscribe(() => {
        dirty = true
        wake?.()
      })
      let closed = false
      let entries: ApiEventEntry[] = []
      /** Ends a wait for the key's pace (only a close does: new entries do not hurry it). */
      let paceWake: (() => void) | undefined
      const close = () => {
        closed = true
        wake?.()
        paceWake?.()
      }
      stream.onAbort(close)
      this.options.signal?.addEventListener("abort", close, { once: true })
      try {
        await stream.writeSSE({ data: "", event: "ready", retry: this.options.limits.retryMs, id: after })
        let position = after
        entries = this.hold(first)
        while (!closed) {
          if (!(await authorized().catch(() => false))) {
            this.options.log.info({ key: keyId }, "event stream ended: its API key is no longer valid")
            break
          }
          let stale = false
          // By index: a purge may replace an entry while an earlier one is written.
          for (let i = 0; i < entries.length; i++) {
            if (now() - readAt > STALE_BATCH_MS) {
              stale = true
              break
            }
            const entry = entries[i]!
            await stream.writeSSE({
              id: entry.id,
              event: entry.event.event.type,
              data: JSON.stringify(entry.event),
            })
            position = entry.id
          }
          // Everything up to the newest id before the read was looked at: a filter that matched none of
          // it must not look at it again (each new event anywhere re-read the log since the stream began).
          if (!stale && scanned !== undefined && isLater(scanned, position)) position = scanned
          if (!stale && entries.length < BATCH && !dirty) {
            // Woken by a new entry, a close, or the heartbeat (after which the log is read again too:
            // other relays sharing the database record entries this one hears nothing of).
            const beat = await new Promise<boolean>((resolve) => {
              const timer = setTimeout(() => resolve(true), this.options.limits.heartbeatMs)
              wake = () => {
                clearTimeout(timer)
                resolve(false)
              }
            })
            wake = undefined
            if (closed) break
            if (beat) await stream.write(": ping\n\n")
          }
          dirty = false
          this.batches.delete(entries)
          entries = []
          // The key's streams read the log at its pace: a whole batch's worth must be there first.
          const wait = pace?.msUntil(BATCH) ?? 0
          if (wait > 0) {
            await new Promise<void>((resolve) => {
              const timer = setTimeout(resolve, wait)
              paceWake = () => {
                clearTimeout(timer)
                resolve()
              }
            })
            paceWake = undefined
            if (closed) break
          }
          readAt = now()
          const newest = await newestIfFiltered()
          entries = this.hold(await source.read({ ...query, after: position, limit: BATCH }))
          scanned = entries.length < BATCH ? newest : undefined
          pace?.spend(entries.length)
        }
      } catch (error) {
        if (!closed) this.options.log.warn({ err: error }, "event stream ended by an error")
      } finally {
        this.batches.delete(entries)
        unsubscribe()
        this.options.signal?.removeEventListener("abort", close)
        release()
        await stream.close().catch(() => undefined)
      }
    })
  }
}
