import { ErrorCode, ParleyError } from "@parley/shared"
import type pg from "pg"
import type { DeliveryFence } from "../hooks/dispatcher.js"
import { type Delivery, NOT_RECORDER } from "../hooks/outbox.js"
import type { PostgresOutbox, RecordFence } from "../hooks/postgres-outbox.js"
import { inTransaction } from "../pg-transaction.js"
import { APPEND_LOCK_TIMEOUT_MS } from "../storage/postgres.js"

/** What {@link ClusterDeliveryFence} asks of the leases. */
export interface LeaseView {
  /** `name`'s fencing token and until when (ms, this relay's clock) it may write under it; undefined when not held. */
  heldOf(name: string): { readonly token: number; readonly validUntil: number } | undefined
  /** The lease's lifetime in ms. */
  readonly ttlMs: number
}

/**
 * Hook, webhook and push deliveries of a clustered relay, fenced like its
 * writes. An attempt starts only while the document's lease has at least a
 * tenth of its lifetime left by this relay's clock on top of the writes'
 * margin (150 ms + 150 ms with the default 1.5 s lease: the attempt is sent
 * 300 ms before the lease could expire in Redis); a running attempt is
 * aborted (its `signal`) once the lease is gone by that clock. Its outcome
 * (delivered, retry, dead letter) is recorded only in a transaction that
 * holds the document's fence row (`FOR SHARE`) at this relay's token: a
 * stale owner's marks are refused, and a new owner's claim of the row waits
 * for a mark being written, so the new owner reads the outbox after it.
 *
 * What this cannot do: recall a request already sent. A webhook or push
 * request on the wire, or a hook module's call that ignores its signal, may
 * still be running at its receiver when a new owner delivers the next events
 * (or the same one again: its mark was refused). The window is one attempt's
 * run beyond the lease, at most the hook timeout (10 s by default), and only
 * after this relay stalled or was cut off from Redis for longer than a lease.
 */
export class ClusterDeliveryFence implements DeliveryFence {
  readonly checkEveryMs: number
  private readonly marginMs: number

  constructor(
    private readonly pool: pg.Pool,
    private readonly outbox: PostgresOutbox,
    private readonly leases: LeaseView,
  ) {
    this.marginMs = Math.ceil(leases.ttlMs / 10)
    this.checkEveryMs = Math.max(20, Math.floor(leases.ttlMs / 15))
  }

  tokenOf(document: string): number | undefined {
    const held = this.leases.heldOf(document)
    if (!held || Date.now() >= held.validUntil - this.marginMs) return undefined
    return held.token
  }

  delivered(delivery: Delivery, token: number): Promise<boolean> {
    return this.fenced(delivery, token, (client) =>
      this.outbox.deliveredIn(client, delivery.seq, delivery.target),
    )
  }

  retryLater(
    delivery: Delivery,
    token: number,
    attempts: number,
    nextAttemptAt: number,
    error: string,
  ): Promise<boolean> {
    return this.fenced(delivery, token, (client) =>
      this.outbox.retryLaterIn(client, delivery.seq, delivery.target, attempts, nextAttemptAt, error),
    )
  }

  deadLetter(
    delivery: Delivery,
    token: number,
    attempts: number,
    error: string,
    at: number,
  ): Promise<boolean> {
    return this.fenced(delivery, token, (client) =>
      this.outbox.deadLetterIn(client, delivery.seq, delivery.target, attempts, error, at),
    )
  }

  private fenced(
    delivery: Delivery,
    token: number,
    mark: (client: pg.PoolClient) => Promise<void>,
  ): Promise<boolean> {
    return inTransaction(
      this.pool,
      async (client) => {
        // FOR SHARE: marks of one document do not wait for each other; a new holder's claim (an UPDATE of the row) waits for them.
        const { rows } = await client.query<{ token: string }>(
          "SELECT token FROM parley_cluster_fences WHERE doc = $1 FOR SHARE",
          [delivery.document],
        )
        if (Number(rows[0]?.token) !== token) return false
        await mark(client)
        return true
      },
      // A row another session holds fails the mark after the appends' lock wait (retried later), rather
      // than holding one of the pool's connections until the storage timeout: a dozen conversations'
      // fence rows locked made every other conversation wait 3–9 s for a connection (an outside probe).
      `BEGIN; SET LOCAL lock_timeout = ${APPEND_LOCK_TIMEOUT_MS}`,
    )
  }
}

/**
 * Who may record a document's hook events in a cluster: the relay that made
 * the document's last claim (`parley_cluster_fences.holder`), checked in the
 * enqueue's transaction with the fence row held `FOR SHARE`. A record by the
 * last claimant commits before any later claim (which waits for it), so the
 * next owner's takeover reads the watermark and the outbox after it; or, by a
 * relay whose claim was since overtaken, it is refused (rule
 * {@link NOT_RECORDER}), and the new owner derives those events from the
 * stored log past the watermark the refusal left where it was.
 *
 * Without it a relay that lost a lease recorded the events of changes it had
 * stored, late, after the new owner read the document's outbox lane: nothing
 * told the new owner of those deliveries, which stayed owed and unattempted
 * while it delivered every later event (an outside probe: a webhook delivery
 * left behind 566 later ones until a relay restarted), and the event log held
 * them after the new owner's events.
 *
 * The claimant, not the current token: a lease that merely lapsed with no
 * other claim since refuses nothing (the next claim waits for the record);
 * and a relay that claimed the document again records the late events of
 * its earlier lease itself, where its own dispatcher hears of them.
 */
export function recordingFence(relayId: string): RecordFence {
  return async (client, document) => {
    // As the delivery marks (above): a locked row fails the record after the appends' lock wait, retried.
    await client.query(`SET LOCAL lock_timeout = ${APPEND_LOCK_TIMEOUT_MS}`)
    const { rows } = await client.query<{ holder: string }>(
      "SELECT holder FROM parley_cluster_fences WHERE doc = $1 FOR SHARE",
      [document],
    )
    if (rows[0]?.holder !== relayId)
      throw new ParleyError(
        ErrorCode.UNAVAILABLE,
        `this relay no longer orders ${JSON.stringify(document)}: its events are recorded by the relay that does`,
        { rule: NOT_RECORDER },
      )
  }
}
