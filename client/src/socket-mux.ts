import {
  CloseCode,
  encodeChannelClose,
  encodeChannelFrame,
  encodeChannelOpen,
  MessageType,
  MUX_PARAM,
  MUX_PROTOCOL_VERSION,
  readMuxFrame,
  TOKEN_PARAM,
} from "@parley/shared"
import type { DocumentSocket, SocketOpener, WebSocketConstructor } from "./provider/document-socket.js"

/** The part of the browser's WebSocket API the SDK uses of a real socket: a document socket's, with its binary type. */
type RealSocket = DocumentSocket & { binaryType: string }

const CONNECTING = 0
const OPEN = 1
const CLOSED = 3
/** Close code of a socket that dropped without a close frame (the browser's 1006). */
const ABNORMAL = 1006

/**
 * One document's channel of a {@link SocketMux}, with the browser WebSocket's
 * API so that a document connection opens, reads, writes and closes it as it
 * would its own socket. Opening it sends an open frame; closing it a close frame.
 */
class ChannelSocket implements DocumentSocket {
  binaryType = "arraybuffer"
  readyState: number = CONNECTING
  onopen: ((event: unknown) => void) | null = null
  onmessage: ((event: { data: unknown }) => void) | null = null
  onclose: ((event: { code: number; reason: string }) => void) | null = null
  onerror: ((event: unknown) => void) | null = null

  constructor(
    private readonly mux: SocketMux,
    readonly channel: number,
    readonly name: string,
    readonly token: string,
  ) {}

  send(frame: Uint8Array): void {
    if (this.readyState === OPEN) this.mux.sendOn(this.channel, frame)
  }

  close(): void {
    if (this.readyState === CLOSED) return
    this.mux.detach(this, true)
    this.ended({ code: CloseCode.Normal.code, reason: CloseCode.Normal.reason })
  }

  /** The channel is usable (its open frame went out on an open socket). */
  opened(): void {
    if (this.readyState !== CONNECTING) return
    this.readyState = OPEN
    this.onopen?.({})
  }

  /** A document frame for this channel. */
  received(frame: Uint8Array): void {
    if (this.readyState !== OPEN) return
    // A copy: the reader keeps what it is given, and the socket's buffer is shared by every channel.
    this.onmessage?.({ data: frame.slice().buffer })
  }

  /** The channel (or the whole socket) closed, with this code and reason. */
  ended(event: { code: number; reason: string }): void {
    if (this.readyState === CLOSED) return
    this.readyState = CLOSED
    const onclose = this.onclose
    // Like a socket's, the close event comes later than the call that caused it.
    queueMicrotask(() => onclose?.(event))
  }
}

/**
 * One WebSocket to the relay carrying every document of a client, its inbox
 * included (see PROTOCOL.md, "Multiplexed sockets"). Each document connection
 * gets a channel from {@link open} in place of a socket of its own: opening one
 * sends an open frame (with the token it would have put in its URL), so
 * reconnect, token refresh and close codes work per document as on a socket
 * of its own. The socket opens with the first channel and closes with the last.
 */
export class SocketMux {
  private readonly base: string
  private socket: RealSocket | undefined
  private readonly channels = new Map<number, ChannelSocket>()
  private nextChannel = 0
  private socketToken = ""
  private idleTimer: ReturnType<typeof setTimeout> | undefined
  /** Real sockets opened so far (for tests and diagnostics). */
  socketsOpened = 0

  /** Opens a channel for document `name` on behalf of `token`'s user (a {@link SocketOpener}). */
  readonly open: SocketOpener = (name, token) => this.attach(name, token)

  constructor(
    url: string,
    private readonly WebSocket: WebSocketConstructor,
  ) {
    this.base = url.replace(/\/+$/, "")
  }

  /** Channels open or opening. */
  get channelCount(): number {
    return this.channels.size
  }

  /** True while the real socket exists (connecting or open). */
  get connected(): boolean {
    return this.socket !== undefined
  }

  /** Closes the socket and every channel (the client is destroyed). */
  destroy(): void {
    clearTimeout(this.idleTimer)
    this.socketClosed({ code: CloseCode.Normal.code, reason: CloseCode.Normal.reason })
  }

