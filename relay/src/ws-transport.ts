import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { Socket } from "node:net"
import type { Duplex } from "node:stream"
import {
  AddressLimit,
  CloseCode,
  checkProfileName,
  checkProfilePicture,
  ErrorCode,
  isUserId,
  MessageType,
  MUX_PARAM,
  MUX_PROTOCOL_VERSION,
  PARLEY_PARAM,
  PARLEY_PROTOCOL_VERSION,
  ParleyError,
  TOKEN_PARAM,
  toParleyError,
  UserLimit,
} from "@parley/shared"
import { type RawData, WebSocket, WebSocketServer } from "ws"
import { AddressConnections, AddressLimiter } from "./address-limits.js"
import { type Authenticator, SERVICE_ROLE, unavailable, type VerifiedToken } from "./auth.js"
import type { Connection, Session } from "./connection.js"
import { defaultMaxConnections, openFilesLimit } from "./connection-capacity.js"
import { Deadlines } from "./deadlines.js"
import { closeOf } from "./errors.js"
import { FAIR_SHARE_WINDOW_MS } from "./fair-share.js"
import { holdWrites } from "./held-writes.js"
import { answerClientError, sendJson } from "./http-json.js"
import { Keepalive, type Liveness } from "./keepalive.js"
import type { Logger } from "./log.js"
import type { RelayMetrics } from "./metrics.js"
import { MuxSocket } from "./mux-socket.js"
import { PipelinedRequests } from "./pipelined-requests.js"
import { describePrincipal, type Principal, SERVICE_PARTICIPANT_PREFIX } from "./principal.js"
import { RateLimiter } from "./rate-limit.js"
import { firstByte, sizeOf, toBytes } from "./raw-data.js"
import type { RelayCore } from "./relay-core.js"
import { withinRequest } from "./request-scope.js"
import { SendQueue } from "./send-queue.js"
import { serveStatic } from "./static-files.js"
import { type LeaseContext, TokenLease } from "./token-lease.js"
import { UnfinishedMessages } from "./unfinished-messages.js"
import { sendFramed } from "./ws-frame.js"

/** Limits applied per WebSocket connection. */
export interface TransportLimits {
  /** Largest frame accepted; larger ones close the connection with 4413, unread. */
  readonly maxFrameBytes: number
  /** Bytes queued to a client beyond which it is disconnected (4429): a slow reader cannot grow memory. */
  readonly maxBufferedBytes: number
  /** Average frames a second a client may send; a flood closes it (4429). */
  readonly maxMessagesPerSecond: number
  /** Frames a client may send in a burst. */
  readonly messageBurst: number
  /** Time between pings and keepalive frames to each connection (0: none); see {@link Keepalive}. */
  readonly pingIntervalMs: number
  /** Time a connection has to answer a ping before it is dropped. */
  readonly pingTimeoutMs: number
  /**
   * Average awareness frames a second a client may send, counted apart from
   * other frames: a stock y-websocket client sends back every awareness update
   * it receives, so in a big room it sends far more of them than its user types.
   */
  readonly socketAwarenessPerSecond: number
  /** Awareness frames a client may send in a burst. */
  readonly socketAwarenessBurst: number
  /**
   * Connection attempts with a token that fails verification one client
   * address may make per minute (a bucket of this many, refilled over a
   * minute); beyond, upgrades from it are answered 429 before any token is
   * verified. 0: no limit. See {@link AddressLimiter}.
   */
  readonly addressAuthFailuresPerMinute: number
  /**
   * HTTP requests one client address may make per second, in a bucket of
   * ten seconds' worth; beyond, answered 429. A request whose credentials
   * verify (a token, an API key, the metrics token) is given back: it is
   * held to its user's or key's budgets instead. 0: no limit.
   */
  readonly addressRequestsPerSecond: number
  /**
   * Connections one client address may hold open at once that are not a
   * user's WebSocket yet (requests, keep-alives, upgrades being checked); at
   * the cap the longest-waiting one makes room, a burst may go to four times
   * it, and beyond a new one is answered 429 and closed. 0: no limit. Not
   * counted behind a trusted proxy (`trustProxy`). See {@link AddressConnections}.
   */
  readonly connectionsPerAddress: number
  /**
   * Connections of every kind the relay holds at once; beyond, new ones are
   * dropped at accept. 0: derived from the file-descriptor limit (see
   * {@link defaultMaxConnections}).
   */
  readonly maxConnections: number
  /** Time a connection has to send a complete request's headers (408 and closed after). */
  readonly requestHeadersTimeoutMs: number
  /** Time a multiplexed socket may stay open without a channel (then closed 1000 `no channel`). */
  readonly muxIdleMs: number
}

/** A socket's send queue above which the user's queues across sockets are added up (cheap below). */
const USER_QUEUE_CHECK_BYTES = 16 * 1024
/** Most unanswered awareness frames a client may echo without counting (see `echoCredit`). */
const MAX_ECHO_CREDIT = 256
/** Most bytes of echoes a client may have free of its user's receive budget at once (see `echoBytes`). */
const MAX_ECHO_BYTES = 4 * 1024 * 1024
/** What an echo may add to the frame it answers (a client re-encodes the entries it applied). */
const ECHO_SLACK_BYTES = 64
/** Time a client closed for not reading gets to read its close frame before its socket is dropped. */
const UNREAD_CLOSE_GRACE_MS = 5000
/** Time a client answered before its request's body arrived gets to finish sending it before its socket is dropped. */
const UNREAD_BODY_GRACE_MS = 2000
/** Longest a whole request may take to arrive (an upload's chunk included): Node's own default. */
const REQUEST_TIMEOUT_MS = 300_000
/** The label of connections dropped at `maxConnections`. */
const MAX_CONNECTIONS = "max-connections"

/** How long a WebSocket refused before its user was admitted has to answer the close frame (then cut). */
const REFUSED_CLOSE_GRACE_MS = 1000

