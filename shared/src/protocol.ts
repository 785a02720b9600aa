import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import { ErrorCode, isErrorCode, ParleyError } from "./errors.js"

/**
 * Message types on the wire. 0–3 are the standard y-websocket protocol, so a
 * stock `WebsocketProvider` works unchanged; {@link MessageType.parley} carries
 * Parley's extensions and is only sent to connections that ask for it with the
 * {@link PARLEY_PARAM} query parameter. See `shared/PROTOCOL.md`.
 */
export const MessageType = {
  sync: 0,
  awareness: 1,
  auth: 2,
  queryAwareness: 3,
  parley: 100,
} as const

/** Subtypes of a {@link MessageType.parley} message. */
export const ParleyMessage = {
  /** Relay → client: everything up to this state vector is durably saved. */
  saved: 0,
  /** Relay → client: a typed error about the connection's last frame (not closing it). */
  error: 1,
  /**
   * Client → relay: a fresh token for the open connection, for the same user
   * (and role); the connection then lasts until the new token expires.
   */
  token: 2,
  /** Relay → client: the refreshed token was accepted; the connection lasts until its expiry. */
  tokenAccepted: 3,
  /** Client → relay: send me sealed history segment N of this conversation. */
  historyRequest: 4,
  /** Relay → client: the answer to a {@link ParleyMessage.historyRequest}: the segment, or why not. */
  historyPage: 5,
  /** Client → relay: send me directory page N of this conversation's folded history. */
  directoryRequest: 6,
  /** Relay → client: the answer to a {@link ParleyMessage.directoryRequest}: the page, or why not. */
  directoryPage: 7,
  /** Client → relay: send me epoch record N of this conversation (see `EpochRecord`). */
  epochRequest: 8,
  /** Relay → client: the answer to a {@link ParleyMessage.epochRequest}: the record, or why not. */
  epochRecord: 9,
  /**
   * Client → relay: the state vector of the replica that made the update
   * following on this connection: what it had seen when it made it. Sent
   * before an update that carries the replica's whole delete set (a resend,
   * the parts of an initial sync), so that the relay can tell a removal the
   * replica re-sends from one it makes of a record it never saw replaced
   * (rule `concurrent-change`).
   */
  view: 10,
} as const

/** Subtypes of a {@link MessageType.sync} message (y-protocols' `messageYjsSyncStep1` …). */
export const SyncMessage = {
  /** A state vector: "send me what I lack". */
  step1: 0,
  /** An update answering a step 1: what the asker lacks. */
  step2: 1,
  /** An update: a change to apply. */
  update: 2,
} as const

/** Subtypes of a {@link MessageType.auth} message (y-protocols' `messagePermissionDenied`). */
export const AuthMessage = {
  permissionDenied: 0,
} as const

/** The state vector of a document with nothing in it (Yjs `encodeStateVector` of an empty document). */
export const EMPTY_STATE_VECTOR: Uint8Array = Uint8Array.of(0)
/** An update that holds nothing: no structs, no deletions (Yjs `encodeStateAsUpdate` of an empty document). */
export const EMPTY_UPDATE: Uint8Array = Uint8Array.of(0, 0)

/** Query parameter by which a client asks for Parley's extension messages. */
export const PARLEY_PARAM = "parley"
/** Version of the extension a client asks for (value of {@link PARLEY_PARAM}). */
export const PARLEY_PROTOCOL_VERSION = "1"
/** Query parameter carrying the token. */
export const TOKEN_PARAM = "token"

/** A typed error sent to a client. */
export interface WireError {
  readonly code: ErrorCode
  readonly message: string
  /** The document rule that refused the frame, if one did. */
  readonly rule?: string
}

/** Decoded Parley extension message. */
export type ParleyFrame =
  | { readonly type: "saved"; readonly stateVector: Uint8Array }
  | { readonly type: "error"; readonly error: WireError }
  | { readonly type: "token"; readonly token: string }
  /** `expiresAt`: the accepted token's `exp` (seconds since the epoch), 0 when it has none. */
  | { readonly type: "tokenAccepted"; readonly expiresAt: number }
  | { readonly type: "historyRequest"; readonly request: number; readonly segment: number }
  | ({ readonly type: "historyPage" } & HistoryPage)
  /** `page` is the directory page's number. */
  | { readonly type: "directoryRequest"; readonly request: number; readonly page: number }
  /** Laid out as a history page; `segment` is the directory page's number. */
  | ({ readonly type: "directoryPage" } & HistoryPage)
  /** `record` is the epoch record's number. */
  | { readonly type: "epochRequest"; readonly request: number; readonly record: number }
  /** Laid out as a history page; `segment` is the epoch record's number. */
  | ({ readonly type: "epochRecord" } & HistoryPage)
  | { readonly type: "view"; readonly stateVector: Uint8Array }

