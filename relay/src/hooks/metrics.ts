import { Counter, Gauge, Histogram, type Registry } from "prom-client"

/** Prometheus metrics of hook delivery, registered on the relay's registry. */
export class HookMetrics {
  /** Attempts by target and outcome: `ok`, `retry`, `dead`, or `fenced` (left to the document's next owner, cluster). */
  readonly attempts: Counter<"target" | "outcome">
  /** Deliveries moved to the dead letters, by target. */
  readonly deadLetters: Counter<"target">
  /** Deliveries waiting in the outbox (pending, not dead): those the dispatcher holds or left there itself; a backlog found at a start counts as it is read. */
  readonly pending: Gauge
  /** Handler / webhook duration per attempt. */
  readonly duration: Histogram<"target">
  /** `typing.started` events a target dropped (a webhook's typing connections busy), by target. */
  readonly typingDropped: Counter<"target">

  constructor(registry: Registry) {
    this.attempts = new Counter({
      name: "parley_hook_attempts_total",
      help: "Hook and webhook delivery attempts by outcome (ok, retry, dead, fenced).",
      labelNames: ["target", "outcome"],
      registers: [registry],
    })
    this.deadLetters = new Counter({
      name: "parley_hook_dead_letters_total",
      help: "Hook deliveries that failed too often and were moved to the dead letters.",
      labelNames: ["target"],
      registers: [registry],
    })
    this.pending = new Gauge({
      name: "parley_hook_outbox_pending",
      help: "Hook deliveries waiting in the outbox (held in memory, or left in the outbox by this process; a backlog found at a start counts as it is read).",
      registers: [registry],
    })
    this.duration = new Histogram({
      name: "parley_hook_duration_seconds",
      help: "Duration of one hook handler or webhook attempt.",
      labelNames: ["target"],
      buckets: [0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30],
      registers: [registry],
    })
    this.typingDropped = new Counter({
      name: "parley_hook_typing_dropped_total",
      help: "typing.started events not sent to a target because its typing connections were busy (never queued behind or ahead of durable deliveries).",
      labelNames: ["target"],
      registers: [registry],
    })
  }
}