/** Connections Node accepts past the transport's cap: a newcomer and the idle one closed for it, for a moment. */
const ACCEPT_SLACK = 16

/** What the transport binds to sockets. */
export interface TransportOptions {
  readonly core: RelayCore
  readonly auth: Authenticator
  readonly log: Logger
  readonly metrics: RelayMetrics
  readonly limits: TransportLimits
  /** Serve `/dev/token`. */
  readonly dev: boolean
  /** Serve `/dev/token` to any `Host` (with `--force-dev`), not only loopback names. */
  readonly devAnyHost?: boolean
  /** Serve a built web app from this directory at `/`. */
  readonly staticDir?: string
  /** Extra fields for `/healthz`. */
  readonly health?: () => Record<string, unknown>
  /** Whether the relay's dependencies answer, for `/readyz` (ready when absent). */
  readonly readiness?: () => Readiness
  /**
   * The relay runs behind a reverse proxy that appends the client's address
   * to `X-Forwarded-For`: per-address limits then count the right-most entry
   * instead of the proxy's own address (which every client would share).
   */
  readonly trustProxy?: boolean
  /** HTTP routes of the extensions (`/metrics`, `/admin/dead-letters`), tried first; true when handled. */
  readonly routes?: (req: IncomingMessage, res: ServerResponse) => Promise<boolean>
  /**
   * True when `key` (an `Authorization: Bearer` credential) is an API key the
   * relay's key cache read and whose secret matches, without reading storage:
   * such a request is let through an address whose failed verifications are
   * spent (see `CachedApiKeyStore.holds`).
   */
  readonly knownApiKey?: (key: string) => boolean
}

/** What `/readyz` reports: ready, or the dependencies that fail. */
export type Readiness =
  | { readonly ready: true }
  | {
      readonly ready: false
      readonly failing: readonly {
        readonly dependency: string
        readonly code: string
        readonly error: string
        /** ISO time of the first failure. */
        readonly since: string
      }[]
    }

const json = sendJson

/**
 * HTTP + WebSocket binding of the core: `/<document>?token=...&parley=1`
 * becomes a {@link Session}; `/healthz`, `/readyz`, `/dev/token`, the extensions' routes and static
 * files are plain HTTP.
 */
/**
 * What reading one frame costs the receive budget beyond its bytes. Handling a frame costs 2-10 µs
 * however small it is (reading, parsing, dispatching; a sync request folded into one waiting, a
 * frame for a closed channel), as much as unmasking and reading several kilobytes. Charged 256
 * bytes, one user's 250 sockets had 22,000 ten-byte sync requests a second read (with their answers,
 * 43 % of the relay's CPU; measured); charged 4 KiB, about 1,000 a second once their burst is spent
 * (6-7 %, the update budget's 100 updates a second cost more). An honest device sends a few frames
 * per conversation it opens, and a few a second while its user types.
 */
const FRAME_BASE_BYTES = 4096

/** Requests one HTTP connection may have under way at once (pipelined); beyond, it is closed. */
export const MAX_PIPELINED = 4

/** The per-address request budget refills over this long (a bucket of ten seconds' requests). */
const REQUEST_BUCKET_REFILL_MS = 10_000

/**
 * Whole frames' worth (`maxFrameBytes` each) of messages not finished yet
 * that one user's sockets may hold together (see {@link UnfinishedMessages}).
 */
export const UNFINISHED_FRAMES_PER_USER = 8

export class WsTransport {
  readonly server: Server
  private readonly wss: WebSocketServer
  private stopping = false
  private readonly sockets = new Set<WebSocket>()
  private readonly keepalive: Keepalive
  private readonly addresses: AddressLimiter
  /** HTTP requests per address, given back once credentials verify (see `TransportLimits.addressRequestsPerSecond`). */
  private readonly requests: AddressLimiter
  /** Each HTTP connection's reader of pipelined heads (see `guardPipelining`), until it upgrades. */
  private readonly pipelineGuards = new WeakMap<Socket, (chunk: Buffer) => void>()
  /** Requests each connection has under way: more than {@link MAX_PIPELINED} closes it. */
  private readonly underWay = new WeakMap<Socket, number>()
  private readonly connections: AddressConnections
  /** Connections of every kind held at once (`TransportLimits.maxConnections`, resolved); 0: none. */
  private readonly maxConnections: number
  /** TCP connections open now. */
  private accepted = 0
  /** Sockets not read until their user's receive budget is back (see `paceReading`). */
  private readonly paced = new WeakSet<WebSocket>()
  /** What each user's sockets hold of messages not finished yet (see {@link UnfinishedMessages}). */
  private readonly unfinished: UnfinishedMessages
  /** Every open socket's (and channel's) token expiry, on one timer. */
  private readonly deadlines: Deadlines
  /** What every socket's token lease shares. */
  private readonly leases: LeaseContext

