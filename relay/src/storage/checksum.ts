import { crc32 } from "node:zlib"

/**
 * The checksum stored with every log entry and snapshot (CRC-32, as a signed
 * 32-bit integer so that it fits SQLite's and PostgreSQL's INTEGER): bytes
 * changed by a bad disk or a hand may still decode as a valid Yjs update with
 * other content, which only a checksum tells from what was written.
 */
export const checksumOf = (data: Uint8Array): number => crc32(data) | 0
