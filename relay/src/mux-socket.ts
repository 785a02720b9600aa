import {
  CloseCode,
  ErrorCode,
  encodeChannelClose,
  encodeChannelFrame,
  MessageType,
  ParleyError,
  readMuxFrame,
  toParleyError,
} from "@parley/shared"
import { type RawData, WebSocket } from "ws"
import { type Authenticator, samePrincipal, type VerifiedToken } from "./auth.js"
import type { Connection, Session } from "./connection.js"
import type { Due } from "./deadlines.js"
import { closeOf } from "./errors.js"
import { holdWrites } from "./held-writes.js"
import type { Keepalive } from "./keepalive.js"
import type { Logger } from "./log.js"
import type { RelayMetrics } from "./metrics.js"
import { describePrincipal, type Principal } from "./principal.js"
import { RateLimiter } from "./rate-limit.js"
import { toBytes } from "./raw-data.js"
import type { RelayCore } from "./relay-core.js"
import { SendQueue } from "./send-queue.js"
import { type LeaseContext, type LeaseHolder, TokenLease } from "./token-lease.js"
import type { UserSocket } from "./user-limits.js"
import { framedWithPrefix, sendFramed } from "./ws-frame.js"

/**
 * Most channels one multiplexed socket may have open at once. The documents a
 * user may have open (`--max-documents-per-user`) bound it first by default;
 * this bounds what one socket's bookkeeping can cost whatever that is set to.
 */
export const MAX_CHANNELS_PER_SOCKET = 4096
/** Most bytes of a document name or token in an open frame. */
const MAX_OPEN_FIELD_BYTES = 16 * 1024
/** A socket's send queue above which the user's queues across sockets are added up (cheap below). */
const USER_QUEUE_CHECK_BYTES = 16 * 1024
/** Most unanswered awareness frames a client may echo without counting (see `Channel.echoCredit`). */
const MAX_ECHO_CREDIT = 256
/** Time a client closed for not reading gets to read its close frame before its socket is dropped. */
const UNREAD_CLOSE_GRACE_MS = 5000
/**
 * A socket past its credentials with a channel still being opened, or whose last channel just closed, is
 * judged again this much later.
 */
const OPENING_RECHECK_MS = 1000

/** The transport's limits a multiplexed socket applies (its `TransportLimits`; not imported, to keep the import graph acyclic). */
export interface MuxLimits {
  readonly maxFrameBytes: number
  readonly maxBufferedBytes: number
  readonly maxMessagesPerSecond: number
  readonly messageBurst: number
  readonly socketAwarenessPerSecond: number
  readonly socketAwarenessBurst: number
  readonly muxIdleMs: number
}

/** What a multiplexed socket needs of the transport. */
export interface MuxSocketOptions {
  readonly ws: WebSocket
  readonly core: RelayCore
  readonly auth: Authenticator
  readonly log: Logger
  readonly metrics: RelayMetrics
  readonly limits: MuxLimits
  readonly keepalive: Keepalive
  /** What the channels' token leases share (the transport's one expiry timer among it). */
  readonly leases: LeaseContext
  /** The socket's own token (from its URL), verified. */
  readonly token: VerifiedToken
}

/**
 * One document attached over a multiplexed socket: everything a socket of its
 * own has (a token lease, frame budgets, a {@link Session}), without the
 * socket. It is its connection's session and its lease's holder itself, so
 * that an idle channel is a few small objects and no closures.
 */
class MuxChannel implements Session, LeaseHolder {
  readonly wantsParley = true
  connection: Connection | undefined
  lease: TokenLease | undefined
  /** Frames that arrived while the channel's token was checked and its document loaded (made when one does). */
  early: Uint8Array[] | undefined
  earlyBytes = 0
  readonly limiter: RateLimiter
  readonly awarenessLimiter: RateLimiter
  /** Awareness frames sent and not yet matched by one received (a stock-style echo does not count). */
  echoCredit = 0
  closed = false
  /** The channel's prefix to each frame (`encodeChannelFrame`'s bytes before the frame), made on the first send. */
  private prefix: Uint8Array | undefined