  constructor(private readonly options: TransportOptions) {
    this.addresses = new AddressLimiter(options.limits.addressAuthFailuresPerMinute)
    this.requests = new AddressLimiter(
      options.limits.addressRequestsPerSecond * 10,
      undefined,
      REQUEST_BUCKET_REFILL_MS,
    )
    this.deadlines = new Deadlines((error) =>
      options.log.error({ err: error }, "closing at token expiry failed"),
    )
    this.leases = {
      auth: options.auth,
      log: options.log,
      metrics: options.metrics,
      deadlines: this.deadlines,
      users: options.core.users,
    }
    const { limits } = options
    this.unfinished = new UnfinishedMessages(UNFINISHED_FRAMES_PER_USER * limits.maxFrameBytes)
    this.connections = new AddressConnections(options.trustProxy ? 0 : limits.connectionsPerAddress)
    const headersTimeout = Math.max(1, limits.requestHeadersTimeoutMs)
    this.server = createServer(
      {
        headersTimeout,
        requestTimeout: Math.max(headersTimeout, REQUEST_TIMEOUT_MS),
        // Node checks both timeouts on this period: a quarter of the headers' limit keeps the cut near it.
        connectionsCheckingInterval: Math.min(30_000, Math.max(100, Math.floor(headersTimeout / 4))),
      },
      (req, res) => {
        this.http(req, res).catch((error: unknown) => {
          options.log.error({ err: error, url: req.url }, "http request failed")
          if (!res.headersSent) json(res, 500, { error: "internal error" })
          else res.destroy()
        })
      },
    )
    this.maxConnections =
      limits.maxConnections > 0 ? limits.maxConnections : defaultMaxConnections(openFilesLimit())
    options.core.users.shareSockets(this.maxConnections)
    // The cap is the transport's own (see `admit`), which makes room at it; Node's, a little above, is
    // the backstop for a moment's overlap of a newcomer and the connection closed for it.
    this.server.maxConnections = this.maxConnections > 0 ? this.maxConnections + ACCEPT_SLACK : 0
    // What Node's parser refuses before any handler (a head over its limit, a request not in on time) is
    // answered with a problem document, as every API error is; Node's own answers have an empty body.
    this.server.on("clientError", answerClientError)
    this.server.on("drop", () => this.refusedAtAccept(MAX_CONNECTIONS))
    this.server.on("connection", (socket: Socket) => this.admit(socket))
    // A connection with a request under way is not one to close for a newer one (see AddressConnections).
    this.server.prependListener("request", (req: IncomingMessage, res: ServerResponse) => {
      // Node starts every request a chunk holds at once, and goes on with those of a connection already
      // closed: 64 KiB of pipelined requests bought seconds of work that nothing could cancel (an outside
      // probe: 2.6 MB from one address stalled the relay for minutes). No browser pipelines.
      const socket = req.socket as Socket
      const underWay = (this.underWay.get(socket) ?? 0) + 1
      this.underWay.set(socket, underWay)
      if (underWay > MAX_PIPELINED) socket.destroy()
      res.once("close", () => this.underWay.set(socket, (this.underWay.get(socket) ?? 1) - 1))
      this.connections.busy(req.socket)
      res.once("close", () => this.connections.idle(req.socket))
      // Answered before its body arrived (a refusal: 401, 403, 405, 413, a retryable 503): Node goes on
      // reading the body to keep the connection, at whatever pace the sender likes (an outside probe held
      // connections for 300 s at a byte a second, with no token). A sender that does not finish within the
      // grace loses its connection; one that does keeps it (cut at once, a client still sending its body
      // could see a reset instead of the answer).
      res.once("finish", () => {
        if (req.complete) return
        const cut = setTimeout(() => {
          if (!req.complete) req.socket.destroy()
        }, UNREAD_BODY_GRACE_MS)
        cut.unref()
        req.once("end", () => clearTimeout(cut))
      })
    })
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: options.limits.maxFrameBytes,
      perMessageDeflate: false,
    })
    this.server.on("upgrade", (req, socket, head) => this.upgrade(req, socket, head))
    this.keepalive = new Keepalive({
      intervalMs: options.limits.pingIntervalMs,
      timeoutMs: options.limits.pingTimeoutMs,
    })
  }

  /** A new TCP connection: counted against its address until it is a user's WebSocket. */
  private admit(socket: Socket): void {
    this.accepted++
    socket.once("close", () => this.accepted--)
    // At the cap, a connection waiting long for a request (of the address holding the most) makes room:
    // else an address's idle connections, each within its cap, held the last slots, /healthz's too.
    if (
      this.maxConnections > 0 &&
      this.accepted > this.maxConnections &&
      !this.connections.makeRoom(socket.remoteAddress ?? "")
    ) {
      this.refusedAtAccept(MAX_CONNECTIONS)
      socket.destroy()
      return
    }
    if (this.connections.admit(socket, socket.remoteAddress ?? "")) {
      this.guardPipelining(socket)
      return
    }
    this.refusedAtAccept(AddressLimit.connections, socket.remoteAddress)
    const body = `${AddressLimit.connections}\n`
    // destroySoon: a peer that never reads or closes must not keep the descriptor of its refusal.
    socket.write(
      "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\n" +
        `content-type: text/plain\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
    )
    socket.destroySoon()
  }

  /**
   * Reads each chunk of `socket` before Node's HTTP parser does, and cuts it
   * at the first request head past what a client may pipeline (see
   * `PipelinedRequests`): the rest is blanked, so that the parser stops at
   * it, and the connection closed. Taken off once the connection is a
   * WebSocket (its frames are not HTTP).
   */
  private guardPipelining(socket: Socket): void {
    const guard = new PipelinedRequests()
    const read = (chunk: Buffer) => {
      const cut = guard.feed(chunk)
      if (cut === undefined) return
      chunk.fill(0, cut)
      socket.destroy()
    }
    socket.prependListener("data", read)
    this.pipelineGuards.set(socket, read)
  }

  /** Counts a connection refused at accept; logged at most once per limit per window (they come in floods). */
  private refusedAtAccept(limit: string, address?: string): void {
    this.options.metrics.connectionsRefused.inc({ limit })
    const held = this.options.core.logThrottle.admit(`accept ${limit}`)
    if (held === undefined) return
    this.options.log.warn(
      { limit, lastAddress: address, ...(held > 0 ? { alsoRefused: held } : {}) },
      "connections refused at accept",
    )
  }

  /**
   * Counts `bytes` read from `ws` against its user's receive budget; while
   * the budget is overdrawn, stops reading the socket (TCP holds the sender)
   * until it is back. The frames already read are handled as usual.
   */
  /** Closes `ws` (with `closeWith`) when it holds the most of its user's unfinished messages past their bound. */
  private watchUnfinished(
    ws: WebSocket,
    principal: Principal,
    closeWith: (close: { code: number; reason: string }) => void,
  ): void {
    const user = principal.kind === "user" ? `user ${principal.user}` : describePrincipal(principal)
    this.unfinished.watch(ws, user, () => {
      this.options.metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
      this.options.log.info(
        { principal: describePrincipal(principal) },
        "closed: the user's sockets hold too much of messages not finished",
      )
      closeWith({ code: CloseCode.RateLimited.code, reason: "unfinished-messages" })
      // Cut, not left for the close handshake: `ws` holds the fragments until the connection ends (a
      // graceful close kept them for ws's 30 s, and a client reopening each socket kept hundreds of MB).
      setImmediate(() => ws.terminate())
    })
  }

  private paceReading(ws: WebSocket, principal: Principal, bytes: number, frame = true): void {
    const users = this.options.core.users
    // A user held back while the relay is saturated is not read for a window (see `FairShare`).
    const wait = Math.max(
      users.received(principal, bytes + (frame ? FRAME_BASE_BYTES : 0)),
      principal.kind === "user" && users.fair.isHeld(principal.user) ? FAIR_SHARE_WINDOW_MS : 0,
    )
    if (wait <= 0 || this.paced.has(ws)) return
    ws.pause()
    this.paced.add(ws)
    setTimeout(() => {
      this.paced.delete(ws)
      if (ws.readyState === WebSocket.OPEN) ws.resume()
    }, wait).unref()
  }

  /**
   * Logs a refused connection, at most once per address, close code and
   * reason per window (see LogThrottle; reasons come from a small set).
   */
  private logRefusal(address: string, code: number, fields: { reason: string; doc?: string }): void {
    const held = this.options.core.logThrottle.admit(`refused ${code}\u0000${fields.reason}\u0000${address}`)
    if (held === undefined) return
    this.options.log.info(
      { ...fields, code, address, ...(held > 0 ? { alsoRefused: held } : {}) },
      "connection refused",
    )
  }

  /** Starts listening; resolves with the bound port. */
  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject)
      this.server.listen(port, host, () => {
        this.server.off("error", reject)
        const address = this.server.address()
        resolve(typeof address === "object" && address ? address.port : port)
      })
    })
  }

  /** Stops accepting connections and requests; open WebSockets stay until the core closes them. */
  stopAccepting(): void {
    this.stopping = true
    this.server.close()
    this.server.closeIdleConnections()
  }

  /** Closes whatever is still open (after the core closed its connections). */
  async close(): Promise<void> {
    this.stopAccepting()
    this.keepalive.stop()
    this.deadlines.stop()
    for (const ws of this.sockets) ws.close(CloseCode.GoingAway.code, CloseCode.GoingAway.reason)
    await new Promise<void>((resolve) => this.wss.close(() => resolve()))
    this.server.closeAllConnections()
  }

  private async http(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // A connection closed (by its client, or for pipelining too deep) has nobody to answer.
    if (req.socket.destroyed) return
    // Every request takes one of its address's, given back once its credentials verify (see
    // `credentialsVerified`): those are held to their user's or key's budgets instead.
    const address = this.addressOf(req)
    if (!this.requests.take(address))
      return this.refuseAddress(res, AddressLimit.requests, this.requests, address)
    return withinRequest(
      () => this.requests.giveBack(address),
      () => this.serve(req, res),
    )
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://relay")
    if (req.headers.authorization !== undefined && !this.credentialsAllowed(req, res)) return
    if (this.options.routes && (await this.options.routes(req, res))) return
    if (req.method !== "GET" && req.method !== "HEAD") return json(res, 405, { error: "method not allowed" })
    if (url.pathname === "/healthz") {
      return json(res, this.stopping ? 503 : 200, {
        status: this.stopping ? "stopping" : "ok",
        documents: this.options.core.loadedDocuments,
        connections: this.sockets.size,
        users: this.options.core.users.size,
        uptimeSeconds: Math.round(process.uptime()),
        ...this.options.health?.(),
      })
    }
    if (url.pathname === "/readyz") {
      // Readiness, unlike liveness (/healthz): a load balancer sends no traffic while storage fails.
      if (this.stopping) return json(res, 503, { status: "stopping" })
      const readiness = this.options.readiness?.() ?? { ready: true }
      if (readiness.ready) return json(res, 200, { status: "ready" })
      return json(res, 503, { status: "not ready", failing: readiness.failing })
    }
    if (url.pathname === "/dev/token" && this.options.dev) {
      const refusal = devTokenRefusal(req, this.options.devAnyHost ?? false)
      if (refusal) return json(res, 403, { error: refusal })
      // A misspelt parameter (`?usr=`, `?roles=`) would otherwise be dropped, and the token minted
      // without what its caller asked for.
      const unknown = [...new Set(url.searchParams.keys())].filter((key) => !DEV_TOKEN_KEYS.has(key))
      if (unknown.length > 0)
        return json(res, 400, {
          error: `unknown parameter${unknown.length > 1 ? "s" : ""} ${unknown.map((key) => `?${JSON.stringify(key).slice(1, -1)}=`).join(", ")}: ${DEV_TOKEN_PARAMETERS}`,
        })
      const repeated = [...DEV_TOKEN_KEYS].filter((key) => url.searchParams.getAll(key).length > 1)
      if (repeated.length > 0)
        return json(res, 400, {
          error: `${repeated.map((key) => `?${key}=`).join(", ")} given more than once: ${DEV_TOKEN_PARAMETERS}`,
        })
      const user = url.searchParams.get("user")
      const role = url.searchParams.get("role") || null
      // Any other role would be minted as a plain user token, which its caller would take for what it asked.
      if (role !== null && role !== SERVICE_ROLE)
        return json(res, 400, {
          error: `?role=${JSON.stringify(role)} is not a role dev tokens have: ${DEV_TOKEN_PARAMETERS}`,
        })
      if (role !== SERVICE_ROLE && !isUserId(user))
        return json(res, 400, { error: `?user= must be a valid user id: ${DEV_TOKEN_PARAMETERS}` })
      // The relay refuses user tokens so named (no client poses as an API key's participant): not minted.
      if (role !== SERVICE_ROLE && user!.startsWith(SERVICE_PARTICIPANT_PREFIX))
        return json(res, 400, {
          error: `?user= may not start with "${SERVICE_PARTICIPANT_PREFIX}" (API keys' participants): ${DEV_TOKEN_PARAMETERS}`,
        })
      const subject = role === SERVICE_ROLE ? user || "dev-service" : user!
      this.options.log.info(
        { subject, ...(role ? { role } : {}), dev: true },
        "minted a dev token (insecure)",
      )
      // Profile claims (`name`, `picture`) as an identity provider would put them in a token.
      const claims: { name?: string; picture?: string } = {}
      for (const claim of ["name", "picture"] as const) {
        const value = url.searchParams.get(claim)
        if (value === null || value === "") continue
        const problem = claim === "name" ? checkProfileName(value) : checkProfilePicture(value)
        if (problem) return json(res, 400, { error: `?${claim}=: ${problem}` })
        claims[claim] = value
      }
      const token = await this.options.auth.mintDev(subject, {
        ...(role === SERVICE_ROLE ? { role } : {}),
        ...claims,
      })
      return json(res, 200, { token })
    }
    if (this.options.staticDir && (await serveStatic(this.options.staticDir, req, res))) return
    json(res, 404, { error: "not found" })
  }

  /** The client's address: the peer's, or the one a trusted proxy appended to X-Forwarded-For. */
  private addressOf(req: IncomingMessage): string {
    const peer = req.socket.remoteAddress ?? ""
    if (!this.options.trustProxy) return peer
    const forwarded = req.headers["x-forwarded-for"]
    const list = Array.isArray(forwarded) ? forwarded.join(",") : forwarded
    return list?.split(",").at(-1)?.trim() || peer
  }

  /**
   * An HTTP request with credentials (a user's token, an API key, a service
   * token) from an address that spent its failed verifications is answered
   * 429 before anything is verified, as a WebSocket upgrade is, unless the
   * relay knows its credential already (see {@link knownCredential}); one
   * answered 401 takes one of the address's failures. Otherwise a stream of
   * bad tokens to the extensions' routes (attachments, push, the API, admin)
   * would buy a verification each without end.
   */
  private credentialsAllowed(req: IncomingMessage, res: ServerResponse): boolean {
    const address = this.addressOf(req)
    if (!this.addresses.allows(address) && !this.knownCredential(bearerOf(req))) {
      this.refuseAddress(res, AddressLimit.authFailures, this.addresses, address)
      return false
    }
    // "close" too: a client that aborts before the 401 is flushed had its token verified all the same.
    let counted = false
    const count = () => {
      if (counted || res.statusCode !== 401) return
      counted = true
      this.addresses.failed(address)
    }
    res.once("finish", count)
    res.once("close", count)
    return true
  }

  /**
   * Whether `credential` (a token, or an API key) is one this relay verified
   * before and that still holds, known without a signature check or a storage
   * read. Those are let through an address whose failed verifications are
   * spent: the attacker who spent them shares the address (a NAT, an IPv6
   * /64) with honest users, who were locked out with it. A credential not
   * known yet is still refused there unverified: the limit bounds what
   * verifying junk costs.
   */
  private knownCredential(credential: string | null): boolean {
    if (!credential) return false
    return this.options.auth.verifiedBefore(credential) || (this.options.knownApiKey?.(credential) ?? false)
  }

  /** Answers an HTTP request 429 for `address`'s spent `limit` (its name as the body), and closes. */
  private refuseAddress(
    res: ServerResponse,
    limit: AddressLimit,
    budget: AddressLimiter,
    address: string,
  ): void {
    this.options.metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
    res.writeHead(429, {
      "retry-after": String(budget.retryAfterSeconds(address)),
      "content-type": "text/plain",
      connection: "close",
    })
    res.end(`${limit}\n`)
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const guard = this.pipelineGuards.get(req.socket)
    if (guard) req.socket.off("data", guard)
    this.connections.busy(req.socket)
    if (this.stopping) {
      socket.end("HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\r\n")
      return
    }
    // Before the token is verified (what a bad one costs is paid before its user is known); a token
    // verified before still gets in (see `knownCredential`).
    const address = this.addressOf(req)
    if (!this.addresses.allows(address) && !this.options.auth.verifiedBefore(tokenOf(req))) {
      this.options.metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
      const held = this.options.core.logThrottle.admit(`${AddressLimit.authFailures}\u0000${address}`)
      if (held !== undefined)
        this.options.log.info(
          { address, limit: AddressLimit.authFailures, ...(held > 0 ? { alsoRefused: held } : {}) },
          "refused: per-address limit",
        )
      const body = `${AddressLimit.authFailures}\n`
      socket.end(
        "HTTP/1.1 429 Too Many Requests\r\n" +
          `retry-after: ${this.addresses.retryAfterSeconds(address)}\r\n` +
          `content-type: text/plain\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
      )
      return
    }
    // A user whose connection attempts are spent, known by a token verified lately, is refused before
    // the WebSocket handshake: a reconnect loop's refused attempt costs the relay a quarter as much.
    const known = this.options.auth.knownPrincipal(tokenOf(req))
    const wait = known ? this.options.core.users.connectionAttemptWait(known) : 0
    if (wait > 0) {
      this.options.metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
      const body = `${UserLimit.connectionAttempts}\n`
      socket.end(
        "HTTP/1.1 429 Too Many Requests\r\n" +
          `retry-after: ${Math.max(1, Math.ceil(wait / 1000))}\r\n` +
          `content-type: text/plain\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
      )
      return
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      this.accept(ws, req).catch((error: unknown) => {
        this.options.log.error({ err: error }, "connection setup failed")
        ws.close(CloseCode.Internal.code, CloseCode.Internal.reason)
      })
    })
  }

  private async accept(ws: WebSocket, req: IncomingMessage): Promise<void> {
    const { log, metrics } = this.options
    this.sockets.add(ws)
    // Nothing more is read until the user is known and admitted (a slow key set can take seconds to
    // verify a token): what a stranger can make the relay hold is what arrived with the upgrade.
    ws.pause()
    const liveness = this.keepalive.watch(ws, () => {
      metrics.errors.inc({ code: "PING_TIMEOUT" })
      log.info({ doc: name }, "dropped: no answer to ping")
    })
    // ws refuses a frame above maxPayload from its header, before buffering it, and closes with
    // 1009; Parley's documented code for that is 4413 (shared CloseCode.TooLarge), which the SDK
    // treats as final instead of reconnecting to resend the same frame.
    const wsClose = ws.close.bind(ws)
    ws.close = ((code?: number, reason?: string | Buffer) =>
      code === 1009
        ? wsClose(CloseCode.TooLarge.code, CloseCode.TooLarge.reason)
        : wsClose(code, reason)) as typeof ws.close
    const url = new URL(req.url ?? "/", "http://relay")
    let name: string
    try {
      name = decodeURIComponent(url.pathname.slice(1))
    } catch {
      name = ""
    }
    const wantsParley = url.searchParams.get(PARLEY_PARAM) === PARLEY_PROTOCOL_VERSION
    // Read now: once the socket is gone, it is not.
    const address = this.addressOf(req)
    // Each kind of socket in a function of its own: what its closures keep per socket is only its own.
    // From the moment its user is admitted, the socket counts per user, no longer per address.
    let admitted = false
    const identified = () => {
      admitted = true
      this.connections.identified(req.socket)
    }
    if (url.searchParams.get(MUX_PARAM) === MUX_PROTOCOL_VERSION)
      await this.acceptMux(ws, url, address, liveness, identified)
    else await this.acceptDocument(ws, url, name, wantsParley, address, liveness, identified)
    if (!admitted) this.refusedBeforeAdmission(ws, req.socket)
  }

  /**
   * A WebSocket refused before its user was admitted (a bad token, a spent
   * budget): its close frame is sent, and it is cut after a short grace
   * instead of waiting out `ws`'s 30 s closing handshake, counted meanwhile
   * as waiting (not busy), so that at the cap it makes room. A peer that never
   * answered the close held a connection counted busy for 30 s, and a few
   * hundred such upgrades kept `/healthz` and every newcomer out (an outside
   * probe, within the bad-token budget).
   */
  private refusedBeforeAdmission(ws: WebSocket, socket: Socket): void {
    if (ws.readyState === WebSocket.CLOSED) return
    this.connections.idle(socket)
    const cut = setTimeout(() => ws.terminate(), REFUSED_CLOSE_GRACE_MS)
    cut.unref()
    ws.once("close", () => clearTimeout(cut))
  }

  /** A socket to one document (`/<document>?token=...`), as stock y-websocket clients open it. */
  private async acceptDocument(
    ws: WebSocket,
    url: URL,
    name: string,
    wantsParley: boolean,
    address: string,
    liveness: Liveness | undefined,
    identified: () => void,
  ): Promise<void> {
    const { log, metrics, limits } = this.options
    const limiter = new RateLimiter(limits.maxMessagesPerSecond, limits.messageBurst)
    const awarenessLimiter = new RateLimiter(limits.socketAwarenessPerSecond, limits.socketAwarenessBurst)
    /**
     * Awareness frames sent to this client and not yet matched by one it sent:
     * a stock y-websocket client answers each with an echo, which its user did
     * not cause, so those do not count against the client (capped, so that
     * credit cannot be hoarded into a flood).
     */
    let echoCredit = 0
    /**
     * The bytes of those frames, the most their echoes may bring back free of
     * the user's receive budget: others' presence is what the relay chose to
     * send, and its echo must not pace the reading of this user's sockets
     * (before: a few users' presence, each within its own budget, held a
     * stock client's messages for seconds). Capped like the count.
     */
    let echoBytes = 0
    const early: Uint8Array[] = []
    let earlyBytes = 0
    let connection: Connection | undefined
    let lease: TokenLease | undefined
    let socketClosed = false
    let releaseSocket: (() => void) | undefined
    let dropTimer: NodeJS.Timeout | undefined
    /** The user, once admitted: from then on what the socket sends is paced by their receive budget. */
    let reader: Principal | undefined

    const closeWith = (close: { code: number; reason: string }) => {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
        // Read again, so that the client's closing frame ends the handshake (see `accept`).
        ws.resume()
        // A stock provider stops for good on a 44xx close: a limit is a passing state (see `TryAgainLater`).
        const code =
          !wantsParley && close.code === CloseCode.RateLimited.code
            ? CloseCode.TryAgainLater.code
            : close.code
        ws.close(code, close.reason)
      }
    }
    // A client that does not read never reads the close frame either; its queue is freed soon anyway.
    const closeUnread = (close: { code: number; reason: string }) => {
      connection?.close(close.code, close.reason)
      closeWith(close)
      dropTimer ??= setTimeout(() => ws.terminate(), UNREAD_CLOSE_GRACE_MS)
      dropTimer.unref()
    }
    const refuse = (error: ParleyError) => {
      const close = closeOf(error)
      metrics.errors.inc({ code: error.code })
      this.logRefusal(address, close.code, { doc: name, reason: error.message })
      closeWith(close)
    }

    ws.on("message", (data: RawData, isBinary: boolean) => {
      // Once the relay has closed the socket, what it still reads (a client flooding until it sees the
      // close) is dropped unread: each such frame was counted, logged and closed again.
      if (socketClosed || ws.readyState !== WebSocket.OPEN) return
      if (liveness) liveness.heard = true
      // Awareness frames have a budget of their own (see socketAwarenessPerSecond); types are one byte.
      const awareness = isBinary && firstByte(data) === MessageType.awareness
      // An awareness frame may be the echo a stock client owes for one it was sent: free, up to those sent.
      const echo = awareness && echoCredit > 0
      if (echo) echoCredit--
      else if (!(awareness ? awarenessLimiter : limiter).take()) {
        metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
        log.info({ doc: name }, "closed: too many frames")
        if (connection) connection.close(CloseCode.RateLimited.code, CloseCode.RateLimited.reason)
        else closeWith(CloseCode.RateLimited)
        return
      }
      if (!isBinary) {
        metrics.errors.inc({ code: ErrorCode.MALFORMED_FRAME })
        if (connection) connection.close(CloseCode.MalformedFrame.code, CloseCode.MalformedFrame.reason)
        else closeWith(CloseCode.MalformedFrame)
        return
      }
      const bytes = toBytes(data)
      if (reader) {
        // An echo is charged only for what it brings beyond the presence it answers (a grown state).
        const free = echo ? Math.min(bytes.length, echoBytes) : 0
        echoBytes -= free
        // A free echo still waits while its user is over budget or held back (it adds nothing to the bill).
        this.paceReading(ws, reader, bytes.length - free, free < bytes.length)
      }
      if (connection) deliver(bytes)
      else {
        early.push(bytes)
        earlyBytes += bytes.length
        // Frames wait here while the document loads (before that, nothing is read: see `accept`);
        // beyond this much the socket is not read until it has loaded, rather than closed.
        if (earlyBytes > 4 * limits.maxFrameBytes) ws.pause()
      }
    })
    // Token refreshes are the transport's (it holds the keys); every other frame is the core's.
    const deliver = (bytes: Uint8Array) => {
      if (!lease?.receive(bytes)) connection?.receive(bytes)
    }
    ws.on("close", () => {
      socketClosed = true
      lease?.stop()
      clearTimeout(dropTimer)
      releaseSocket?.()
      this.sockets.delete(ws)
      connection?.close(CloseCode.Normal.code, CloseCode.Normal.reason)
    })
    ws.on("error", (error) => {
      // ws closes the socket itself (e.g. for an oversized frame); this only records why.
      metrics.errors.inc({ code: "code" in error ? String(error.code) : ErrorCode.INTERNAL })
      log.info({ doc: name, err: error }, "websocket error")
    })

    let token: VerifiedToken
    try {
      token = await this.options.auth.verifyToken(url.searchParams.get(TOKEN_PARAM))
    } catch (error) {
      // A key set out of reach is the relay's fault, not the address's.
      if (!unavailable(error)) this.addresses.failed(address)
      return refuse(toParleyError(error, ErrorCode.UNAUTHORIZED))
    }
    const { principal } = token
    try {
      // Charged even when the client has already gone: a loop that closes at once pays like any other.
      this.options.core.users.admitConnection(principal)
    } catch (error) {
      return refuse(toParleyError(error))
    }
    if (socketClosed) return
    if (token.dev) log.info({ doc: name, principal: describePrincipal(principal), dev: true }, "dev token")
    const queue = new SendQueue()
    try {
      releaseSocket = this.options.core.users.addSocket(principal, {
        buffered: () => ws.bufferedAmount,
        initialSyncBytes: () => queue.initialBytes(ws.bufferedAmount),
        closing: () => ws.readyState !== WebSocket.OPEN,
        close: (code, reason) => closeUnread({ code, reason }),
      })
    } catch (error) {
      return refuse(toParleyError(error))
    }
    identified()
    reader = principal
    this.watchUnfinished(ws, principal, (close) => closeUnread(close))
    ws.resume()
    // What arrived with the upgrade counts too.
    this.paceReading(ws, principal, earlyBytes)
    // While writes are held (see `Session.hold`), the send queue is checked once they are written.
    let holds = 0
    let sentWhileHeld = false
    const checkQueue = () => {
      if (queue.countedBytes(ws.bufferedAmount) > limits.maxBufferedBytes) {
        metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
        log.info({ doc: name, buffered: ws.bufferedAmount }, "closed: client reads too slowly")
        closeUnread({ code: CloseCode.RateLimited.code, reason: "Send queue full" })
      } else if (
        ws.bufferedAmount > USER_QUEUE_CHECK_BYTES &&
        this.options.core.users.checkQueued(principal)
      ) {
        metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
        log.info({ doc: name, buffered: ws.bufferedAmount }, "closed: the user's connections read too slowly")
      }
    }
    const session: Session = {
      principal,
      wantsParley,
      send: (frame, options) => {
        // The token is checked here too, not only by its timer (see `TokenLease.expired`).
        if (ws.readyState !== WebSocket.OPEN || lease?.expired()) return
        sendFramed(ws, frame)
        if (liveness) liveness.sentAt = performance.now()
        if (frame[0] === MessageType.awareness && options?.echoOwed !== false) {
          echoCredit = Math.min(MAX_ECHO_CREDIT, echoCredit + 1)
          echoBytes = Math.min(MAX_ECHO_BYTES, echoBytes + frame.length + ECHO_SLACK_BYTES)
        }
        queue.sent(frame.length, options?.initialSync === true)
        if (holds > 0) sentWhileHeld = true
        else checkQueue()
      },
      hold: () => {
        const release = holdWrites(ws)
        holds++
        return () => {
          holds--
          release()
          if (holds === 0 && sentWhileHeld) {
            sentWhileHeld = false
            if (ws.readyState === WebSocket.OPEN) checkQueue()
          }
        }
      },
      close: (code, reason) => closeWith({ code, reason }),
    }
    lease = new TokenLease(this.leases, {
      token,
      wantsParley,
      name,
      send: (frame) => session.send(frame),
      leaseEnded: (code, reason) =>
        connection ? connection.close(code, reason) : closeWith({ code, reason }),
    })
    try {
      connection = await this.options.core.connect(name, session)
    } catch (error) {
      return refuse(error instanceof ParleyError ? error : toParleyError(error))
    }
    if (socketClosed) {
      connection.close(CloseCode.Normal.code, CloseCode.Normal.reason)
      return
    }
    for (const frame of early.splice(0)) deliver(frame)
    if (!this.paced.has(ws)) ws.resume()
    this.keepalive.joined(ws, session.send)
  }

  /**
   * A multiplexed socket (`?mux=1`): the socket's token names its user; each
   * channel is then attached to its document like a socket of its own (see {@link MuxSocket}).
   */
  private async acceptMux(
    ws: WebSocket,
    url: URL,
    address: string,
    liveness: Liveness | undefined,
    identified: () => void,
  ): Promise<void> {
    const { log, metrics, limits } = this.options
    let mux: MuxSocket | undefined
    let socketClosed = false
    let early: { data: RawData; isBinary: boolean }[] | undefined
    let earlyBytes = 0
    const closeWith = (close: { code: number; reason: string }) => {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
        ws.resume()
        ws.close(close.code, close.reason)
      }
    }
    ws.on("message", (data: RawData, isBinary: boolean) => {
      // Once the relay has closed the socket, what it still reads (a client flooding until it sees the
      // close) is dropped unread: each such frame was counted, logged and closed again.
      if (socketClosed || ws.readyState !== WebSocket.OPEN) return
      if (liveness) liveness.heard = true
      if (mux) {
        this.paceReading(ws, reader, sizeOf(data))
        return mux.receive(data, isBinary)
      }
      early ??= []
      early.push({ data, isBinary })
      earlyBytes += toBytes(data).length
      // Frames wait here only while the token is checked; a client may not park more than this.
      if (earlyBytes > 4 * limits.maxFrameBytes) {
        metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
        early = undefined
        closeWith(CloseCode.RateLimited)
      }
    })
    ws.on("close", () => {
      socketClosed = true
      this.sockets.delete(ws)
      mux?.socketClose()
    })
    ws.on("error", (error) => {
      metrics.errors.inc({ code: "code" in error ? String(error.code) : ErrorCode.INTERNAL })
      log.info({ err: error }, "websocket error")
    })
    let token: VerifiedToken
    try {
      token = await this.options.auth.verifyToken(url.searchParams.get(TOKEN_PARAM))
    } catch (error) {
      // A key set out of reach is the relay's fault, not the address's.
      if (!unavailable(error)) this.addresses.failed(address)
      const refusal = toParleyError(error, ErrorCode.UNAUTHORIZED)
      metrics.errors.inc({ code: refusal.code })
      this.logRefusal(address, closeOf(refusal).code, { reason: refusal.message })
      closeWith(closeOf(refusal))
      return
    }
    try {
      this.options.core.users.admitConnection(token.principal)
    } catch (error) {
      const refusal = toParleyError(error)
      metrics.errors.inc({ code: refusal.code })
      closeWith(closeOf(refusal))
      return
    }
    if (socketClosed) return
    identified()
    const reader = token.principal
    this.watchUnfinished(ws, reader, closeWith)
    ws.resume()
    mux = new MuxSocket({
      ws,
      core: this.options.core,
      auth: this.options.auth,
      log,
      metrics,
      limits,
      keepalive: this.keepalive,
      leases: this.leases,
      token,
    })
    mux.start()
    const waiting = early
    early = undefined
    this.paceReading(ws, reader, earlyBytes)
    if (waiting) for (const { data, isBinary } of waiting) mux.receive(data, isBinary)
  }
}

