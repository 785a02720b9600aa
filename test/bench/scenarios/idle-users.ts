/**
 * Idle users: N users (in conversations of `perConversation` participants),
 * each connected the way an app connects them, then idle. On Parley a user is
 * what the SDK opens: ONE multiplexed socket (the SDK's own `SocketMux`)
 * carrying their inbox and their conversation; on the other servers, which
 * have no inbox, one socket to the conversation. Memory per user is the
 * server's RSS growth over N; CPU is measured over a quiet window.
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
import type { RunningServer } from "../servers.js"
import { quiesce, sleep } from "../stats.js"
import { closeAll, confirmed } from "../workload.js"
import type { IdleConfig } from "./idle.js"

/** Figures of one idle-users run. */
export interface IdleUsersResult {
  readonly server: string
  readonly users: number
  /** Real sockets the users hold (Parley: one per user, whatever they have open). */
  readonly sockets: number
  readonly baselineRssMB: number
  readonly rssMB: number
  readonly bytesPerUser: number
  readonly serverCpuMsPerSecondPer1000: number
}

/** Runs the scenario against a fresh `server`. */
export async function idleUsers(
  server: RunningServer,
  config: IdleConfig,
  options: { readonly inbox?: boolean } = {},
): Promise<IdleUsersResult> {
  await sleep(1000)
  const baseline = server.read()
  const parley = server.kind === "parley"
  const withInbox = parley && options.inbox !== false
  const clients: BenchClient[] = []
  const muxes: SocketMux[] = []
  const optionsOf = (): ConnectOptions => {
    if (!parley) return {}
    const mux = new SocketMux(server.wsUrl, WebSocket as never)
    muxes.push(mux)
    return { acknowledgements: true, WebSocketPolyfill: channelsOf(mux, server.wsUrl) }
  }
  const groups = Math.ceil(config.connections / config.perConversation)
  for (let g = 0; g < groups; g += 20) {
    const wave: Promise<BenchClient[]>[] = []
    for (let i = g; i < Math.min(groups, g + 20); i++) {
      const size = Math.min(config.perConversation, config.connections - i * config.perConversation)
      const users = Array.from({ length: size }, (_, p) => `idleu${i}-u${p}` as UserId)
      wave.push(openGroup(server, `g~idleu-${i}` as ConversationId, users, withInbox, optionsOf))
    }
    for (const group of await Promise.all(wave)) clients.push(...group)
  }
  await sleep(1000)
  await quiesce(() => server.read().cpuMs, { timeoutMs: 10_000 })
  const start = server.read()
  const started = performance.now()
  await sleep(config.seconds * 1000)
  const end = server.read()
  const seconds = (performance.now() - started) / 1000
  const users = config.connections
  const sockets = parley ? muxes.filter((m) => m.connected).length : clients.length
  closeAll(clients)
  for (const mux of muxes) mux.destroy()
  return {
    server: server.label,
    users,
    sockets,
    baselineRssMB: baseline.rss / 2 ** 20,
    rssMB: end.rss / 2 ** 20,
    bytesPerUser: (end.rss - baseline.rss) / users,
    serverCpuMsPerSecondPer1000: ((end.cpuMs - start.cpuMs) / seconds) * (1000 / users),
  }
}

/** Creates a group of `users` and connects each (with their inbox when `withInbox`), on the user's own socket options. */
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
    ? await Promise.all(users.map((user, i) => connect(server, inboxDocumentName(user), user, options[i])))
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