  constructor(
    private readonly socket: MuxSocket,
    readonly number: number,
    readonly name: string,
    /** The socket's token until the channel's own (when it has one) is verified. */
    public token: VerifiedToken,
    limits: MuxLimits,
  ) {
    this.limiter = new RateLimiter(limits.maxMessagesPerSecond, limits.messageBurst)
    this.awarenessLimiter = new RateLimiter(limits.socketAwarenessPerSecond, limits.socketAwarenessBurst)
  }

  get principal(): Principal {
    return this.token.principal
  }

  send(frame: Uint8Array, options?: { readonly initialSync?: boolean }): void {
    // The token is checked here too, not only by its timer (see `TokenLease.expired`).
    if (this.closed || this.lease?.expired()) return
    if (frame[0] === MessageType.awareness) this.echoCredit = Math.min(MAX_ECHO_CREDIT, this.echoCredit + 1)
    this.prefix ??= encodeChannelFrame(this.number, new Uint8Array(0))
    // `encodeChannelFrame`'s bytes, copied once into a buffer with the WebSocket header in front.
    this.socket.sendRaw(framedWithPrefix(this.prefix, frame), options?.initialSync === true)
  }

  hold(): () => void {
    return this.socket.holdRaw()
  }

  close(code: number, reason: string): void {
    this.socket.closeChannel(this.number, { code, reason }, true)
  }

  leaseEnded(code: number, reason: string): void {
    if (this.connection) this.connection.close(code, reason)
    else this.close(code, reason)
  }
}

/**
 * A WebSocket carrying many documents (see PROTOCOL.md, "Multiplexed sockets"):
 * each channel is attached to its document exactly as a socket of its own
 * would be — its own token checked (for the socket's user), access decided per
 * document by the core (pending access included), the per-user document limit
 * counted per document — so a channel gets no more than that socket would.
 * Per-socket limits (send queue, the user's socket count) are the socket's;
 * frame budgets are per channel, as they were per socket.
 */
export class MuxSocket implements UserSocket, Due {
  private readonly channels = new Map<number, MuxChannel>()
  /** Channel numbers seen; a number is never reused on one socket (late frames of a closed one are dropped). */
  private highest = -1
  private readonly queue = new SendQueue()
  private readonly controlLimiter: RateLimiter
  private releaseSocket: (() => void) | undefined
  private dropTimer: ReturnType<typeof setTimeout> | undefined
  private idleTimer: ReturnType<typeof setTimeout> | undefined
  private socketClosed = false

  constructor(private readonly options: MuxSocketOptions) {
    const { limits } = options
    // Opening the documents of a big inbox at once is one burst of opens, each counted per user too.
    this.controlLimiter = new RateLimiter(
      limits.maxMessagesPerSecond,
      Math.max(limits.messageBurst, MAX_CHANNELS_PER_SOCKET / 4),
    )
  }

  /** Starts serving: counts the socket for its user (may refuse it) and reads frames. */
  start(): void {
    const { ws, core, token } = this.options
    try {
      this.releaseSocket = core.users.addSocket(token.principal, this)
    } catch (error) {
      const refusal = toParleyError(error)
      this.options.metrics.errors.inc({ code: refusal.code })
      this.closeSocket(closeOf(refusal))
      return
    }
    this.options.keepalive.joined(ws, (frame) => this.sendRaw(frame, false))
    if (token.expiresAt !== undefined) this.options.leases.deadlines.set(this, token.expiresAt)
    this.idle()
  }