/** The credential of `Authorization: Bearer <credential>`, if the request carries one. */
function bearerOf(req: IncomingMessage): string | null {
  return /^Bearer (\S+)$/i.exec(req.headers.authorization ?? "")?.[1] ?? null
}

/** The `?token=` of an upgrade request, without parsing more of it than that. */
function tokenOf(req: IncomingMessage): string | null {
  const url = req.url ?? ""
  const query = url.indexOf("?")
  return query < 0 ? null : new URLSearchParams(url.slice(query + 1)).get(TOKEN_PARAM)
}

/** What `/dev/token` takes, for its refusals. */
/** The query parameters `/dev/token` takes (see {@link DEV_TOKEN_PARAMETERS}); any other is refused. */
const DEV_TOKEN_KEYS: ReadonlySet<string> = new Set(["user", "role", "name", "picture"])

const DEV_TOKEN_PARAMETERS = `/dev/token takes ?user=NAME (a user's token) or ?role=${SERVICE_ROLE} (a service's, ?user= optional), and ?name= and ?picture= (profile claims)`

/**
 * Why `/dev/token` must not answer this request, if it must not: it answers
 * pages of the relay's own origin only (no CORS header; a request naming
 * another `Origin` is refused), and only under a loopback `Host` unless
 * `--force-dev`, so that a DNS-rebinding page cannot pass for that origin.
 */
function devTokenRefusal(req: IncomingMessage, anyHost: boolean): string | undefined {
  const host = hostOf(`http://${req.headers.host ?? ""}`)
  const origin = req.headers.origin
  if (origin !== undefined && hostOf(origin) !== host)
    return "dev tokens are for pages of this relay's own origin"
  if (anyHost) return undefined
  const hostname = host?.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1")
  return hostname === "localhost" || hostname === "::1" || /^127(\.\d{1,3}){3}$/.test(hostname ?? "")
    ? undefined
    : "dev tokens are served to loopback hosts only (see --force-dev)"
}

/** The `host[:port]` of a URL, undefined when it is not one (such as the origin "null"). */
function hostOf(url: string): string | undefined {
  try {
    return new URL(url).host
  } catch {
    return undefined
  }
}
