import type { RawData } from "ws"

/** The first byte of a received WebSocket message (its message type), if any. */
export function firstByte(data: RawData): number | undefined {
  if (Array.isArray(data)) return data[0]?.[0]
  if (data instanceof ArrayBuffer) return data.byteLength > 0 ? new Uint8Array(data)[0] : undefined
  return data[0]
}

/** A received WebSocket message as one byte array (a view when it already is one). */
export function toBytes(data: RawData): Uint8Array {
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data))
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
}

/** The size of a received WebSocket message, without joining its fragments. */
export function sizeOf(data: RawData): number {
  if (Array.isArray(data)) return data.reduce((total, part) => total + part.length, 0)
  return data.byteLength
}