/**
 * A relay's answer to a history request: the segment's bytes and hash, or
 * the error code that kept it from being served (then no bytes).
 */
export type HistoryPage =
  | {
      readonly request: number
      readonly segment: number
      readonly hash: string
      readonly bytes: Uint8Array
      readonly error?: undefined
    }
  | { readonly request: number; readonly segment: number; readonly error: ErrorCode }

/** Encodes a request for sealed segment `segment` (client → relay); `request` is echoed in the answer. */
export function encodeHistoryRequest(request: number, segment: number): Uint8Array {
  return encodeRequest(ParleyMessage.historyRequest, request, segment)
}

/** Encodes a request for directory page `page` of the folded history (client → relay). */
export function encodeDirectoryRequest(request: number, page: number): Uint8Array {
  return encodeRequest(ParleyMessage.directoryRequest, request, page)
}

/** Encodes a request for epoch record `record` of the conversation (client → relay). */
export function encodeEpochRequest(request: number, record: number): Uint8Array {
  return encodeRequest(ParleyMessage.epochRequest, request, record)
}

/** A request of the history kind: subtype, the request's number (echoed), and what is asked (a number). */
function encodeRequest(subtype: number, request: number, asked: number): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.parley)
  encoding.writeVarUint(encoder, subtype)
  encoding.writeVarUint(encoder, request)
  encoding.writeVarUint(encoder, asked)
  return encoding.toUint8Array(encoder)
}

/**
 * Encodes the relay's answer to an epoch request: the same layout as a
 * history page, its `segment` field holding the epoch record's number.
 */
export function encodeEpochRecordFrame(page: HistoryPage): Uint8Array {
  return encodePage(ParleyMessage.epochRecord, page)
}

/**
 * Encodes the relay's answer to a directory request: the same layout as a
 * history page, its `segment` field holding the directory page's number.
 */
export function encodeDirectoryPageFrame(page: HistoryPage): Uint8Array {
  return encodePage(ParleyMessage.directoryPage, page)
}

/** Encodes the relay's answer to a history request. */
export function encodeHistoryPage(page: HistoryPage): Uint8Array {
  return encodePage(ParleyMessage.historyPage, page)
}

function encodePage(subtype: number, page: HistoryPage): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.parley)
  encoding.writeVarUint(encoder, subtype)
  encoding.writeVarUint(encoder, page.request)
  encoding.writeVarUint(encoder, page.segment)
  encoding.writeVarString(encoder, page.error ?? "")
  encoding.writeVarString(encoder, page.error === undefined ? page.hash : "")
  encoding.writeVarUint8Array(encoder, page.error === undefined ? page.bytes : new Uint8Array(0))
  return encoding.toUint8Array(encoder)
}

/** Encodes a "saved" acknowledgement carrying the relay's saved state vector. */
export function encodeSaved(stateVector: Uint8Array): Uint8Array {
  return encodeStateVectorMessage(ParleyMessage.saved, stateVector)
}

/** A Parley message whose body is one state vector. */
function encodeStateVectorMessage(subtype: number, stateVector: Uint8Array): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.parley)
  encoding.writeVarUint(encoder, subtype)
  encoding.writeVarUint8Array(encoder, stateVector)
  return encoding.toUint8Array(encoder)
}

/** Encodes a typed error message. */
export function encodeError(error: WireError): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.parley)
  encoding.writeVarUint(encoder, ParleyMessage.error)
  encoding.writeVarString(encoder, error.code)
  encoding.writeVarString(encoder, error.message)
  encoding.writeVarString(encoder, error.rule ?? "")
  return encoding.toUint8Array(encoder)
}

/** Encodes the state vector of the replica that made the next update sent (client → relay; see {@link ParleyMessage.view}). */
export function encodeView(stateVector: Uint8Array): Uint8Array {
  return encodeStateVectorMessage(ParleyMessage.view, stateVector)
}

