import type { Delivery, Outbox, OutboxLane } from "../hooks/outbox.js"

/**
 * The shared outbox as one relay of a cluster sees it at start: only the
 * deliveries of documents this relay orders are its to resume (none, at
 * start). The rest are delivered by their documents' owners; those of a dead
 * owner by whichever relay takes its documents over (see `Cluster.sweep`).
 * Everything else is the shared outbox itself: enqueue, dead letters, replay.
 */
export function ownedOutbox(outbox: Outbox, owns: (document: string) => boolean): Outbox {
  return new Proxy(outbox, {
    get(target, property, receiver) {
      if (property === "pending")
        return async (document?: string): Promise<Delivery[]> =>
          (await target.pending(document)).filter((d) => owns(d.document))
      if (property === "pendingLanes")
        return async (document?: string): Promise<OutboxLane[]> =>
          (await target.pendingLanes(document)).filter((lane) => owns(lane.document))
      if (property === "pendingDocuments")
        return async (): Promise<string[]> => (await target.pendingDocuments()).filter((name) => owns(name))
      // The start-up recovery of owed events loads only documents this relay orders; the
      // cluster's sweep takes over the ownerless ones.
      if (property === "behind")
        return async (): Promise<string[]> => (await target.behind()).filter((name) => owns(name))
      const value = Reflect.get(target, property, receiver) as unknown
      return typeof value === "function" ? value.bind(target) : value
    },
  })
}
