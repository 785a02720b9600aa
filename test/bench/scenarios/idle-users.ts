/**
 * Idle users: N users (in conversations of `perConversation` participants),
 * each connected the way an app connects them, then idle. On Parley a user is
 * what the SDK opens: ONE multiplexed socket (the SDK's own `SocketMux`)
 * carrying their inbox (with no presence of its own, as the SDK opens it) and
 * their conversation; on the other servers, which have no inbox, one socket to
 * the conversation.
 *
 * Memory per user is the server's growth over N, read after a full garbage
 * collection both times (RSS, and the JS heap V8 reports), from a baseline
 * taken once a first group of users is connected (so that code loaded and
 * compiled on first use is not charged to the users measured). CPU is
 * measured over a quiet window, once every client's first presence renewal
 * is past (see FIRST_RENEWAL_MS), by default 30 s long:
 * at least one whole cycle of every periodic activity of the servers and
 * their clients (awareness renewals every 15 s, pings every 15 to 30 s); a
 * shorter window can miss them all.
 */
import {
  type ConversationId,
  createConversation,
  inboxDocumentName,
  TOKEN_PARAM,
  type UserId,
} from "@parley/shared"
import WebSocket from "ws"
import { SocketMux } from "../../../client/src/socket-mux.js"
import { type BenchClient, type ConnectOptions, connect } from "../drivers.js"
import type { CollectedReading, RunningServer } from "../servers.js"
import { quiesce, sleep } from "../stats.js"
import { closeAll, confirmed } from "../workload.js"
import { FIRST_RENEWAL_MS, type IdleConfig, spreadRenewals } from "./idle.js"

/** Figures of one idle-users run. */
export interface IdleUsersResult {
  readonly server: string
  readonly users: number
  /** Real sockets the users hold (Parley: one per user, whatever they have open). */
  readonly sockets: number
  /** After a full garbage collection, with the warm-up group connected. */
  readonly baselineRssMB: number
  /** After a full garbage collection, at the end of the quiet window. */
  readonly rssMB: number
  /** RSS growth per user (both readings after a full garbage collection). */
  readonly bytesPerUser: number
  /** JS heap growth per user (both readings after a full garbage collection). */
  readonly heapBytesPerUser: number
  /** All the server's CPU over the quiet window, per second and per 1,000 users. */
  readonly serverCpuMsPerSecondPer1000: number
  /** Server CPU per second with no connection at all: a fixed cost, not a per-user one. */
  readonly emptyServerCpuMsPerSecond: number
  /** {@link serverCpuMsPerSecondPer1000} less that fixed cost. */
  readonly userCpuMsPerSecondPer1000: number
}

/** Users connected before the baseline is read, in conversations like the others. */
const WARM_UP_GROUPS = 2

