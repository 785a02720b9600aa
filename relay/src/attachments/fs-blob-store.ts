import { randomBytes } from "node:crypto"
import { createReadStream, statSync } from "node:fs"
import { type FileHandle, link, mkdir, open, readdir, rename, rmdir, stat, unlink } from "node:fs/promises"
import { dirname, join, relative, sep } from "node:path"
import { ErrorCode, ParleyError } from "@parley/shared"
import { storageUnavailable } from "../storage/guard.js"
import { type BlobStore, checkBlobKey, missingBlob, offsetConflict, rangeOf } from "./blob-store.js"

/** Chunk files are named `#` + the offset, zero-padded: `#` is not allowed in key segments. */
const CHUNK = /^#(\d{15})$/
const chunkName = (offset: number) => `#${String(offset).padStart(15, "0")}`
const READ_BYTES = 256 * 1024

interface Chunk {
  readonly offset: number
  readonly size: number
  readonly path: string
}

/**
 * Blobs in the local file system, the default for one relay (`<data>/blobs`):
 * blob `a/b` is the directory `<root>/a/b`, holding one file per chunk named by
 * its offset. A chunk is written to a temporary file, fsynced, then linked
 * into place (a link, unlike a rename, fails when the name exists: two
 * appends at one offset cannot both win), and the directory fsynced: a crash
 * leaves a whole chunk or none. {@link put} renames over the blob's one chunk.
 */
export class FsBlobStore implements BlobStore {
  readonly kind = "fs"

  constructor(readonly root: string) {}

  private dir(key: string): string {
    return join(this.root, ...checkBlobKey(key).split("/"))
  }

  private async chunks(key: string): Promise<Chunk[] | undefined> {
    const dir = this.dir(key)
    // Most blobs asked for are not there (every deleted message is asked for the files it brought, and
    // few brought any): one stat that throws nothing answers that for a few µs, where a failing
    // readdir cost about 50–80 µs of CPU (the thread pool's round trip and an Error with its stack).
    if (!statSync(dir, { throwIfNoEntry: false })) return undefined
    let names: string[]
    try {
      names = await readdir(dir)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined
      throw error
    }
    const chunks: Chunk[] = []
    for (const name of names) {
      const match = CHUNK.exec(name)
      if (!match) continue
      const path = join(dir, name)
      let size: number
      try {
        size = (await stat(path)).size
      } catch (error) {
        // Removed since the listing (a put replacing an appended blob): its bytes are no longer the blob's.
        if ((error as NodeJS.ErrnoException).code === "ENOENT") continue
        throw error
      }
      chunks.push({ offset: Number(match[1]), size, path })
    }
    if (chunks.length === 0) return undefined
    return chunks.sort((a, b) => a.offset - b.offset)
  }

  /**
   * Writes `bytes` to a fsynced temporary file in `dir` and returns its path.
   * A disk that cannot take them (full, over quota, read-only, failing) is the
   * retryable STORAGE_UNAVAILABLE, and the partial file is removed: it would
   * hold space on a full disk until the next start's sweep.
   */
  private async temporary(dir: string, bytes: Uint8Array): Promise<string> {
    const path = join(dir, `#tmp-${randomBytes(8).toString("hex")}`)
    let file: FileHandle | undefined
    try {
      await mkdir(dir, { recursive: true })
      file = await open(path, "wx")
      await file.writeFile(bytes)
      await file.sync()
      await file.close()
      return path
    } catch (error) {
      await file?.close().catch(() => {})
      if (file) await unlink(path).catch(() => {})
      throw diskFailure(error)
    }
  }

  private async syncDir(dir: string): Promise<void> {
    const handle = await open(dir, "r")
    try {
      await handle.sync()
    } finally {
      await handle.close()
    }
  }

