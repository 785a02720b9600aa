import client from "prom-client"

/**
 * What happened to a change this relay forwarded to a document's owner:
 * `stored` (the owner stored it), `refused` (the owner's answer was a
 * refusal, passed on to the client), or a retry after a look at the lease:
 * `unanswered` (no answer within the forward timeout), `no-receiver` (nobody
 * listens on the owner's channel: it died), `not-owner` (that relay no longer
 * orders the document), `unpublished` (Redis did not take the request).
 */
export type ForwardOutcome = "stored" | "refused" | "unanswered" | "no-receiver" | "not-owner" | "unpublished"

/**
 * A clustered relay's own metrics (README "Several relays"), registered in the
 * relay's registry beside the core's: how many documents it orders, what
 * became of the changes it forwarded, and how ordering moved.
 */
export class ClusterMetrics {
  private ownedSource: () => number = () => 0
  readonly owned: client.Gauge
  readonly forwarded: client.Counter<"outcome">
  readonly answered: client.Counter<"outcome">
  readonly tookOver: client.Counter
  readonly leasesLost: client.Counter
  readonly routeSeconds: client.Histogram
  /** Per shared setting, the live relays whose value differs from this relay's (`src/cluster/settings.ts`). */
  readonly settingsDiffer: client.Gauge<"setting">
  /** Differences of a shared setting found with a relay that did not declare a change. */
  readonly settingsMismatches: client.Counter<"setting">

  constructor(registry: client.Registry) {
    const registers = [registry]
    this.owned = new client.Gauge({
      name: "parley_cluster_documents_owned",
      help: "Documents whose lease this relay holds (it orders their changes)",
      registers,
      collect: () => this.owned.set(this.ownedSource()),
    })
    this.forwarded = new client.Counter({
      name: "parley_cluster_forwarded_total",
      help: "Changes forwarded to another relay, by outcome (stored, refused; retried: unanswered, no-receiver, not-owner, unpublished)",
      labelNames: ["outcome"] as const,
      registers,
    })
    this.answered = new client.Counter({
      name: "parley_cluster_forwards_answered_total",
      help: "Changes other relays forwarded to this one, by answer (stored, refused, not-owner)",
      labelNames: ["outcome"] as const,
      registers,
    })
    this.tookOver = new client.Counter({
      name: "parley_cluster_takeovers_total",
      help: "Documents this relay began ordering (took their lease)",
      registers,
    })
    this.leasesLost = new client.Counter({
      name: "parley_cluster_leases_lost_total",
      help: "Leases this relay lost (taken by another relay, or not renewed in time)",
      registers,
    })
    this.routeSeconds = new client.Histogram({
      name: "parley_cluster_route_seconds",
      help: "From a client's change reaching this relay's queue for its document to its acknowledgement, where another relay orders it",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    })
    this.settingsDiffer = new client.Gauge({
      name: "parley_cluster_settings_differ",
      help: "Live relays of the cluster whose value of a setting every relay must share differs from this relay's, by setting (a rolling change shows here too)",
      labelNames: ["setting"] as const,
      registers,
    })
    this.settingsMismatches = new client.Counter({
      name: "parley_cluster_settings_mismatches_total",
      help: "Differences of a shared setting found with another relay that did not declare a change (--cluster-config-change), by setting",
      labelNames: ["setting"] as const,
      registers,
    })
  }

  /** Where `parley_cluster_documents_owned` is read from. */
  countOwnedWith(count: () => number): void {
    this.ownedSource = count
  }
}