/** Runs the scenario against a fresh `server`. */
export async function idleUsers(
  server: RunningServer,
  config: IdleConfig,
  options: { readonly inbox?: boolean } = {},
): Promise<IdleUsersResult> {
  await sleep(1000)
  // What the server spends with no connection at all (timers, metrics).
  const emptySeconds = Math.min(config.seconds, 10)
  const empty = server.read()
  const emptyStarted = performance.now()
  await sleep(emptySeconds * 1000)
  const emptyCpuMsPerSecond =
    (server.read().cpuMs - empty.cpuMs) / ((performance.now() - emptyStarted) / 1000)
  const parley = server.kind === "parley"
  const withInbox = parley && options.inbox !== false
  const muxes: SocketMux[] = []
  const optionsOf = (): ConnectOptions => {
    if (!parley) return {}
    const mux = new SocketMux(server.wsUrl, WebSocket as never)
    muxes.push(mux)
    return { acknowledgements: true, WebSocketPolyfill: channelsOf(mux, server.wsUrl) }
  }
  const openGroups = async (prefix: string, count: number, users: number): Promise<BenchClient[]> => {
    const clients: BenchClient[] = []
    // Opened in waves: the setup measures the servers' steady state, not a thousand simultaneous handshakes.
    for (let g = 0; g < count; g += 20) {
      const wave: Promise<BenchClient[]>[] = []
      for (let i = g; i < Math.min(count, g + 20); i++) {
        const size = Math.min(config.perConversation, users - i * config.perConversation)
        const ids = Array.from({ length: size }, (_, p) => `${prefix}${i}-u${p}` as UserId)
        wave.push(openGroup(server, `g~${prefix}-${i}` as ConversationId, ids, withInbox, optionsOf))
      }
      for (const group of await Promise.all(wave)) clients.push(...group)
    }
    return clients
  }
  // Stay connected to the end: unloading them mid-window would be work of their leaving.
  const warmUp = await openGroups("idlew", WARM_UP_GROUPS, WARM_UP_GROUPS * config.perConversation)
  await sleep(1000)
  await quiesce(() => server.read().cpuMs, { timeoutMs: 10_000 })
  const baseline: CollectedReading = await server.collected()
  const warmUpMuxes = muxes.length
  const clients = await openGroups(
    "idleu",
    Math.ceil(config.connections / config.perConversation),
    config.connections,
  )
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
  const users = config.connections
  const sockets = parley
    ? muxes.slice(warmUpMuxes).filter((m) => m.connected).length
    : clients.length - clients.filter((c) => c.user.startsWith("idlew")).length
  closeAll([...warmUp, ...clients])
  for (const mux of muxes) mux.destroy()
  const cpuPer1000 = ((end.cpuMs - start.cpuMs) / seconds) * (1000 / users)
  return {
    server: server.label,
    users,
    sockets,
    baselineRssMB: baseline.rss / 2 ** 20,
    rssMB: collected.rss / 2 ** 20,
    bytesPerUser: (collected.rss - baseline.rss) / users,
    heapBytesPerUser: (collected.heapUsed - baseline.heapUsed) / users,
    serverCpuMsPerSecondPer1000: cpuPer1000,
    emptyServerCpuMsPerSecond: emptyCpuMsPerSecond,
    userCpuMsPerSecondPer1000: cpuPer1000 - emptyCpuMsPerSecond * (1000 / users),
  }
}

/**
 * Creates a group of `users` and connects each (with their inbox when
 * `withInbox`, without presence there, as the SDK opens it), on the user's
 * own socket options.
 */
async function openGroup(
  server: RunningServer,
  id: ConversationId,
  users: readonly UserId[],
  withInbox: boolean,
  optionsOf: () => ConnectOptions,
): Promise<BenchClient[]> {
  const options = users.map(() => optionsOf())
  const creator = await connect(server, id, users[0]!, options[0])
  await creator.synced
  createConversation(creator.doc, users[0]!, { kind: "group", id, participants: users.slice(1) })
  await confirmed(creator, 30_000)
  const others = await Promise.all(users.slice(1).map((user, i) => connect(server, id, user, options[i + 1])))
  const inboxes = withInbox
    ? await Promise.all(
        users.map((user, i) =>
          connect(server, inboxDocumentName(user), user, { ...options[i], presence: false }),
        ),
      )
    : []
  const all = [creator, ...others, ...inboxes]
  await Promise.all(all.map((c) => c.synced))
  return all
}

/**
 * A WebSocket class whose instances are channels of `mux`, for the bench's
 * y-websocket providers (the SDK's own provider opens channels with
 * `mux.open`): y-websocket's URL is `${base}/${name}?token=…`.
 */
function channelsOf(mux: SocketMux, url: string): unknown {
  const base = url.replace(/\/+$/, "")
  const states = { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 }
  const Channel = function Channel(channelUrl: string) {
    const query = channelUrl.indexOf("?")
    const name = decodeURIComponent(channelUrl.slice(base.length + 1, query < 0 ? undefined : query))
    const token = new URLSearchParams(query < 0 ? "" : channelUrl.slice(query + 1)).get(TOKEN_PARAM) ?? ""
    // y-websocket compares readyState with the socket's own OPEN.
    return Object.assign(mux.open(name, token), states)
  }
  return Object.assign(Channel, states)
}
