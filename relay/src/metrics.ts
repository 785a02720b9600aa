import { createHash, timingSafeEqual } from "node:crypto"
import client from "prom-client"
import type { HttpRequest, RelayExtension } from "./extension.js"
import { credentialsVerified } from "./request-scope.js"

/** The relay's Prometheus metrics, in a registry of their own (several relays may share a process). */
export class RelayMetrics {
  readonly registry = new client.Registry()
  readonly connections = new client.Gauge({
    name: "parley_connections",
    help: "Open WebSocket connections",
    registers: [this.registry],
  })
  readonly documents = new client.Gauge({
    name: "parley_documents_loaded",
    help: "Documents loaded in memory",
    registers: [this.registry],
  })
  readonly updates = new client.Counter({
    name: "parley_updates_total",
    help: "Updates stored, by source (client, relay, server)",
    labelNames: ["source"] as const,
    registers: [this.registry],
  })
  readonly updateBytes = new client.Counter({
    name: "parley_update_bytes_total",
    help: "Bytes of updates stored",
    registers: [this.registry],
  })
  readonly persistence = new client.Histogram({
    name: "parley_persistence_seconds",
    help: "Time for an append to become durable",
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [this.registry],
  })
  readonly errors = new client.Counter({
    name: "parley_errors_total",
    help: "Errors and refusals, by error or close code",
    labelNames: ["code"] as const,
    registers: [this.registry],
  })
  readonly damagedDocuments = new client.Gauge({
    name: "parley_damaged_documents",
    help: "Documents found damaged and refused to everyone until an operator restores them",
    registers: [this.registry],
  })
  readonly compactions = new client.Counter({
    name: "parley_compactions_total",
    help: "Snapshots written",
    registers: [this.registry],
  })
  readonly epochs = new client.Counter({
    name: "parley_epochs_total",
    help: "Fresh epochs of live documents started, by reason (too many client ids, mostly removed values)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  })
  readonly tokens = new client.Counter({
    name: "parley_token_events_total",
    help: "Connections closed at their token's expiry, and token refreshes accepted, refused or not verified for now (the key set out of reach)",
    labelNames: ["event"] as const,
    registers: [this.registry],
  })
  readonly storageAvailable = new client.Gauge({
    name: "parley_storage_available",
    help: "1 while storage answers, 0 while it is failing (writes are refused, /readyz says 503)",
    registers: [this.registry],
  })

  /** Counts the awareness records of the loaded documents when scraped (set by the core). */
  awarenessSource: () => number = () => 0
  readonly awarenessRecords: client.Gauge = new client.Gauge({
    name: "parley_awareness_clients",
    help: "Awareness client ids the relay holds a record of, across loaded documents",
    registers: [this.registry],
    collect: () => this.awarenessRecords.set(this.awarenessSource()),
  })
  readonly awarenessDropped = new client.Counter({
    name: "parley_awareness_dropped_total",
    help: "Awareness entries not applied, by reason (foreign, entries, bytes, claims)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  })

  readonly userLimits = new client.Counter({
    name: "parley_user_limit_total",
    help: "Refusals by a per-user limit, by limit (sockets-per-user, updates-per-user, ...)",
    labelNames: ["limit"] as const,
    registers: [this.registry],
  })
  readonly connectionsRefused = new client.Counter({
    name: "parley_connections_refused_total",
    help: "Connections closed at accept, by limit (connections-per-address, max-connections)",
    labelNames: ["limit"] as const,
    registers: [this.registry],
  })
  private countUsers: () => number = () => 0
  readonly users: client.Gauge = new client.Gauge({
    name: "parley_users",
    help: "Users the relay keeps per-user limits for (connected, or whose budgets are refilling)",
    registers: [this.registry],
    collect: (): void => this.users.set(this.countUsers()),
  })

  /** Where `parley_users` is read from (the core's user ledger). */
  countUsersWith(count: () => number): void {
    this.countUsers = count
  }

  constructor(options: { defaultMetrics?: boolean } = {}) {
    this.storageAvailable.set(1)
    // The event-loop lag histogram samples on a libuv timer: prom-client's default 10 ms woke an idle
    // relay 100 times a second (about half of its idle CPU); 100 ms still shows every stall that matters.
    if (options.defaultMetrics)
      client.collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 100 })
  }
}

/** How {@link metricsExtension} serves `/metrics`. */
export interface MetricsExtensionOptions {
  /**
   * Bearer token a request must carry (`Authorization: Bearer TOKEN`);
   * without one, `/metrics` is served to anyone who reaches the port.
   */
  readonly token?: string
}

/** The digest a bearer token is compared by: equal lengths, so the comparison takes the same time whatever is sent. */
const digestOf = (value: string): Buffer => createHash("sha256").update(value).digest()

/**
 * Serves the registry's metrics at `GET /metrics` (Prometheus text format), as
 * a relay extension; with `token`, only to requests that carry it (else 401).
 */
export function metricsExtension(
  metrics: RelayMetrics,
  options: MetricsExtensionOptions = {},
): RelayExtension {
  const expected = options.token === undefined ? undefined : digestOf(options.token)
  let rendering: Promise<string> | undefined
  return {
    name: "metrics",
    async httpRequest({ req, res }: HttpRequest): Promise<boolean> {
      if (req.method !== "GET" && req.method !== "HEAD") return false
      if (new URL(req.url ?? "/", "http://relay").pathname !== "/metrics") return false
      if (expected) {
        const given = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? "")?.[1]
        // A 401 with credentials counts as one of the address's failed verifications (see WsTransport).
        if (given === undefined || !timingSafeEqual(digestOf(given), expected)) {
          res.writeHead(401, {
            "content-type": "application/json",
            "www-authenticate": 'Bearer realm="metrics"',
          })
          res.end(
            JSON.stringify({
              error: "GET /metrics needs the relay's metrics token: Authorization: Bearer TOKEN",
            }),
          )
          return true
        }
        credentialsVerified()
      }
      // Requests that arrive while one is rendered share it (1.5-2.5 ms each). Without a token they are
      // anyone's: held to their address's request budget (`--address-requests-per-second`), and pipelined
      // ones to a few per connection (an outside probe's flood of them held the relay's event loop).
      rendering ??= metrics.registry.metrics().finally(() => {
        rendering = undefined
      })
      const text = await rendering
      res.writeHead(200, { "content-type": metrics.registry.contentType })
      res.end(text)
      return true
    },
  }
}
