/**
 * One client driver per protocol: the y-websocket 3.x `WebsocketProvider` for
 * the y-websocket server and for Parley (which speaks the same protocol, plus a
 * token and, when asked, "saved" acknowledgements), and `HocuspocusProvider`
 * for Hocuspocus. Each client owns a Y.Doc that the scenarios write with
 * @parley/shared's operations, so every server carries the same chat workload.
 */
import { HocuspocusProvider, HocuspocusProviderWebsocket } from "@hocuspocus/provider"
import {
  MessageType,
  PARLEY_PARAM,
  PARLEY_PROTOCOL_VERSION,
  readParleyFrame,
  TOKEN_PARAM,
  type UserId,
  type WireError,
} from "@parley/shared"
import type * as decoding from "lib0/decoding"
import WebSocket from "ws"
import type { Awareness } from "y-protocols/awareness"
import { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import type { RunningServer } from "./servers.js"

/** A connected client of one document. */
export interface BenchClient {
  readonly doc: Y.Doc
  readonly user: UserId
  /** Resolves once the first sync with the server completed. */
  readonly synced: Promise<void>
  /** Parley with acknowledgements only: called with each "saved" state vector. */
  onSaved: ((saved: Map<number, number>) => void) | undefined
  /** Typed errors the relay sent (Parley), or connection closes the server chose. */
  readonly problems: string[]
  /**
   * Resolves when the server confirmed it holds everything this client wrote so
   * far: Parley's "saved" acknowledgement, Hocuspocus's sync-status replies. The
   * y-websocket server confirms nothing, so there it resolves at once.
   */
  confirmed(): Promise<void>
  /**
   * Announces the client's awareness state again now (a new clock, the same
   * state), as its provider does on its own every 15 s; nothing if it
   * publishes none. The provider's next renewal comes 15 s after this one.
   */
  renewPresence(): void
  destroy(): void
}

/** Options of a connection. */
export interface ConnectOptions {
  /** Ask Parley for its extension messages ("saved" acks, typed errors). */
  readonly acknowledgements?: boolean
  readonly doc?: Y.Doc
  /** The socket class (y-websocket only): a channel class of the SDK's `SocketMux`, instead of `ws`. */
  readonly WebSocketPolyfill?: unknown
  /**
   * Publish an awareness state (y-websocket only; default true, as a stock
   * provider does). The SDK publishes none on a user's inbox.
   */
  readonly presence?: boolean
}

/** Connects `user` to document `name` on `server`, with the driver its protocol needs. */
export async function connect(
  server: RunningServer,
  name: string,
  user: UserId,
  options: ConnectOptions = {},
): Promise<BenchClient> {
  const doc = options.doc ?? new Y.Doc()
  if (server.kind === "hocuspocus") return connectHocuspocus(server, name, user, doc)
  return connectYWebsocket(server, name, user, doc, options)
}

/** A promise with its resolver. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void
  const promise = new Promise<void>((r) => {
    resolve = r
  })
  return { promise, resolve }
}

async function connectYWebsocket(
  server: RunningServer,
  name: string,
  user: UserId,
  doc: Y.Doc,
  options: ConnectOptions,
): Promise<BenchClient> {
  const token = await server.token(user)
  const params: Record<string, string> = {}
  if (token !== undefined) params[TOKEN_PARAM] = token
  const acks = server.kind === "parley" && options.acknowledgements === true
  if (acks) params[PARLEY_PARAM] = PARLEY_PROTOCOL_VERSION
  const provider = new WebsocketProvider(server.wsUrl, name, doc, {
    // biome-ignore lint/suspicious/noExplicitAny: ws's WebSocket stands in for the browser's.
    WebSocketPolyfill: (options.WebSocketPolyfill ?? WebSocket) as any,
    params,
    // Node 20 has BroadcastChannel: clients of one process would otherwise sync
    // with each other behind the server's back.
    disableBc: true,
  })
  // Before the socket opens: a provider sends its state when it connects, and renews it every 15 s.
  if (options.presence === false) provider.awareness.setLocalState(null)
  const synced = deferred()
  provider.on("sync", (isSynced: boolean) => {
    if (isSynced) synced.resolve()
  })
  const problems: string[] = []
  provider.on("connection-close", (event: { code?: number; reason?: string } | null) => {
    if (event && event.code !== 1000 && event.code !== undefined)
      problems.push(`closed ${event.code} ${event.reason ?? ""}`)
  })
  const client: BenchClient = {
    doc,
    user,
    synced: synced.promise,
    onSaved: undefined,
    problems,
    confirmed: () => Promise.resolve(),
    renewPresence: () => renewPresence(provider.awareness),
    destroy: () => {
      provider.destroy()
      // The provider made this awareness and leaves it running (a 3 s interval holding the
      // document): in a long run thousands of them kept the generator busy and its heap large.
      provider.awareness.destroy()
    },
  }
  if (acks) {
    let saved = 0
    const waiting: { clock: number; resolve: () => void }[] = []
    provider.messageHandlers[MessageType.parley] = (_encoder: unknown, decoder: decoding.Decoder) => {
      const frame = readParleyFrame(decoder)
      if (frame?.type === "saved") {
        const vector = Y.decodeStateVector(frame.stateVector)
        saved = vector.get(doc.clientID) ?? saved
        client.onSaved?.(vector)
        while (waiting.length > 0 && waiting[0]!.clock <= saved) waiting.shift()!.resolve()
      } else if (frame?.type === "error") {
        problems.push(`${frame.error.code}: ${frame.error.message}${errorRule(frame.error)}`)
      }
    }
    client.confirmed = () => {
      const clock = Y.getState(doc.store, doc.clientID)
      if (clock <= saved) return Promise.resolve()
      return new Promise((resolve) => waiting.push({ clock, resolve }))
    }
  }
  return client
}

/** Sets an awareness's own state again (its clock moves), as y-protocols does every 15 s. */
function renewPresence(awareness: Awareness | null | undefined): void {
  const state = awareness?.getLocalState()
  if (awareness && state !== null && state !== undefined) awareness.setLocalState(state)
}

const errorRule = (error: WireError) => (error.rule ? ` (${error.rule})` : "")

async function connectHocuspocus(
  server: RunningServer,
  name: string,
  user: UserId,
  doc: Y.Doc,
): Promise<BenchClient> {
  // One socket per client, as with y-websocket, rather than Hocuspocus's
  // optional multiplexing of several documents over one socket.
  const socket = new HocuspocusProviderWebsocket({ url: server.wsUrl, WebSocketPolyfill: WebSocket })
  const provider = new HocuspocusProvider({ name, document: doc, websocketProvider: socket })
  provider.attach()
  const synced = deferred()
  provider.on("synced", () => synced.resolve())
  let idle = deferred()
  idle.resolve()
  provider.on("unsyncedChanges", ({ number }: { number: number }) => {
    if (number === 0) idle.resolve()
  })
  return {
    doc,
    user,
    synced: synced.promise,
    onSaved: undefined,
    problems: [],
    confirmed() {
      if (!provider.hasUnsyncedChanges) return Promise.resolve()
      idle = deferred()
      return idle.promise
    },
    renewPresence: () => renewPresence(provider.awareness),
    destroy() {
      provider.destroy()
      socket.destroy()
      provider.awareness?.destroy()
    },
  }
}
