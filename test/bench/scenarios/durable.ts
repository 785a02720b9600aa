/**
 * Parley only: sustained durable throughput. W writers, each in its own
 * conversation, keep up to `window` messages in flight (sent but not yet
 * acknowledged as saved) for a fixed time. Every acknowledged update is
 * durable: the relay acknowledges only after its storage's append resolved.
 */
import type { ConversationId, UserId } from "@parley/shared"
import { generatorCpuMs } from "../proc.js"
import type { RunningServer } from "../servers.js"
import { type Distribution, distribution, sleep } from "../stats.js"
import { closeAll, openChat, ownClock, problemsOf, send } from "../workload.js"

/** Sizes of the durable-throughput scenario. */
export interface DurableConfig {
  readonly writers: number
  /** Messages in flight per writer. */
  readonly window: number
  readonly seconds: number
}

/** Figures of one run. */
export interface DurableResult {
  readonly server: string
  readonly writers: number
  readonly window: number
  readonly acknowledged: number
  readonly updatesPerSecond: number
  readonly savedAckMs: Distribution
  readonly serverCpuMsPer1000Updates: number
  readonly serverPeakRssMB: number
  readonly generatorCpuMs: number
  readonly problems: string
}

/** Runs the scenario against a fresh Parley `server`. */
export async function durable(server: RunningServer, config: DurableConfig): Promise<DurableResult> {
  const chats = await Promise.all(
    Array.from({ length: config.writers }, (_, w) =>
      openChat(server, `g~durable-${w}` as ConversationId, [`writer${w}` as UserId], {
        acknowledgements: true,
      }),
    ),
  )
  const writers = chats.map((c) => c.clients[0]!)
  await sleep(500)
  const latencies: number[] = []
  let acknowledged = 0
  // Including those acknowledged after the deadline, whose CPU is in the reading too.
  let total = 0
  let counter = 0
  const before = server.read()
  const generatorBefore = generatorCpuMs()
  const started = performance.now()
  const deadline = started + config.seconds * 1000
  await Promise.all(
    writers.map(
      (writer) =>
        new Promise<void>((resolve) => {
          // A writer whose acknowledgements stop coming must not hang the run.
          const guard = setTimeout(() => resolve(), config.seconds * 1000 + 30_000)
          const done = () => {
            clearTimeout(guard)
            resolve()
          }
          const inFlight: { clock: number; at: number }[] = []
          const fill = () => {
            while (inFlight.length < config.window && performance.now() < deadline) {
              const at = performance.now()
              send(writer, counter++)
              inFlight.push({ clock: ownClock(writer), at })
            }
            if (inFlight.length === 0) done()
          }
          writer.onSaved = (saved) => {
            const clock = saved.get(writer.doc.clientID) ?? 0
            const now = performance.now()
            while (inFlight.length > 0 && inFlight[0]!.clock <= clock) {
              const sent = inFlight.shift()!
              total++
              if (now <= deadline) {
                latencies.push(now - sent.at)
                acknowledged++
              }
            }
            fill()
          }
          fill()
        }),
    ),
  )
  const seconds = config.seconds
  const after = server.read()
  const problems = problemsOf(writers)
  closeAll(writers)
  return {
    server: server.label,
    writers: config.writers,
    window: config.window,
    acknowledged,
    updatesPerSecond: acknowledged / seconds,
    savedAckMs: distribution(latencies),
    serverCpuMsPer1000Updates: total ? ((after.cpuMs - before.cpuMs) / total) * 1000 : Number.NaN,
    serverPeakRssMB: after.peakRss / 2 ** 20,
    generatorCpuMs: generatorCpuMs() - generatorBefore,
    problems,
  }
}