  private attach(name: string, token: string): ChannelSocket {
    const channel = new ChannelSocket(this, this.nextChannel++, name, token)
    this.channels.set(channel.channel, channel)
    clearTimeout(this.idleTimer)
    this.idleTimer = undefined
    if (!this.socket) this.connect(channel.token)
    else if (this.socket.readyState === OPEN) queueMicrotask(() => this.openChannel(channel))
    return channel
  }

  /** A channel is closed by its document connection; tells the relay when `tell`. */
  detach(channel: ChannelSocket, tell: boolean): void {
    if (this.channels.get(channel.channel) !== channel) return
    this.channels.delete(channel.channel)
    if (tell && channel.readyState === OPEN && this.socket?.readyState === OPEN)
      this.socket.send(encodeChannelClose(channel.channel, CloseCode.Normal.code, CloseCode.Normal.reason))
    if (this.channels.size === 0 && this.socket && this.idleTimer === undefined) {
      // The last channel closed: the socket goes too, unless another channel comes this turn.
      this.idleTimer = setTimeout(() => {
        this.idleTimer = undefined
        if (this.channels.size === 0) this.socketClosed({ code: CloseCode.Normal.code, reason: "" })
      }, 0)
    }
  }

  /** Sends a document frame on channel `channel`. */
  sendOn(channel: number, frame: Uint8Array): void {
    if (this.socket?.readyState === OPEN) this.socket.send(encodeChannelFrame(channel, frame))
  }

  private connect(token: string): void {
    const params = new URLSearchParams({ [MUX_PARAM]: MUX_PROTOCOL_VERSION, [TOKEN_PARAM]: token })
    const socket = new this.WebSocket(`${this.base}/?${params}`) as RealSocket
    socket.binaryType = "arraybuffer"
    this.socket = socket
    this.socketToken = token
    this.socketsOpened++
    socket.onopen = () => {
      if (this.socket !== socket) return
      for (const channel of [...this.channels.values()]) this.openChannel(channel)
    }
    socket.onmessage = (event) => {
      if (this.socket !== socket) return
      this.received(new Uint8Array(event.data as ArrayBuffer))
    }
    socket.onclose = (event) => {
      if (this.socket === socket) this.socketClosed({ code: event.code, reason: event.reason })
    }
    // A failed connect is followed by its close event, which says all there is to say.
    socket.onerror = () => {}
  }

  private openChannel(channel: ChannelSocket): void {
    if (this.channels.get(channel.channel) !== channel || channel.readyState !== CONNECTING) return
    if (this.socket?.readyState !== OPEN) return
    // The socket's own token need not travel twice.
    const token = channel.token === this.socketToken ? "" : channel.token
    this.socket.send(encodeChannelOpen(channel.channel, channel.name, token))
    channel.opened()
  }

  private received(bytes: Uint8Array): void {
    // The relay's keepalive is one bare frame per socket: every channel is alive.
    if (bytes[0] === MessageType.awareness) {
      for (const channel of this.channels.values()) channel.received(bytes)
      return
    }
    let frame: ReturnType<typeof readMuxFrame>
    try {
      frame = readMuxFrame(bytes)
    } catch {
      return
    }
    const channel = this.channels.get(frame.channel)
    if (!channel) return
    if (frame.type === "channel") channel.received(frame.frame)
    else if (frame.type === "close") {
      this.detach(channel, false)
      channel.ended({ code: frame.code, reason: frame.reason })
    }
  }

  /** The real socket is gone: so is every channel, with its close code. */
  private socketClosed(event: { code: number; reason: string }): void {
    const socket = this.socket
    this.socket = undefined
    if (socket) {
      socket.onopen = null
      socket.onmessage = null
      socket.onclose = null
      if (socket.readyState === OPEN || socket.readyState === CONNECTING) socket.close(CloseCode.Normal.code)
    }
    const code = event.code === CloseCode.Normal.code && this.channels.size > 0 ? ABNORMAL : event.code
    for (const channel of [...this.channels.values()]) {
      this.channels.delete(channel.channel)
      channel.ended({ code, reason: event.reason })
    }
  }
}
