import type { RelayExtension } from "../extension.js"
import type { Logger } from "../log.js"
import { EVENT_LOG_PRUNE_INTERVAL_MS, type EventLog, type EventRetention } from "./event-log.js"

/** Options of {@link EventLogPruner}. */
export interface EventLogPrunerOptions {
  readonly retention: EventRetention
  readonly log: Logger
  /** Between two prunes (default {@link EVENT_LOG_PRUNE_INTERVAL_MS}). */
  readonly intervalMs?: number
  readonly now?: () => number
}

/**
 * Keeps the event log within its retention: prunes once at start and then
 * every `intervalMs`, off the update path (a timer that does not hold the
 * process open). A failed prune is logged and tried again next time; a
 * relay sharing the database prunes the same way, harmlessly.
 */
export class EventLogPruner implements RelayExtension {
  readonly name = "event-log"
  private timer: NodeJS.Timeout | undefined
  private running: Promise<void> = Promise.resolve()
  private readonly stopping = new AbortController()

  constructor(
    private readonly events: EventLog,
    private readonly options: EventLogPrunerOptions,
  ) {}

  /** The retention this relay prunes to. */
  get retention(): EventRetention {
    return this.options.retention
  }

  start(): void {
    this.prune()
    this.timer = setInterval(() => this.prune(), this.options.intervalMs ?? EVENT_LOG_PRUNE_INTERVAL_MS)
    this.timer.unref()
  }

  /** Prunes now (one prune at a time); resolves when done, failures logged. */
  prune(): Promise<void> {
    this.running = this.running.then(async () => {
      try {
        if (this.stopping.signal.aborted) return
        const now = (this.options.now ?? Date.now)()
        const pruned = await this.events.prune(this.options.retention, now, this.stopping.signal)
        if (pruned > 0) this.options.log.debug({ pruned }, "pruned the event log")
      } catch (error) {
        this.options.log.warn({ err: error }, "could not prune the event log; trying again later")
      }
    })
    return this.running
  }

  /** Stops pruning: a prune under way ends after its current batch. */
  async stop(): Promise<void> {
    clearInterval(this.timer)
    this.stopping.abort()
    await this.running
  }
}
