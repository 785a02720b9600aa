import { readFileSync } from "node:fs"

/**
 * The process's soft limit on open file descriptors, read from
 * `/proc/self/limits` (Linux); undefined where it cannot be read or is
 * unlimited.
 */
export function openFilesLimit(): number | undefined {
  try {
    const line = readFileSync("/proc/self/limits", "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"))
    const soft = line?.slice("Max open files".length).trim().split(/\s+/)[0]
    const value = Number(soft)
    return Number.isSafeInteger(value) && value > 0 ? value : undefined
  } catch {
    return undefined
  }
}

/**
 * Connections the relay holds at once when `--max-connections` is not set:
 * the descriptor limit less a reserve (a quarter of it, at most 1,024) for
 * what the relay itself opens — its database and WAL, uploads and downloads
 * being written and read, hook workers, DNS and outgoing requests. At the cap
 * new connections are dropped at accept, so that a flood of them makes the
 * relay refuse connections, not fail to open a file while storing a message.
 * 0 (no cap) where the limit is unknown (`limit` undefined: see {@link openFilesLimit}).
 */
export function defaultMaxConnections(limit: number | undefined): number {
  if (limit === undefined) return 0
  return Math.max(1, limit - Math.min(1024, Math.floor(limit / 4)))
}