/** Encodes a token refresh (client → relay). */
export function encodeTokenRefresh(token: string): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.parley)
  encoding.writeVarUint(encoder, ParleyMessage.token)
  encoding.writeVarString(encoder, token)
  return encoding.toUint8Array(encoder)
}

/** Encodes the relay's acceptance of a refreshed token expiring at `expiresAt` (seconds; 0 = never). */
export function encodeTokenAccepted(expiresAt: number): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.parley)
  encoding.writeVarUint(encoder, ParleyMessage.tokenAccepted)
  encoding.writeVarUint(encoder, expiresAt)
  return encoding.toUint8Array(encoder)
}

/**
 * Reads the body of a Parley message, after its {@link MessageType.parley}
 * tag has been read. Returns undefined for a subtype this version does not know,
 * so that newer relays can add subtypes without breaking older clients.
 */
export function readParleyFrame(decoder: decoding.Decoder): ParleyFrame | undefined {
  const subtype = decoding.readVarUint(decoder)
  if (subtype === ParleyMessage.saved)
    return { type: "saved", stateVector: decoding.readVarUint8Array(decoder) }
  if (subtype === ParleyMessage.error) {
    const code = decoding.readVarString(decoder)
    const message = decoding.readVarString(decoder)
    const rule = decoding.readVarString(decoder)
    return {
      type: "error",
      error: { code: isErrorCode(code) ? code : ErrorCode.INTERNAL, message, ...(rule ? { rule } : {}) },
    }
  }
  if (subtype === ParleyMessage.view)
    return { type: "view", stateVector: decoding.readVarUint8Array(decoder) }
  if (subtype === ParleyMessage.token) return { type: "token", token: decoding.readVarString(decoder) }
  if (subtype === ParleyMessage.tokenAccepted)
    return { type: "tokenAccepted", expiresAt: decoding.readVarUint(decoder) }
  if (subtype === ParleyMessage.historyRequest) {
    const request = decoding.readVarUint(decoder)
    return { type: "historyRequest", request, segment: decoding.readVarUint(decoder) }
  }
  if (subtype === ParleyMessage.directoryRequest) {
    const request = decoding.readVarUint(decoder)
    return { type: "directoryRequest", request, page: decoding.readVarUint(decoder) }
  }
  if (subtype === ParleyMessage.epochRequest) {
    const request = decoding.readVarUint(decoder)
    return { type: "epochRequest", request, record: decoding.readVarUint(decoder) }
  }
  if (
    subtype === ParleyMessage.historyPage ||
    subtype === ParleyMessage.directoryPage ||
    subtype === ParleyMessage.epochRecord
  ) {
    const request = decoding.readVarUint(decoder)
    const segment = decoding.readVarUint(decoder)
    const code = decoding.readVarString(decoder)
    const hash = decoding.readVarString(decoder)
    const bytes = decoding.readVarUint8Array(decoder)
    const page: HistoryPage =
      code !== ""
        ? { request, segment, error: isErrorCode(code) ? code : ErrorCode.INTERNAL }
        : { request, segment, hash, bytes }
    if (subtype === ParleyMessage.historyPage) return { type: "historyPage", ...page }
    return subtype === ParleyMessage.directoryPage
      ? { type: "directoryPage", ...page }
      : { type: "epochRecord", ...page }
  }
  return undefined
}

/**
 * The relay's keepalive frame: an awareness message whose update lists no
 * clients (`01 01 00`). y-websocket's provider closes a socket after 30 s
 * without receiving a message, and WebSocket ping frames are not messages to
 * it; this frame is one, and applying it changes nothing, in stock clients as
 * in the SDK. See PROTOCOL.md, "Keepalive".
 */
export function encodeKeepalive(): Uint8Array {
  return encodeAwareness(encodeAwarenessEntries([]))
}

/** Decoded {@link MessageType.sync} message. */
export type SyncFrame =
  | { readonly type: "syncStep1"; readonly stateVector: Uint8Array }
  | { readonly type: "syncStep2"; readonly update: Uint8Array }
  | { readonly type: "syncUpdate"; readonly update: Uint8Array }

/** Decoded {@link MessageType.auth} message. */
export interface AuthFrame {
  readonly type: "permissionDenied"
  readonly reason: string
}

