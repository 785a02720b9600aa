import { statfsSync } from "node:fs"

/** Room on the file system that holds a directory, in bytes. */
export interface DiskSpace {
  /** Bytes this process may still write (root may also use the blocks a file system keeps for root). */
  readonly free: number
  /** Size of the file system. */
  readonly size: number
}

/** The {@link DiskSpace} of the file system holding `dir`. */
export function diskSpaceOf(dir: string): DiskSpace {
  const stats = statfsSync(dir)
  const blocks = process.getuid?.() === 0 ? stats.bfree : stats.bavail
  return { free: blocks * stats.bsize, size: stats.blocks * stats.bsize }
}

const MIB = 1024 * 1024

/**
 * Free space below which a file system of `size` bytes counts as full when
 * the relay asks whether it may write again: 1% of it, at least 1 MiB and at
 * most 64 MiB. A disk that just filled up still takes small writes into
 * pages SQLite had already allocated (its WAL is reused from the start), so
 * a write that succeeds says nothing about room for the next ones; without
 * this margin, writes were let through again and failed again within
 * milliseconds, and readiness flapped with them.
 */
export function writeReserve(size: number): number {
  return Math.min(64 * MIB, Math.max(MIB, Math.ceil(size / 100)))
}

/** `bytes` for a log line or an error message: `512 B`, `3.2 MiB`. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`
  if (bytes < MIB) return `${(bytes / 1024).toFixed(1)} KiB`
  if (bytes < 1024 * MIB) return `${(bytes / MIB).toFixed(1)} MiB`
  return `${(bytes / (1024 * MIB)).toFixed(1)} GiB`
}
