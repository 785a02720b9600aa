/**
 * Idle: N connections (in conversations of `perConversation` participants)
 * that, once synced, send nothing but what their provider sends on its own.
 * Memory per connection is the server's growth over N (RSS and JS heap, both
 * read after a full garbage collection, from a baseline taken with a first
 * group of connections open); CPU is measured over a quiet window after
 * everything connected (see idle-users.ts for why 30 s by default).
 */
import type { ConversationId, UserId } from "@parley/shared"
import type { BenchClient } from "../drivers.js"
import type { CollectedReading, RunningServer } from "../servers.js"
import { quiesce, sleep } from "../stats.js"
import { type Chat, closeAll, openChat } from "../workload.js"

/** Sizes of the idle scenario. */
export interface IdleConfig {
  readonly connections: number
  readonly perConversation: number
  readonly seconds: number
}

/** Figures of one idle run. */
export interface IdleResult {
  readonly server: string
  readonly connections: number
  readonly baselineRssMB: number
  readonly rssMB: number
  readonly bytesPerConnection: number
  readonly heapBytesPerConnection: number
  readonly serverCpuMsPerSecondPer1000: number
  /** Server CPU per second with no connection, for reference: a fixed cost, not a per-connection one. */
  readonly emptyServerCpuMsPerSecond: number
  readonly serverPeakRssMB: number
}

/** A client's first presence renewal (15 s after it connected), and a second for it to arrive. */
export const FIRST_RENEWAL_MS = 16_000

/** Time between two presence renewals of a y-protocols client. */
const RENEWAL_PERIOD_MS = 15_000

/**
 * Spreads the clients' presence renewals over their 15-second period, as
 * users who did not all connect in the same second have them: each client
 * announces its state again at a time of its own within the period (from a
 * seeded random source, the same in every run), so that its provider's
 * renewals follow at that phase. Without it the members of a conversation,
 * connected together, renew in the same second, which a server that forwards
 * renewals together would find easier than real users make it. Resolves once
 * every client has announced again.
 */
export async function spreadRenewals(clients: readonly BenchClient[], seed = 1): Promise<void> {
  let state = seed >>> 0
  const next = () => {
    // mulberry32
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  await Promise.all(
    clients.map(
      (client) =>
        new Promise<void>((resolve) =>
          setTimeout(() => {
            client.renewPresence()
            resolve()
          }, next() * RENEWAL_PERIOD_MS),
        ),
    ),
  )
}

/** Runs the scenario against a fresh `server`. */
export async function idle(server: RunningServer, config: IdleConfig): Promise<IdleResult> {
  await sleep(1000)
  // What the server spends with no connection at all (timers, metrics), over the same time.
  const empty = server.read()
  const emptyStarted = performance.now()
  await sleep(config.seconds * 1000)
  const baseline = server.read()
  const emptyCpuMsPerSecond = (baseline.cpuMs - empty.cpuMs) / ((performance.now() - emptyStarted) / 1000)
  // A first group, open to the end, before the baseline: code loaded and compiled on first use is not the connections'.
  const warmUp: Chat[] = []
  for (let i = 0; i < 2; i++) {
    const users = Array.from({ length: config.perConversation }, (_, p) => `idlew${i}-u${p}` as UserId)
    warmUp.push(await openChat(server, `g~idlew-${i}` as ConversationId, users, { acknowledgements: true }))
  }
  await sleep(1000)
  await quiesce(() => server.read().cpuMs, { timeoutMs: 10_000 })
  const collectedBefore: CollectedReading = await server.collected()
  const chats: Chat[] = []
  const groups = Math.ceil(config.connections / config.perConversation)
  // Opened in waves, so that the setup measures the servers' steady state rather
  // than their handling of a thousand simultaneous handshakes.
  for (let g = 0; g < groups; g += 20) {
    const wave: Promise<Chat>[] = []
    for (let i = g; i < Math.min(groups, g + 20); i++) {
      const size = Math.min(config.perConversation, config.connections - i * config.perConversation)
      const users = Array.from({ length: size }, (_, p) => `idle${i}-u${p}` as UserId)
      wave.push(openChat(server, `g~idle-${i}` as ConversationId, users, { acknowledgements: true }))
    }
    chats.push(...(await Promise.all(wave)))
  }
  const clients = chats.flatMap((c) => c.clients)
  // Past the clients' first presence renewal: y-protocols ignores the state a client starts with
  // (clock 0), so a server first hears of it 15 s after the connection (or when it is spread);
  // until then, and while the servers record it, they are still being joined, not idle.
  await Promise.all([spreadRenewals(clients), sleep(FIRST_RENEWAL_MS)])
  // Bounded: a server whose idle connections keep it a little busy is what is measured.
  await quiesce(() => server.read().cpuMs, { timeoutMs: 10_000 })
  const start = server.read()
  const started = performance.now()
  await sleep(config.seconds * 1000)
  const end = server.read()
  const seconds = (performance.now() - started) / 1000
  const collected = await server.collected()
  closeAll([...warmUp.flatMap((c) => c.clients), ...clients])
  return {
    server: server.label,
    connections: clients.length,
    baselineRssMB: collectedBefore.rss / 2 ** 20,
    rssMB: collected.rss / 2 ** 20,
    bytesPerConnection: (collected.rss - collectedBefore.rss) / clients.length,
    heapBytesPerConnection: (collected.heapUsed - collectedBefore.heapUsed) / clients.length,
    serverCpuMsPerSecondPer1000: ((end.cpuMs - start.cpuMs) / seconds) * (1000 / clients.length),
    emptyServerCpuMsPerSecond: emptyCpuMsPerSecond,
    serverPeakRssMB: end.peakRss / 2 ** 20,
  }
}