/**
 * Any frame, decoded one level: its message type and that type's body. The
 * bodies of sync, auth and Parley messages are decoded by {@link readSyncMessage},
 * {@link readAuthMessage} and {@link readParleyFrame}; an auth or Parley subtype
 * this version does not know is `undefined`, to be ignored (or refused) by the reader.
 */
export type Frame =
  | { readonly type: "sync"; readonly message: SyncFrame }
  | { readonly type: "awareness"; readonly update: Uint8Array }
  | { readonly type: "auth"; readonly message: AuthFrame | undefined }
  | { readonly type: "queryAwareness" }
  | { readonly type: "parley"; readonly message: ParleyFrame | undefined }

function syncFrame(subtype: number, body: Uint8Array): Uint8Array {
  // Written into one buffer of the exact size: the relay frames every update it broadcasts (and,
  // in a big room, an inbox update per connected member per message); an encoder's growing
  // buffers and final copy cost more than the few bytes of header. The same bytes as lib0's
  // varUints (the type and subtype are below 128, one byte each).
  let lengthBytes = 1
  for (let n = body.length; n > 0x7f; n >>>= 7) lengthBytes++
  const frame = new Uint8Array(2 + lengthBytes + body.length)
  frame[0] = MessageType.sync
  frame[1] = subtype
  let at = 2
  let n = body.length
  for (; n > 0x7f; n >>>= 7) frame[at++] = 0x80 | (n & 0x7f)
  frame[at++] = n
  frame.set(body, at)
  return frame
}

/** Encodes a sync step 1 carrying `stateVector` (y-protocols `writeSyncStep1`). */
export function encodeSyncStep1(stateVector: Uint8Array): Uint8Array {
  return syncFrame(SyncMessage.step1, stateVector)
}

/** Encodes a sync step 2 carrying `update`, the answer to a step 1 (y-protocols `writeSyncStep2`). */
export function encodeSyncStep2(update: Uint8Array): Uint8Array {
  return syncFrame(SyncMessage.step2, update)
}

/** Encodes a sync update carrying `update` (y-protocols `writeUpdate`). */
export function encodeSyncUpdate(update: Uint8Array): Uint8Array {
  return syncFrame(SyncMessage.update, update)
}

/**
 * Reads the body of a sync message, after its {@link MessageType.sync} tag.
 * Throws on a subtype y-protocols does not define. The state vector or update
 * is returned as read (a view into the frame), not checked against Yjs.
 */
export function readSyncMessage(decoder: decoding.Decoder): SyncFrame {
  const subtype = decoding.readVarUint(decoder)
  if (subtype === SyncMessage.step1)
    return { type: "syncStep1", stateVector: decoding.readVarUint8Array(decoder) }
  if (subtype === SyncMessage.step2) return { type: "syncStep2", update: decoding.readVarUint8Array(decoder) }
  if (subtype === SyncMessage.update)
    return { type: "syncUpdate", update: decoding.readVarUint8Array(decoder) }
  throw new ParleyError(ErrorCode.MALFORMED_FRAME, `unknown sync message type ${subtype}`)
}

/** Encodes an awareness message carrying `update`, a y-protocols awareness update. */
export function encodeAwareness(update: Uint8Array): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.awareness)
  encoding.writeVarUint8Array(encoder, update)
  return encoding.toUint8Array(encoder)
}

/** Reads the body of an awareness message, after its {@link MessageType.awareness} tag: the awareness update. */
export function readAwarenessMessage(decoder: decoding.Decoder): Uint8Array {
  return decoding.readVarUint8Array(decoder)
}

/**
 * One entry of a y-protocols awareness update. `state` is the entry's JSON
 * (`null` for a removal) as UTF-8 bytes, left undecoded: a relay parses only
 * the states their sender may set.
 */
export interface AwarenessEntry {
  readonly clientId: number
  readonly clock: number
  readonly state: Uint8Array
}

/** Encodes a y-protocols awareness update (the body of an awareness message) from `entries`. */
export function encodeAwarenessEntries(entries: readonly AwarenessEntry[]): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, entries.length)
  for (const { clientId, clock, state } of entries) {
    encoding.writeVarUint(encoder, clientId)
    encoding.writeVarUint(encoder, clock)
    // A var-string is a var-uint length and UTF-8 bytes: the same bytes as these.
    encoding.writeVarUint8Array(encoder, state)
  }
  return encoding.toUint8Array(encoder)
}

