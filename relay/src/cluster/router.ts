import type * as Y from "yjs"
import type { DocumentHost, HostedConnection } from "../document-host.js"
import type { ServerWriteOptions } from "../extension.js"
import type { Principal } from "../principal.js"
import type { PurgedContent } from "../purge/redact.js"
import type { ReplicaView } from "../replica-view.js"
import type { WireEntry } from "./wire.js"

/** What a relay knew when it claimed a document it takes over (see `RoutedCore.tookOver`). */
export interface TakeoverClaim {
  /** How far the document's hook events were recorded at the claim; absent when they never were. */
  readonly recordedThrough?: number
}

/** The rule of an owner's refusal of a server-side write made on a copy older than its document. */
export const STALE_COPY = "stale-copy"

/**
 * What a router asks of the core (`RelayCore` implements it): to show other
 * relays' stored changes and awareness to its connections, and to run the
 * changes other relays forward to it through the one update path.
 */
export interface RoutedCore {
  /**
   * Applies entries another relay stored to the loaded `host`, in its queue,
   * and sends them to its connections; with "fetch" (or a gap before the
   * first entry) reads what it lacks from storage instead.
   */
  applyRemote(host: DocumentHost, entries: readonly WireEntry[] | "fetch"): Promise<void>
  /** Checks and stores a client update another relay forwarded; resolves with the log position reached. */
  submitForwarded(name: string, principal: Principal, update: Uint8Array, seen?: ReplicaView): Promise<number>
  /**
   * Stores a server-side write another relay computed on a copy whose state
   * vector is `base`; resolves with the log position reached. Refuses it
   * (UNAVAILABLE, rule {@link STALE_COPY}, nothing stored) when the document
   * holds anything `base` does not: the write's checks read an older state.
   */
  writeForwarded(name: string, actor: Principal, update: Uint8Array, base?: Uint8Array): Promise<number>
  /** Another relay purged content: the extensions drop what this relay holds of it (never throws). */
  purgedElsewhere(purge: PurgedContent): void
  /** Applies an awareness update of another relay's connections to the loaded `host`. */
  applyAwareness(host: DocumentHost, update: Uint8Array): void
  /**
   * The relay that orders the loaded `host` started a fresh epoch of it:
   * drops it (its connections rejoin, and meet the new epoch as at any
   * reconnect), in its queue.
   */
  epochElsewhere(host: DocumentHost): Promise<void>
  /**
   * A stock y-websocket provider is (or just was) connected to document
   * `name` through another relay: a fresh epoch of it waits for it as for one
   * connected here (see `epochStockGraceMs`).
   */
  stockProviderElsewhere(name: string): void
  /**
   * Runs the work a new owner owes: events a dead owner saved but did not record, leftover numbering.
   * `claim.recordedThrough`: the document's hook watermark right after this relay's claim (see
   * `Leases.recordedAtClaim`).
   */
  tookOver(name: string, claim?: TakeoverClaim): Promise<void>
  /**
   * This relay just claimed `name` (before anything may be written under the new token, before
   * {@link tookOver}): returns what the cluster calls once the takeover ended, done or given up (a
   * failed one is tried again while the lease lasts).
   */
  claimed(name: string): () => void
  /** Documents storage records as possibly owing a purge (`ContentPurge.owe`); none without a purge backend. */
  owedPurges(): Promise<readonly string[]>
  /**
   * Loads document `name`, which this relay orders, so that the purges it
   * owes run (or its record of them is cleared when it owes none).
   */
  finishOwedPurges(name: string): Promise<void>
  /**
   * The state vector of `host` before the data this relay derived into it
   * and has not stored (in memory only, under the document's own client id),
   * or undefined when there is none.
   */
  unstoredSince(host: DocumentHost): Uint8Array | undefined
}

/**
 * Decides where a document's changes are ordered: here (the local update
 * path) or on the relay that holds the document (`cluster/cluster.ts`). A
 * core without one orders everything itself.
 */
export interface UpdateRouter {
  /** Called once by the core, before it serves anyone. */
  attach(core: RoutedCore): void
  /** A document was loaded here: follow other relays' changes to it. */
  loaded(host: DocumentHost): Promise<void>
  /** A document was dropped from memory here. */
  unloaded(host: DocumentHost): void
  /** True while this relay orders `name` (holds its lease). */
  owns(name: string): boolean
  /** A local connection's update: `local` when this relay orders the document, else forwarded. */
  submit(
    host: DocumentHost,
    principal: Principal,
    update: Uint8Array,
    connection: HostedConnection,
    seen: ReplicaView,
    local: () => Promise<unknown>,
  ): Promise<unknown>
  /** A server-side write: `local` when this relay orders the document, else computed here and forwarded. */
  write(
    host: DocumentHost,
    actor: Principal,
    change: (doc: Y.Doc) => void,
    local: () => Promise<unknown>,
    options?: ServerWriteOptions,
  ): Promise<void>
  /** A purge ran here (see `RelayExtension.contentPurged`), for the other relays. */
  purged?(purge: PurgedContent): void
  /** This relay started a fresh epoch of `name` (stored): for the other relays. */
  epochStarted?(name: string): void
  /** A stock provider connected to `name` here, or left it: for the relay that orders it. */
  stockProvider?(name: string): void
  /** An awareness change of this relay's connections, for the other relays. */
  awareness(host: DocumentHost, update: Uint8Array): void
  /**
   * False while changes this relay does not order are refused at once (Redis
   * does not answer): see `RelayCore`'s asking again once writes are taken.
   */
  readonly forwarding?: boolean
}
