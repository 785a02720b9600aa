import type { Connection } from "./connection.js"
import type { DocumentHost } from "./document-host.js"
import type { Principal } from "./principal.js"
import type { ReplicaView } from "./replica-view.js"

/** A client update waiting in a document's queue, and how to tell its sender the outcome. */
export interface QueuedUpdate {
  readonly principal: Principal
  readonly update: Uint8Array
  readonly from?: Connection | undefined
  /** What its sender's replica had seen (see `ReplicaView`); absent for the relay's own writes. */
  readonly seen?: ReplicaView | undefined
  /** Stored (the log positions of it and of its sequencing), or already held ([]). */
  resolve(positions: number[]): void
  /** Refused, or lost with its batch before it was durable. */
  reject(error: unknown): void
}

/**
 * Most updates one batch takes: its append is one transaction, its broadcast
 * one merged frame per reader, so a batch stays small enough for neither to
 * stall the event loop for long.
 */
export const MAX_BATCH_UPDATES = 512
/** Most update bytes one batch takes (a large update still goes alone). */
export const MAX_BATCH_BYTES = 1024 * 1024

/** A batch not yet started: updates may still join it. */
interface OpenBatch {
  readonly items: QueuedUpdate[]
  bytes: number
  /** The document's {@link DocumentHost.queuedSoFar} right after the batch was queued. */
  readonly ticket: number
}

const open = new WeakMap<DocumentHost, OpenBatch>()

/**
 * Queues `update` in the document's serial queue, in a batch with the
 * updates queued right before it: while one batch is being stored, the
 * updates that arrive meanwhile gather in the next, which `run` then applies
 * and stores as one (see `storeBatch` in `update-path.ts`): a backlog costs
 * one commit per batch rather than one per update.
 *
 * The serial order of changes is kept exactly: an update joins the open
 * batch only while nothing else (a server-side write, a seal) was queued
 * after it, and only until the batch starts. `run` settles every item
 * (resolve or reject); an item it left unsettled by throwing is rejected
 * with what it threw.
 */
export function joinBatch(
  host: DocumentHost,
  item: Omit<QueuedUpdate, "resolve" | "reject">,
  run: (items: readonly QueuedUpdate[]) => Promise<void>,
): Promise<number[]> {
  return new Promise<number[]>((resolve, reject) => {
    const queued: QueuedUpdate = { ...item, resolve, reject }
    const batch = open.get(host)
    if (
      batch &&
      batch.ticket === host.queuedSoFar &&
      batch.items.length < MAX_BATCH_UPDATES &&
      batch.bytes + item.update.length <= MAX_BATCH_BYTES
    ) {
      batch.items.push(queued)
      batch.bytes += item.update.length
      return
    }
    const items = [queued]
    void host.enqueue(async () => {
      // Started: later updates gather in the next batch.
      if (open.get(host)?.items === items) open.delete(host)
      try {
        await run(items)
      } catch (error) {
        // A settled promise ignores a second settlement: only the items `run` left open take this.
        for (const left of items) left.reject(error)
      }
    })
    open.set(host, { items, bytes: item.update.length, ticket: host.queuedSoFar })
  })
}