/**
 * Reads a y-protocols awareness update whole (throws when it is malformed),
 * so that a reader can refuse it whole instead of applying half of it.
 */
export function readAwarenessEntries(update: Uint8Array): AwarenessEntry[] {
  const decoder = decoding.createDecoder(update)
  const count = decoding.readVarUint(decoder)
  const entries: AwarenessEntry[] = []
  for (let i = 0; i < count; i++) {
    const clientId = decoding.readVarUint(decoder)
    const clock = decoding.readVarUint(decoder)
    entries.push({ clientId, clock, state: decoding.readVarUint8Array(decoder) })
  }
  return entries
}

/** Encodes a query awareness message (no body): "send me your awareness". */
export function encodeQueryAwareness(): Uint8Array {
  return Uint8Array.of(MessageType.queryAwareness)
}

/**
 * Encodes a y-protocols "permission denied" auth message. The relay sends
 * none (y-websocket logs the socket's URL, token included, on receiving one;
 * the close code says why); it is here so that the format is written down once.
 */
export function encodePermissionDenied(reason: string): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.auth)
  encoding.writeVarUint(encoder, AuthMessage.permissionDenied)
  encoding.writeVarString(encoder, reason)
  return encoding.toUint8Array(encoder)
}

/**
 * Reads the body of an auth message, after its {@link MessageType.auth} tag:
 * a var-uint subtype and a var-string reason (the one subtype y-protocols
 * defines has that body; others are read alike). Undefined for an unknown subtype.
 */
export function readAuthMessage(decoder: decoding.Decoder): AuthFrame | undefined {
  const subtype = decoding.readVarUint(decoder)
  const reason = decoding.readVarString(decoder)
  return subtype === AuthMessage.permissionDenied ? { type: "permissionDenied", reason } : undefined
}

/**
 * True when `frame` is a Parley token refresh, judged from its first two
 * bytes without decoding it: the relay routes these to the socket's token
 * lease and everything else to the document.
 */
export function isTokenRefresh(frame: Uint8Array): boolean {
  // MessageType.parley (100) and ParleyMessage.token (2) are one byte each as var-uints.
  return frame[0] === MessageType.parley && frame[1] === ParleyMessage.token
}

/** The Parley messages clients send (the relay reads them whole). */
const CLIENT_SENT: ReadonlySet<string> = new Set([
  "token",
  "historyRequest",
  "directoryRequest",
  "epochRequest",
])

/** `frame`, once `decoder` has read the whole of it. */
function whole(decoder: decoding.Decoder, frame: Frame): Frame {
  const after = decoder.arr.length - decoder.pos
  if (after > 0)
    throw new ParleyError(
      ErrorCode.MALFORMED_FRAME,
      `${after} byte${after === 1 ? "" : "s"} after the message`,
    )
  return frame
}

/**
 * Decodes any frame one level (see {@link Frame}). Throws a MALFORMED_FRAME
 * {@link ParleyError} on an unknown message type, and on bytes after a sync,
 * awareness, awareness-query or auth message or one of the Parley messages
 * clients send (y-protocols sends one message per frame, and a relay that
 * kept such bytes would hold and count what no replica sent); lib0's error
 * on a truncated body.
 */
export function readFrame(frame: Uint8Array): Frame {
  const decoder = decoding.createDecoder(frame)
  const type = decoding.readVarUint(decoder)
  switch (type) {
    case MessageType.sync:
      return whole(decoder, { type: "sync", message: readSyncMessage(decoder) })
    case MessageType.awareness:
      return whole(decoder, { type: "awareness", update: readAwarenessMessage(decoder) })
    case MessageType.auth:
      return whole(decoder, { type: "auth", message: readAuthMessage(decoder) })
    case MessageType.queryAwareness:
      return whole(decoder, { type: "queryAwareness" })
    case MessageType.parley: {
      const message = readParleyFrame(decoder)
      // What clients send is read whole; what the relay sends may gain fields a client reads past.
      return message !== undefined && CLIENT_SENT.has(message.type)
        ? whole(decoder, { type: "parley", message })
        : { type: "parley", message }
    }
    default:
      throw new ParleyError(ErrorCode.MALFORMED_FRAME, `unknown message type ${type}`)
  }
}

