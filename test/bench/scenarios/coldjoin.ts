/**
 * Cold join: a conversation of H messages, built by one client and sent to the
 * server once (in batches of one transaction each, as a device catching up
 * would), then fresh clients join it: first one at a time, then a storm of S at
 * once. A join is done when the client synced and holds the conversation's
 * newest message: the y-websocket server and Hocuspocus send a joiner all H
 * messages in its sync, Parley the live document only (the newest few hundred;
 * older ones are in sealed history segments, paged on demand), so the table
 * says how many a joiner's replica holds.
 */
import {
  addParticipants,
  type ConversationId,
  type MessageId,
  storedRecordId,
  typesOf,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import { type BenchClient, connect } from "../drivers.js"
import { generatorCpuMs } from "../proc.js"
import type { RunningServer } from "../servers.js"
import { distribution, median, quiesce, sleep, until } from "../stats.js"
import { confirmed, messagesIn, openChat, problemsOf, send } from "../workload.js"

/** Sizes of the cold-join scenario. */
export interface ColdJoinConfig {
  /** Messages in the conversation. */
  readonly history: number
  /** Messages per update while building it. */
  readonly batch: number
  /** Fresh clients joining one after another. */
  readonly joins: number
  /** Fresh clients joining at once. */
  readonly storm: number
}

/** Figures of one cold-join run. */
export interface ColdJoinResult {
  readonly server: string
  readonly history: number
  /** Encoded size of the whole conversation (a joiner's download), MB. */
  readonly documentMB: number
  readonly buildSeconds: number
  /** Time from the build's last confirmation until the server's CPU went quiet. */
  readonly settleSeconds: number
  /** First join after the conversation was written. */
  readonly firstJoinMs: number
  readonly firstJoinServerCpuMs: number
  /** Median time of the following joins, and their mean server CPU. */
  readonly joinMs: number
  readonly joinServerCpuMs: number
  readonly stormJoins: number
  readonly stormSeconds: number
  readonly stormServerCpuMs: number
  readonly rssBeforeStormMB: number
  readonly serverPeakRssMB: number
  readonly generatorCpuMs: number
  /** Messages the first joiner's replica held once its join was done (all of them, or the live document's). */
  readonly replicaMessages: number
  /** Joiners the server closed after all (e.g. a send-queue limit hit by the download itself). */
  readonly joinersClosed: number
  readonly problems: string
}

const JOIN_TIMEOUT = 300_000

/**
 * Connects a fresh client and resolves with it once it synced and holds the
 * message `newest`; fails as soon as the server closes it or sends an error.
 */
async function join(server: RunningServer, id: ConversationId, user: UserId, newest: MessageId) {
  const client = await connect(server, id, user)
  let synced = false
  void client.synced.then(() => {
    synced = true
  })
  const done = () => synced && holds(client, newest)
  await until(() => done() || client.problems.length > 0, JOIN_TIMEOUT, 5)
  if (!done()) {
    client.destroy()
    throw new Error(
      `${user} ${synced ? "synced" : "did not sync"} with ${messagesIn(client.doc)} messages, not the newest (${problemsOf([client])})`,
    )
  }
  return client
}

/** Whether the client's replica holds the message `id` (looked up from the newest end: it is the last one written). */
function holds(client: BenchClient, id: MessageId): boolean {
  const messages = typesOf(client.doc).messages
  for (let i = messages.length - 1; i >= Math.max(0, messages.length - 64); i--)
    if (storedRecordId(messages.get(i)) === id) return true
  return false
}

/** Runs the scenario against a fresh `server`. */
export async function coldJoin(server: RunningServer, config: ColdJoinConfig): Promise<ColdJoinResult> {
  const id = "g~coldjoin" as ConversationId
  const readers = Array.from(
    { length: Math.max(config.joins, config.storm) },
    (_, i) => `reader${i}` as UserId,
  )
  const buildStarted = performance.now()
  const { clients } = await openChat(server, id, ["writer" as UserId], { acknowledgements: true })
  const writer = clients[0]!
  // Every client measured, and those still open (closed however the run ends).
  const joiners: BenchClient[] = []
  const open = new Set<BenchClient>([writer])
  try {
    // Readers are participants, so that authorization lets them in.
    addParticipants(writer.doc, writer.user, readers)
    let newest: MessageId | undefined
    for (let n = 0; n < config.history; ) {
      const count = Math.min(config.batch, config.history - n)
      writer.doc.transact(() => {
        for (let i = 0; i < count; i++) newest = send(writer, n + i)
      })
      n += count
      // Wait for the server's confirmation where it gives one, so the build is not
      // throttled by a rate limit; the reference server gives none.
      await confirmed(writer, JOIN_TIMEOUT)
    }
    const documentMB = Y.encodeStateAsUpdate(writer.doc).byteLength / 2 ** 20
    const buildSeconds = (performance.now() - buildStarted) / 1000
    // Joins are measured on a settled server: not while it still works through
    // what the build left behind (e.g. Parley's hook deliveries).
    const settleSeconds = (await quiesce(() => server.read().cpuMs)) / 1000
    const generatorBefore = generatorCpuMs()

    let replicaMessages: number | undefined
    const timed = async (user: UserId) => {
      const before = server.read().cpuMs
      const started = performance.now()
      const client = await join(server, id, user, newest!)
      const ms = performance.now() - started
      replicaMessages ??= messagesIn(client.doc)
      // The server may still be reading the joiner's reply; let it finish.
      await sleep(100)
      const cpu = server.read().cpuMs - before
      client.destroy()
      joiners.push(client)
      return { ms, cpu }
    }
    const first = await timed(readers[0]!)
    const later: { ms: number; cpu: number }[] = []
    for (let i = 1; i < config.joins; i++) later.push(await timed(readers[i]!))

    await sleep(500)
    const beforeStorm = server.read()
    const stormStarted = performance.now()
    const settled = await Promise.allSettled(
      readers.slice(0, config.storm).map((user) => join(server, id, user, newest!)),
    )
    const storm = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []))
    joiners.push(...storm)
    for (const client of storm) open.add(client)
    const refused = settled.flatMap((s) => (s.status === "rejected" ? [s.reason as Error] : []))
    if (refused.length > 0)
      throw new Error(
        `${refused.length} of ${config.storm} joiners of the storm failed, e.g. ${refused[0]!.message}`,
      )
    const stormSeconds = (performance.now() - stormStarted) / 1000
    await sleep(100)
    const afterStorm = server.read()
    const problems = problemsOf([writer, ...joiners])
    return {
      server: server.label,
      history: config.history,
      documentMB,
      buildSeconds,
      settleSeconds,
      firstJoinMs: first.ms,
      firstJoinServerCpuMs: first.cpu,
      joinMs: later.length ? median(later.map((j) => j.ms)) : first.ms,
      joinServerCpuMs: later.length ? distribution(later.map((j) => j.cpu)).mean : first.cpu,
      stormJoins: config.storm,
      stormSeconds,
      stormServerCpuMs: afterStorm.cpuMs - beforeStorm.cpuMs,
      rssBeforeStormMB: beforeStorm.rss / 2 ** 20,
      serverPeakRssMB: afterStorm.peakRss / 2 ** 20,
      generatorCpuMs: generatorCpuMs() - generatorBefore,
      replicaMessages: replicaMessages ?? 0,
      joinersClosed: joiners.filter((c) => c.problems.length > 0).length,
      problems,
    }
  } finally {
    for (const client of open) client.destroy()
  }
}
