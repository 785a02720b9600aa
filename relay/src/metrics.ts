import client from "prom-client"

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
  readonly compactions = new client.Counter({
    name: "parley_compactions_total",
    help: "Snapshots written",
    registers: [this.registry],
  })

  readonly userLimits = new client.Counter({
    name: "parley_user_limit_total",
    help: "Refusals by a per-user limit, by limit (sockets-per-user, updates-per-user, ...)",
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
    if (options.defaultMetrics) client.collectDefaultMetrics({ register: this.registry })
  }
}
