import type {
  AfterSaved,
  AwarenessChange,
  HttpRequest,
  LoadedDocument,
  RelayExtension,
  RunningCore,
  StoredLog,
} from "../extension.js"
import type { PurgedContent } from "../purge/redact.js"
import { applyStored } from "../storage/integrity.js"
import { type DeadLetterAdmin, deadLetterRoutes } from "./admin.js"
import type { DeliveryTarget } from "./dispatcher.js"
import { HookRuntime, type HookRuntimeOptions } from "./runtime.js"

/** Options of {@link HooksExtension}: those of the runtime it makes, less the core it is given. */
export interface HooksExtensionOptions extends Omit<HookRuntimeOptions, "core" | "targets"> {
  /** Built-in delivery targets, made with the running core (the relay's inbox upkeep). */
  readonly targets?: readonly ((core: RunningCore) => DeliveryTarget)[]
  /** Serves `/admin/dead-letters` to callers `verify` finds to be services. */
  readonly admin?: Pick<DeadLetterAdmin, "verify">
}

/**
 * Hook modules, webhooks and the built-in delivery targets (inbox upkeep) as
 * one relay extension: at `start` it makes the {@link HookRuntime} with the
 * running core and resumes what the outbox still owes; once every extension
 * runs, it loads the documents whose events a crash left unrecorded (nobody
 * may open them soon); it records events after every saved change,
 * re-derives those a crash lost when a document loads,
 * holds back compaction until they are recorded, fires `typing.started`, and
 * (with `admin`) contributes the dead-letter routes. `stop` stops delivering
 * and closes the outbox.
 */
export class HooksExtension implements RelayExtension {
  readonly name = "hooks"
  private running: HookRuntime | undefined
  private routes: ((req: HttpRequest["req"], res: HttpRequest["res"]) => Promise<boolean>) | undefined

  constructor(private readonly options: HooksExtensionOptions) {}

  /** The runtime, from `start` on (dead letters, replay, `idle()`); the core starts it before serving anyone. */
  get runtime(): HookRuntime | undefined {
    return this.running
  }

  async start(core: RunningCore): Promise<void> {
    const { targets = [], admin, ...options } = this.options
    const runtime = new HookRuntime({ ...options, core, targets: targets.map((target) => target(core)) })
    this.running = runtime
    if (admin)
      this.routes = deadLetterRoutes({
        // Their events as they may leave the relay: a deleted message's text not, its purge owed or not.
        deadLetters: () =>
          core.withholdOwed ? core.withholdOwed(() => runtime.deadLetters()) : runtime.deadLetters(),
        replay: (filter) => runtime.replay(filter),
        verify: (token) => admin.verify(token),
      })
    await runtime.start()
  }

  /** Every extension runs: the sweep that recovers events a crash left owed begins, in the background. */
  started(): void {
    void this.running?.recoverOwed()
  }

  afterSaved(change: AfterSaved): void {
    this.running?.afterSaved(change)
  }

  async loadStoredLog({ name, doc, updates, takingOver, recordedThrough }: StoredLog): Promise<void> {
    // Only a core that was never started loads without the runtime: there is no outbox to recover into.
    if (this.running)
      return this.running.applyStoredLog(name, doc, updates, {
        takingOver: takingOver ?? false,
        ...(recordedThrough !== undefined ? { recordedThrough } : {}),
      })
    for (const { position, update } of updates) applyStored(doc, update, position)
  }

  claimed({ name }: { readonly name: string }): () => void {
    return this.running?.claimed(name) ?? (() => undefined)
  }

  /** A conversation loaded with nothing stored gets its first hook watermark before its first append. */
  beforeAppend({ name, doc }: LoadedDocument): Promise<void> | undefined {
    return name.kind === "conversation" ? this.running?.beforeAppend(name.id, doc) : undefined
  }

  async compactionLimit({ name }: { readonly name: string }): Promise<number> {
    if (this.running) return this.running.compactionLimit(name)
    return (await this.options.outbox.watermark(name)) ?? Number.POSITIVE_INFINITY
  }

  async recorded({ name }: { readonly name: string }): Promise<void> {
    await this.running?.recorded(name)
  }

  async tookOver({ name }: { readonly name: string }): Promise<void> {
    await this.running?.resume(name)
  }

  /** Events waiting for delivery lose what a purge removed (and targets drop what they keep of it). */
  contentPurged(purge: PurgedContent): void {
    this.running?.purged(purge)
  }

  awarenessChanged({ name, doc, user, state }: AwarenessChange): void {
    this.running?.awarenessChanged(name, doc, user, state)
  }

  async httpRequest({ req, res }: HttpRequest): Promise<boolean> {
    return this.routes ? this.routes(req, res) : false
  }

  /** Stops delivering (running attempts finish) and closes the outbox, started or not. */
  async stop(): Promise<void> {
    if (this.running) await this.running.stop()
    else {
      await this.options.worker?.stop()
      await this.options.outbox.close()
    }
  }
}
