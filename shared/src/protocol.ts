import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import { ErrorCode, isErrorCode } from "./errors.js"

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
} as const

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

/** Encodes a "saved" acknowledgement carrying the relay's saved state vector. */
export function encodeSaved(stateVector: Uint8Array): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.parley)
  encoding.writeVarUint(encoder, ParleyMessage.saved)
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
  if (subtype === ParleyMessage.token) return { type: "token", token: decoding.readVarString(decoder) }
  if (subtype === ParleyMessage.tokenAccepted)
    return { type: "tokenAccepted", expiresAt: decoding.readVarUint(decoder) }
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
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.awareness)
  // An awareness update of zero clients.
  encoding.writeVarUint8Array(encoder, Uint8Array.of(0))
  return encoding.toUint8Array(encoder)
}