  /**
   * Closes the socket once it has held no channel for `muxIdleMs`: it counts
   * toward its user's sockets and the relay's connections, and sockets opened
   * and left without a channel (no client needs one: the SDK closes its socket
   * with its last channel) held a relay's every slot for as long as their
   * tokens lived (an outside probe).
   */
  private idle(): void {
    clearTimeout(this.idleTimer)
    this.idleTimer = undefined
    if (this.socketClosed || this.channels.size > 0) return
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined
      if (this.socketClosed || this.channels.size > 0) return
      this.options.log.info(
        { principal: describePrincipal(this.options.token.principal) },
        "closed: no channel",
      )
      this.closeSocket(CloseCode.NoChannel)
    }, this.options.limits.muxIdleMs)
    this.idleTimer.unref()
  }

  /**
   * When the socket's credentials run out: the latest of its own token's
   * expiry and its channels' leases (a channel's token, refreshed over it,
   * keeps the socket it rides on); undefined when one of them never expires.
   */
  private credentialsUntil(): number | undefined {
    let until = this.options.token.expiresAt
    for (const channel of this.channels.values()) {
      if (until === undefined) break
      const end = channel.lease?.until ?? 0
      if (end === undefined) return undefined
      until = Math.max(until, end)
    }
    return until
  }

  /**
   * @internal (see {@link Deadlines}) The socket's credentials may have run
   * out: without a channel whose lease is live, it closes with 4401. A
   * socket counts toward its user's sockets; kept past its token without
   * channels (which the channels' leases alone never closed), sockets opened
   * with a leaked token held the user's every slot for good.
   */
  due(): void {
    if (this.socketClosed || this.closing()) return
    const until = this.credentialsUntil()
    if (until === undefined) return
    const now = Date.now()
    const { deadlines } = this.options.leases
    if (until > now) {
      deadlines.set(this, until)
      return
    }
    // A channel whose own token is still being checked may yet bring a live lease.
    if ([...this.channels.values()].some((channel) => channel.lease === undefined)) {
      deadlines.set(this, now + OPENING_RECHECK_MS)
      return
    }
    this.options.metrics.tokens.inc({ event: "expired" })
    this.options.log.info(
      { principal: describePrincipal(this.options.token.principal) },
      "closed: token expired",
    )
    this.closeUnread(CloseCode.TokenExpired)
  }

  /** @internal Bytes queued to the client and not yet read (see {@link UserSocket}). */
  buffered(): number {
    return this.options.ws.bufferedAmount
  }

  /** @internal Of those, the bytes of its unread initial sync. */
  initialSyncBytes(): number {
    return this.queue.initialBytes(this.options.ws.bufferedAmount)
  }

  /** @internal True once the socket is being closed. */
  closing(): boolean {
    return this.options.ws.readyState !== WebSocket.OPEN
  }

  /** @internal Closes the socket for the user's limits (its client may not be reading). */
  close(code: number, reason: string): void {
    this.closeUnread({ code, reason })
  }

  /** A frame from the client. */
  receive(data: RawData, isBinary: boolean): void {
    if (this.socketClosed) return
    if (!isBinary) {
      this.malformed()
      return
    }
    const bytes = toBytes(data)
    let frame: ReturnType<typeof readMuxFrame>
    try {
      frame = readMuxFrame(bytes)
    } catch {
      this.malformed()
      return
    }
    if (frame.type === "channel") {
      const channel = this.channels.get(frame.channel)
      if (channel) this.channelFrame(frame.channel, channel, frame.frame)
      else if (frame.channel > this.highest) this.malformed()
      return
    }
    if (!this.controlLimiter.take()) {
      this.options.metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
      this.options.log.info({}, "closed: too many channel opens")
      this.closeSocket(CloseCode.RateLimited)
      return
    }
    if (frame.type === "close") {
      // A channel closed already is dropped quietly (both sides may close it at once); one never opened is
      // a client out of step, like a frame for it.
      if (frame.channel > this.highest) this.malformed()
      else this.closeChannel(frame.channel, CloseCode.Normal, false)
      return
    }
    if (frame.channel <= this.highest) {
      this.malformed()
      return
    }
    if (this.channels.size >= MAX_CHANNELS_PER_SOCKET) {
      this.highest = frame.channel
      this.options.metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
      this.sendRaw(encodeChannelClose(frame.channel, CloseCode.RateLimited.code, "Too many channels"), false)
      return
    }
    if (
      Buffer.byteLength(frame.name, "utf8") > MAX_OPEN_FIELD_BYTES ||
      Buffer.byteLength(frame.token, "utf8") > MAX_OPEN_FIELD_BYTES
    ) {
      this.malformed()
      return
    }
    this.highest = frame.channel
    void this.open(frame.channel, frame.name, frame.token).catch((error: unknown) => {
      this.options.log.error({ err: error, doc: frame.name }, "channel setup failed")
      this.closeChannel(frame.channel, CloseCode.Internal, true)
    })
  }

  /** The WebSocket closed: every channel's connection goes. */
  socketClose(): void {
    this.socketClosed = true
    clearTimeout(this.dropTimer)
    clearTimeout(this.idleTimer)
    this.options.leases.deadlines.clear(this)
    this.releaseSocket?.()
    for (const number of [...this.channels.keys()]) this.closeChannel(number, CloseCode.Normal, false)
  }

  private async open(number: number, name: string, rawToken: string): Promise<void> {
    const { auth, core, limits } = this.options
    const channel = new MuxChannel(this, number, name, this.options.token, limits)
    this.channels.set(number, channel)
    this.idle()
    try {
      // A reconnect loop over channels pays like one over sockets, and pays before its token is
      // verified (a verification costs more than the frame that asks for it): the channel can only
      // be the socket's user's.
      core.users.admitConnection(this.options.token.principal)
    } catch (error) {
      this.refuse(number, toParleyError(error))
      return
    }
    if (rawToken !== "") {
      let token: VerifiedToken
      try {
        token = await auth.verifyToken(rawToken)
      } catch (error) {
        this.refuse(number, toParleyError(error, ErrorCode.UNAUTHORIZED))
        return
      }
      // One socket, one user: a channel cannot speak for anyone else.
      if (!samePrincipal(token.principal, this.options.token.principal))
        return this.refuse(
          number,
          new ParleyError(ErrorCode.UNAUTHORIZED, "the channel's token is for another user"),
        )
      channel.token = token
    }
    if (channel.closed) return
    // The socket's token ("") may have expired since the socket opened (the socket itself stays for
    // channels with tokens of their own): an expired token attaches nothing, not even until its
    // lease's deadline fires.
    const expiresAt = channel.token.expiresAt
    if (expiresAt !== undefined && expiresAt <= Date.now()) {
      this.options.metrics.errors.inc({ code: ErrorCode.UNAUTHORIZED })
      this.closeChannel(number, CloseCode.TokenExpired, true)
      return
    }
    channel.lease = new TokenLease(this.options.leases, channel)
    let connection: Connection
    try {
      connection = await core.connect(name, channel)
    } catch (error) {
      this.refuse(number, toParleyError(error))
      return
    }
    if (channel.closed) {
      connection.close(CloseCode.Normal.code, CloseCode.Normal.reason)
      return
    }
    channel.connection = connection
    const early = channel.early
    channel.early = undefined
    channel.earlyBytes = 0
    if (early) for (const frame of early) this.deliver(channel, frame)
  }

  private channelFrame(number: number, channel: MuxChannel, frame: Uint8Array): void {
    const { metrics, log, limits } = this.options
    // Awareness frames have a budget of their own, and echoes of those sent are free (as per socket).
    const awareness = frame[0] === MessageType.awareness
    const echo = awareness && channel.echoCredit > 0
    if (echo) channel.echoCredit--
    else if (!(awareness ? channel.awarenessLimiter : channel.limiter).take()) {
      metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
      log.info({ doc: channel.name }, "channel closed: too many frames")
      this.closeChannel(number, CloseCode.RateLimited, true)
      return
    }
    if (channel.connection) {
      this.deliver(channel, frame)
      return
    }
    channel.early ??= []
    channel.early.push(frame)
    channel.earlyBytes += frame.length
    // Frames wait here only while the token is checked and the document loaded.
    if (channel.earlyBytes > 4 * limits.maxFrameBytes) {
      metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
      this.closeChannel(number, CloseCode.RateLimited, true)
    }
  }

  /** Token refreshes are the channel's lease's; every other frame is the core's. */
  private deliver(channel: MuxChannel, frame: Uint8Array): void {
    if (!channel.lease?.receive(frame)) channel.connection?.receive(frame)
  }

  private refuse(number: number, error: ParleyError): void {
    const close = closeOf(error)
    this.options.metrics.errors.inc({ code: error.code })
    const held = this.options.core.logThrottle.admit(
      `channel ${close.code}\u0000${describePrincipal(this.options.token.principal)}`,
    )
    if (held !== undefined)
      this.options.log.info(
        {
          doc: this.channels.get(number)?.name,
          code: close.code,
          reason: error.message,
          ...(held > 0 ? { alsoRefused: held } : {}),
        },
        "channel refused",
      )
    this.closeChannel(number, close, true)
  }

  /**
   * @internal Closes channel `number` (its connection detaches from its
   * document); tells the client unless it closed it itself.
   */
  closeChannel(
    number: number,
    close: { readonly code: number; readonly reason: string },
    tell: boolean,
  ): void {
    const channel = this.channels.get(number)
    if (!channel || channel.closed) return
    channel.closed = true
    this.channels.delete(number)
    channel.lease?.stop()
    channel.early = undefined
    channel.connection?.close(close.code, close.reason)
    if (tell) this.sendRaw(encodeChannelClose(number, close.code, close.reason), false)
    // Its lease may have been what kept the socket: judged again soon, not at that lease's old expiry;
    // not at once, as the client's next open (with a fresh token) may be on its way.
    if (this.channels.size === 0 && !this.socketClosed) {
      this.options.leases.deadlines.set(this, Date.now() + OPENING_RECHECK_MS)
      this.idle()
    }
  }

  /** Writes held on the socket (see `Session.hold`), and whether frames were sent meanwhile. */
  private holds = 0
  private sentWhileHeld = false

  /** @internal Holds the socket's writes until the returned function is called (see `Session.hold`). */
  holdRaw(): () => void {
    const release = holdWrites(this.options.ws)
    this.holds++
    return () => {
      this.holds--
      release()
      if (this.holds === 0 && this.sentWhileHeld) {
        this.sentWhileHeld = false
        if (this.options.ws.readyState === WebSocket.OPEN) this.checkQueue()
      }
    }
  }

  /** @internal Sends `frame` as it is on the socket, minding the send queue's limits. */
  sendRaw(frame: Uint8Array, initialSync: boolean): void {
    const { ws } = this.options
    if (ws.readyState !== WebSocket.OPEN) return
    sendFramed(ws, frame)
    this.queue.sent(frame.length, initialSync)
    if (this.holds > 0) this.sentWhileHeld = true
    else this.checkQueue()
  }

  private checkQueue(): void {
    const { ws, limits, metrics, log, core, token } = this.options
    if (this.queue.countedBytes(ws.bufferedAmount) > limits.maxBufferedBytes) {
      metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
      log.info({ buffered: ws.bufferedAmount }, "closed: client reads too slowly")
      this.closeUnread({ code: CloseCode.RateLimited.code, reason: "Send queue full" })
    } else if (ws.bufferedAmount > USER_QUEUE_CHECK_BYTES && core.users.checkQueued(token.principal)) {
      metrics.errors.inc({ code: ErrorCode.RATE_LIMITED })
      log.info({ buffered: ws.bufferedAmount }, "closed: the user's connections read too slowly")
    }
  }

  private malformed(): void {
    this.options.metrics.errors.inc({ code: ErrorCode.MALFORMED_FRAME })
    this.closeSocket(CloseCode.MalformedFrame)
  }

  private closeSocket(close: { readonly code: number; readonly reason: string }): void {
    const { ws } = this.options
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING)
      ws.close(close.code, close.reason)
  }

  /** A client that does not read never reads the close frame either; its queue is freed soon anyway. */
  private closeUnread(close: { readonly code: number; readonly reason: string }): void {
    for (const number of [...this.channels.keys()]) this.closeChannel(number, close, false)
    this.closeSocket(close)
    this.dropTimer ??= setTimeout(() => this.options.ws.terminate(), UNREAD_CLOSE_GRACE_MS)
    this.dropTimer.unref()
  }
}