  async append(key: string, offset: number, bytes: Uint8Array): Promise<void> {
    const dir = this.dir(key)
    const length = lengthOf(await this.chunks(key))
    if (offset !== length) throw offsetConflict(key, offset, length)
    // An empty chunk file would take the offset's name from the chunk that follows it.
    if (bytes.length === 0) return
    const temporary = await this.temporary(dir, bytes)
    try {
      await link(temporary, join(dir, chunkName(offset)))
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "EEXIST")
        throw offsetConflict(key, offset, lengthOf(await this.chunks(key)))
      throw error
    } finally {
      await unlink(temporary).catch(() => {})
    }
    await this.syncDir(dir)
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    const dir = this.dir(key)
    const temporary = await this.temporary(dir, bytes)
    await rename(temporary, join(dir, chunkName(0)))
    for (const chunk of (await this.chunks(key)) ?? []) if (chunk.offset !== 0) await unlink(chunk.path)
    await this.syncDir(dir)
  }

  async get(key: string): Promise<Uint8Array | undefined> {
    // Read through the files opened, never by a size taken earlier: a put renames a whole new file
    // over chunk 0, and an open file is one version of it. A chunk gone between listing and opening
    // (a put over an appended blob removing the rest) means the listing is stale: list again.
    for (let attempt = 0; attempt < 8; attempt++) {
      const chunks = await this.chunks(key)
      if (!chunks) return undefined
      const parts: Buffer[] = []
      try {
        for (const chunk of chunks) {
          const file = await open(chunk.path, "r")
          try {
            parts.push(await file.readFile())
          } finally {
            await file.close()
          }
        }
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") continue
        throw error
      }
      return new Uint8Array(Buffer.concat(parts))
    }
    throw new ParleyError(ErrorCode.UNAVAILABLE, `blob ${key} kept changing while it was read`)
  }

  async size(key: string): Promise<number | undefined> {
    const chunks = await this.chunks(key)
    return chunks ? lengthOf(chunks) : undefined
  }

  async *read(key: string, start?: number, end?: number): AsyncIterable<Uint8Array> {
    const chunks = await this.chunks(key)
    if (!chunks) throw missingBlob(key)
    const range = rangeOf(lengthOf(chunks), start, end)
    for (const chunk of chunks) {
      const from = Math.max(range.start, chunk.offset)
      const to = Math.min(range.end, chunk.offset + chunk.size)
      if (from >= to) continue
      const stream = createReadStream(chunk.path, {
        start: from - chunk.offset,
        end: to - chunk.offset - 1,
        highWaterMark: READ_BYTES,
      })
      for await (const piece of stream) yield piece as Buffer
    }
  }

  async delete(key: string): Promise<void> {
    const dir = this.dir(key)
    let names: string[]
    try {
      names = await readdir(dir)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return
      throw error
    }
    for (const name of names) if (name.startsWith("#")) await unlink(join(dir, name)).catch(() => {})
    // Empty directories up to the root go too, so that deleted conversations leave no trace of their ids.
    for (let at = dir; at !== this.root && at.startsWith(this.root + sep); at = dirname(at)) {
      try {
        await rmdir(at)
      } catch {
        break
      }
    }
  }

  async list(prefix: string): Promise<string[]> {
    const cut = prefix.lastIndexOf("/")
    const base = cut < 0 ? this.root : join(this.root, ...prefix.slice(0, cut).split("/"))
    const keys: string[] = []
    const walk = async (dir: string): Promise<void> => {
      let entries: import("node:fs").Dirent[]
      try {
        entries = await readdir(dir, { withFileTypes: true })
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") return
        throw error
      }
      if (entries.some((e) => e.isFile() && CHUNK.test(e.name))) {
        const key = relative(this.root, dir).split(sep).join("/")
        if (key.startsWith(prefix)) keys.push(key)
      }
      for (const entry of entries) if (entry.isDirectory()) await walk(join(dir, entry.name))
    }
    await walk(base)
    return keys.sort()
  }

  async close(): Promise<void> {}
}

const lengthOf = (chunks: readonly Chunk[] | undefined) => {
  const last = chunks?.at(-1)
  return last ? last.offset + last.size : 0
}

/** Errors that say the disk cannot take writes, not that the request was wrong. */
const DISK_FAILURES = new Set(["ENOSPC", "EDQUOT", "EROFS", "EIO"])

function diskFailure(error: unknown): unknown {
  const code = (error as NodeJS.ErrnoException).code
  return code && DISK_FAILURES.has(code)
    ? storageUnavailable(`the blob store's disk cannot take the bytes (${code})`, error)
    : error
}
