import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"

/**
 * Every byte of every file under a data directory (the databases with their
 * -wal and -shm, the attachment blobs under blobs/), as one latin1 string: what
 * someone with the disk could read.
 */
export function rawFiles(dir: string): string {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => readFileSync(join(entry.parentPath, entry.name)).toString("latin1"))
    .join("\n")
}
