/**
 * Fan-out: C conversations × P participants, each participant sending M
 * messages at R per second. Every message is delivered to the P − 1 other
 * participants; latency is the sender's send time to each receiver's observer
 * seeing it (one process, one clock).
 */
import type { ConversationId, MessageId, UserId } from "@parley/shared"
import type { BenchClient } from "../drivers.js"
import { generatorCpuMs } from "../proc.js"
import type { RunningServer } from "../servers.js"
import { type Distribution, distribution, drain, quiesce, sleep, until } from "../stats.js"
import { type Chat, closeAll, onMessages, openChat, ownClock, problemsOf, send } from "../workload.js"

/** Sizes of the fan-out scenario. */
export interface FanoutConfig {
  readonly conversations: number
  readonly participants: number
  readonly messages: number
  /** Messages per second per participant. */
  readonly rate: number
}

/** Figures of one fan-out run. */
export interface FanoutResult {
  readonly server: string
  readonly expectedDeliveries: number
  readonly deliveries: number
  readonly lost: number
  readonly latencyMs: Distribution
  /** The same, for messages sent after the first 5 s (once every code path is warm). */
  readonly steadyLatencyMs: Distribution
  /** Parley with acknowledgements: send → "saved" ack for the sender. */
  readonly savedAckMs?: Distribution
  readonly serverCpuMs: number
  readonly serverCpuMsPer1000Deliveries: number
  readonly serverPeakRssMB: number
  readonly generatorCpuMs: number
  readonly sendSeconds: number
  readonly problems: string
}

/** Runs the scenario against a fresh `server`. */
export async function fanout(
  server: RunningServer,
  config: FanoutConfig,
  acknowledgements: boolean,
): Promise<FanoutResult> {
  const chats: Chat[] = []
  const openings: Promise<Chat>[] = []
  for (let c = 0; c < config.conversations; c++) {
    const id = `g~fanout-${c}` as ConversationId
    const users = Array.from({ length: config.participants }, (_, p) => `c${c}-u${p}` as UserId)
    openings.push(openChat(server, id, users, { acknowledgements }))
  }
  chats.push(...(await Promise.all(openings)))
  const clients = chats.flatMap((chat) => chat.clients)

  const sentAt = new Map<MessageId, number>()
  const sender = new Map<MessageId, BenchClient>()
  const latencies: number[] = []
  const steady: number[] = []
  // Messages are sent from `started`; those sent after `steadyFrom` count as steady state.
  let steadyFrom = Number.POSITIVE_INFINITY
  const ackLatencies: number[] = []
  let deliveries = 0
  // Sends not yet acknowledged as saved, per client, in send order.
  const unsaved = new Map<BenchClient, { clock: number; at: number }[]>()
  for (const client of clients) {
    onMessages(client.doc, (ids) => {
      const now = performance.now()
      for (const id of ids) {
        const at = sentAt.get(id)
        if (at === undefined || sender.get(id) === client) continue
        latencies.push(now - at)
        if (at >= steadyFrom) steady.push(now - at)
        deliveries++
      }
    })
    if (acknowledgements) {
      const pending: { clock: number; at: number }[] = []
      unsaved.set(client, pending)
      client.onSaved = (saved) => {
        const clock = saved.get(client.doc.clientID) ?? 0
        const now = performance.now()
        while (pending.length > 0 && pending[0]!.clock <= clock) ackLatencies.push(now - pending.shift()!.at)
      }
    }
  }
  // Let connection setup (and, on Parley, its hook deliveries) settle before measuring.
  await sleep(500)
  await quiesce(() => server.read().cpuMs, { timeoutMs: 30_000 })

  const interval = 1000 / config.rate
  const expectedDeliveries = clients.length * config.messages * (config.participants - 1)
  const before = server.read()
  const generatorBefore = generatorCpuMs()
  const started = performance.now()
  steadyFrom = started + 5000
  let counter = 0
  await Promise.all(
    clients.map(async (client) => {
      const offset = Math.random() * interval
      const pending = unsaved.get(client)
      for (let k = 0; k < config.messages; k++) {
        const due = started + offset + k * interval
        const wait = due - performance.now()
        if (wait > 0) await sleep(wait)
        const at = performance.now()
        const id = send(client, counter++)
        sentAt.set(id, at)
        sender.set(id, client)
        pending?.push({ clock: ownClock(client), at })
      }
    }),
  )
  const sendSeconds = (performance.now() - started) / 1000
  await drain(() => deliveries, expectedDeliveries)
  if (acknowledgements) await until(() => ackLatencies.length >= sentAt.size, 10_000)
  const after = server.read()
  const generator = generatorCpuMs() - generatorBefore
  const problems = problemsOf(clients)
  closeAll(clients)
  const serverCpuMs = after.cpuMs - before.cpuMs
  return {
    server: server.label,
    expectedDeliveries,
    deliveries,
    lost: expectedDeliveries - deliveries,
    latencyMs: distribution(latencies),
    steadyLatencyMs: distribution(steady),
    ...(acknowledgements ? { savedAckMs: distribution(ackLatencies) } : {}),
    serverCpuMs,
    serverCpuMsPer1000Deliveries: deliveries > 0 ? (serverCpuMs / deliveries) * 1000 : Number.NaN,
    serverPeakRssMB: after.peakRss / 2 ** 20,
    generatorCpuMs: generator,
    sendSeconds,
    problems,
  }
}