/**
 * Query parameter by which a client asks for one multiplexed socket carrying
 * many documents (value {@link MUX_PROTOCOL_VERSION}); see PROTOCOL.md,
 * "Multiplexed sockets".
 */
export const MUX_PARAM = "mux"
/** Version of the multiplexed protocol a client asks for (value of {@link MUX_PARAM}). */
export const MUX_PROTOCOL_VERSION = "1"

/**
 * Message types of a multiplexed socket. Every frame of one document travels
 * as a {@link MuxMessage.channel} frame: the channel number, then the frame
 * exactly as it would travel on that document's own socket (with Parley's
 * extensions). Channels are opened and closed with {@link MuxMessage.control}
 * frames. They do not collide with {@link MessageType}: a multiplexed socket
 * carries no bare document frame.
 */
export const MuxMessage = {
  channel: 101,
  control: 102,
} as const

/** Subtypes of a {@link MuxMessage.control} frame. */
export const MuxControl = {
  /** Client → relay: attach channel N to document `name`, with this token ("" = the socket's). */
  open: 0,
  /** Either way: channel N is closed, with a WebSocket close code and reason (as its own socket would be). */
  close: 1,
} as const

/** A decoded frame of a multiplexed socket. */
export type MuxFrame =
  | { readonly type: "channel"; readonly channel: number; readonly frame: Uint8Array }
  | { readonly type: "open"; readonly channel: number; readonly name: string; readonly token: string }
  | { readonly type: "close"; readonly channel: number; readonly code: number; readonly reason: string }

/** Wraps `frame`, a document frame, for channel `channel` of a multiplexed socket. */
export function encodeChannelFrame(channel: number, frame: Uint8Array): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MuxMessage.channel)
  encoding.writeVarUint(encoder, channel)
  // The rest of the frame is the document frame, unprefixed: no copy of its length.
  encoding.writeUint8Array(encoder, frame)
  return encoding.toUint8Array(encoder)
}

/** Encodes the opening of channel `channel` to document `name`, with `token` ("" for the socket's own). */
export function encodeChannelOpen(channel: number, name: string, token: string): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MuxMessage.control)
  encoding.writeVarUint(encoder, MuxControl.open)
  encoding.writeVarUint(encoder, channel)
  encoding.writeVarString(encoder, name)
  encoding.writeVarString(encoder, token)
  return encoding.toUint8Array(encoder)
}

/** Encodes the closing of channel `channel` with a WebSocket close `code` and `reason`. */
export function encodeChannelClose(channel: number, code: number, reason: string): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MuxMessage.control)
  encoding.writeVarUint(encoder, MuxControl.close)
  encoding.writeVarUint(encoder, channel)
  encoding.writeVarUint(encoder, code)
  encoding.writeVarString(encoder, reason)
  return encoding.toUint8Array(encoder)
}

/**
 * Decodes one frame of a multiplexed socket. A channel frame's document frame
 * is a view into `frame`, not decoded. Throws a MALFORMED_FRAME
 * {@link ParleyError} on an unknown type or control subtype, lib0's error on
 * a truncated frame.
 */
export function readMuxFrame(frame: Uint8Array): MuxFrame {
  const decoder = decoding.createDecoder(frame)
  const type = decoding.readVarUint(decoder)
  if (type === MuxMessage.channel) {
    const channel = decoding.readVarUint(decoder)
    return { type: "channel", channel, frame: frame.subarray(decoder.pos) }
  }
  if (type !== MuxMessage.control)
    throw new ParleyError(ErrorCode.MALFORMED_FRAME, `unknown multiplexed message type ${type}`)
  const subtype = decoding.readVarUint(decoder)
  const channel = decoding.readVarUint(decoder)
  if (subtype === MuxControl.open) {
    const name = decoding.readVarString(decoder)
    return { type: "open", channel, name, token: decoding.readVarString(decoder) }
  }
  if (subtype === MuxControl.close) {
    const code = decoding.readVarUint(decoder)
    return { type: "close", channel, code, reason: decoding.readVarString(decoder) }
  }
  throw new ParleyError(ErrorCode.MALFORMED_FRAME, `unknown multiplexed control subtype ${subtype}`)
}
