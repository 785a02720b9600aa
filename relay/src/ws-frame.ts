import type { WebSocket } from "ws"

/**
 * Frames written with their WebSocket header in front of them. `ws.send`
 * frames a message itself: a header buffer, then the header and the message
 * written corked, which Node turns into one `writev` of two chunks per
 * message. A frame the relay builds itself (a member's inbox entry: one per
 * connected member per message of a big room) can leave room for the header
 * in its own buffer instead, and go to the socket as one chunk.
 *
 * Nothing marks such a frame: {@link framedBytes} checks that the bytes in
 * front of a frame are exactly the header `ws` would write for it (binary,
 * final, unmasked, its length), so whatever wrote them, writing them with the
 * frame puts on the wire what `ws.send` would.
 */

/** The header's size for a message of `length` bytes (server frames are unmasked). */
export const headerSize = (length: number): number => (length < 126 ? 2 : length < 65536 ? 4 : 10)

/** A binary message that is its message's last fragment (`FIN` and opcode 2). */
const FINAL_BINARY = 0x82

/**
 * A frame of `length` bytes (not zero-filled: the caller writes every byte),
 * with its WebSocket header written in front of it (see {@link framedBytes};
 * frames of 64 KB and more, never built per member, get no header). Small
 * frames are slices of Node's shared buffer pool, as `ws`'s own headers are:
 * a frame nothing keeps once it is sent costs no buffer of its own.
 */
export function allocateFramed(length: number): Uint8Array {
  const header = headerSize(length)
  if (header === 10) return Buffer.allocUnsafe(length)
  const whole = Buffer.allocUnsafe(header + length)
  whole[0] = FINAL_BINARY
  if (header === 2) whole[1] = length
  else {
    whole[1] = 126
    whole[2] = length >>> 8
    whole[3] = length & 0xff
  }
  return whole.subarray(header)
}

/**
 * The whole WebSocket frame of `frame` (its header and its bytes, one view)
 * when the bytes in front of it are its header, as {@link allocateFramed}
 * writes it; undefined otherwise (then `ws.send` frames it).
 */
export function framedBytes(frame: Uint8Array): Buffer | undefined {
  const length = frame.length
  const header = headerSize(length)
  const at = frame.byteOffset - header
  // Most frames start their buffer (nothing in front); frames this large are never built with a header.
  if (at < 0 || header === 10) return undefined
  // One view, the whole frame's, checked and returned (a frame is sent once per member and message).
  const whole = Buffer.from(frame.buffer, at, header + length)
  if (whole[0] !== FINAL_BINARY) return undefined
  const framed =
    header === 2 ? whole[1] === length : whole[1] === 126 && ((whole[2]! << 8) | whole[3]!) === length
  return framed ? whole : undefined
}

/**
 * `prefix` (a few bytes) then `frame`, copied once into a frame made by
 * {@link allocateFramed}: a channel's frame on a multiplexed socket, sent as
 * one chunk like a member's inbox frame.
 */
export function framedWithPrefix(prefix: Uint8Array, frame: Uint8Array): Uint8Array {
  const out = allocateFramed(prefix.length + frame.length)
  out.set(prefix, 0)
  out.set(frame, prefix.length)
  return out
}

/** What {@link sendFramed} needs of the socket under a `ws` WebSocket. */
interface WritableSocket {
  write(chunk: Uint8Array): boolean
}

/**
 * Sends `frame` on `ws` (open) as `ws.send` would; a frame with its header in
 * front of it ({@link allocateFramed}) goes to the socket as one chunk.
 * Only for a server without per-message compression (the relay's): with it,
 * `ws` may hold a message back while it compresses the one before, and a
 * write around it would overtake it.
 */
export function sendFramed(ws: WebSocket, frame: Uint8Array): void {
  const whole = framedBytes(frame)
  // `ws` keeps its net.Socket in `_socket` (no public accessor; see held-writes.ts).
  const socket = whole && (ws as unknown as { _socket?: WritableSocket | null })._socket
  if (socket) socket.write(whole)
  else ws.send(frame)
}
