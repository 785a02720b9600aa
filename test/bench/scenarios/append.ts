/**
 * Append: one writer appends N messages to one conversation, each message its
 * own update (one frame), as fast as its provider sends them, as a chat app
 * importing or a bot posting would (issue 17.4: "building a 100,000-message
 * conversation"). A reader joins right after the last write, as a user
 * opening the conversation then would; it is done when it holds the last
 * message. Then the server is left to finish what it still does (Parley: hook
 * events, sealing, compaction) and a second reader joins the quiet server.
 */
import { addParticipants, type ConversationId, getMessage, type MessageId, type UserId } from "@parley/shared"
import { type BenchClient, connect } from "../drivers.js"
import { generatorCpuMs } from "../proc.js"
import type { RunningServer } from "../servers.js"
import { quiesce, sleep, until } from "../stats.js"
import { confirmed, openChat, problemsOf, send } from "../workload.js"

/** Sizes of the append scenario. */
export interface AppendConfig {
  /** Messages appended, one update each. */
  readonly messages: number
}

/** Figures of one append run. */
export interface AppendResult {
  readonly server: string
  readonly messages: number
  /** From the first message sent to the last one handed to the socket. */
  readonly writeSeconds: number
  /** From the first message sent until the server confirmed all (Parley: "saved"; others: = the first reader's wait). */
  readonly confirmedSeconds: number
  /** From the last write until the first reader, joining then, held the last message. */
  readonly firstReaderSeconds: number
  /** From the last write until the server's CPU went quiet (including the 0.5 s quiet window, as cold join's). */
  readonly busyAfterSeconds: number
  /** Server CPU from the first message until quiet. */
  readonly serverCpuSeconds: number
  /** A reader joining the quiet server: time and server CPU. */
  readonly laterReaderMs: number
  readonly laterReaderServerCpuMs: number
  readonly serverPeakRssMB: number
  readonly generatorCpuMs: number
  readonly problems: string
}

const TIMEOUT = 600_000
/** Messages handed to the provider per turn of the event loop (it sends each at once). */
const PER_TURN = 100

/** Connects `user` and resolves once it synced and holds message `last`. */
async function reader(server: RunningServer, id: ConversationId, user: UserId, last: MessageId) {
  const client = await connect(server, id, user)
  let synced = false
  void client.synced.then(() => {
    synced = true
  })
  const done = () => synced && getMessage(client.doc, last) !== undefined
  await until(() => done() || client.problems.length > 0, TIMEOUT, 5)
  if (!done()) {
    client.destroy()
    throw new Error(
      `${user} ${synced ? "synced" : "did not sync"} without the last message (${problemsOf([client])})`,
    )
  }
  return client
}

/** Runs the scenario against a fresh `server`. */
export async function append(server: RunningServer, config: AppendConfig): Promise<AppendResult> {
  const id = "g~append" as ConversationId
  const { clients } = await openChat(server, id, ["writer" as UserId], { acknowledgements: true })
  const writer = clients[0]!
  const open = new Set<BenchClient>([writer])
  try {
    addParticipants(writer.doc, writer.user, ["reader0" as UserId, "reader1" as UserId])
    await confirmed(writer, TIMEOUT)
    await quiesce(() => server.read().cpuMs)
    const generatorBefore = generatorCpuMs()
    const cpuBefore = server.read().cpuMs
    const started = performance.now()
    let last: MessageId | undefined
    for (let n = 0; n < config.messages; n++) {
      last = send(writer, n)
      if (n % PER_TURN === PER_TURN - 1) await new Promise((r) => setImmediate(r))
    }
    const written = performance.now()
    const first = reader(server, id, "reader0" as UserId, last!).then((client) => {
      open.add(client)
      return performance.now()
    })
    const acked = confirmed(writer, TIMEOUT).then(() => performance.now())
    const [firstAt, ackedAt] = await Promise.all([first, acked])
    await quiesce(() => server.read().cpuMs, { timeoutMs: TIMEOUT })
    const quietAt = performance.now()
    const serverCpu = server.read().cpuMs - cpuBefore
    const generator = generatorCpuMs() - generatorBefore
    const laterBefore = server.read().cpuMs
    const laterStarted = performance.now()
    open.add(await reader(server, id, "reader1" as UserId, last!))
    const laterMs = performance.now() - laterStarted
    await sleep(100)
    const laterCpu = server.read().cpuMs - laterBefore
    // Parley confirms; the reference server confirms at once, so its "confirmed" is when a reader had it all.
    const confirmedAt = server.kind === "parley" || server.kind === "hocuspocus" ? ackedAt : firstAt
    return {
      server: server.label,
      messages: config.messages,
      writeSeconds: (written - started) / 1000,
      confirmedSeconds: (Math.max(confirmedAt, written) - started) / 1000,
      firstReaderSeconds: (firstAt - written) / 1000,
      busyAfterSeconds: (quietAt - written) / 1000,
      serverCpuSeconds: serverCpu / 1000,
      laterReaderMs: laterMs,
      laterReaderServerCpuMs: laterCpu,
      serverPeakRssMB: server.read().peakRss / 2 ** 20,
      generatorCpuMs: generator,
      problems: problemsOf([...open]),
    }
  } finally {
    for (const client of open) client.destroy()
  }
}
