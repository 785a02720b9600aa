import { mkdirSync } from "node:fs"
import { join } from "node:path"
import { Worker } from "node:worker_threads"
import { GroupCommit } from "./group-commit.js"
import type { RelayStorage, StoredDocument } from "./types.js"

/** File name of the embedded database inside the data directory. */
export const SQLITE_FILE = "parley.sqlite"

type Reply = { id: number; result?: unknown; error?: { message: string; code?: string } }

/**
 * The embedded default store: `<dataDir>/parley.sqlite` with WAL and
 * `synchronous=FULL`, so that a commit is on disk before an append resolves.
 * One row per update. The database runs on a worker thread
 * (`sqlite-worker.js`): the relay's event loop never waits for the disk, and
 * every append made while a commit is in flight joins the next one, so one
 * fsync serves every acknowledgement that arrived meanwhile, across documents.
 */
export class SqliteStorage implements RelayStorage {
  private readonly group: GroupCommit
  private readonly waiting = new Map<
    number,
    { resolve: (value: unknown) => void; reject: (e: Error) => void }
  >()
  private nextId = 1
  private closed = false
  private failure: Error | undefined

  private constructor(private readonly worker: Worker) {
    worker.on("message", (reply: Reply) => this.settle(reply))
    worker.on("error", (error) => this.fail(error))
    worker.on("exit", (code) => {
      if (!this.closed) this.fail(new Error(`the storage thread exited (code ${code})`))
    })
    this.group = new GroupCommit(
      (batch) =>
        this.request("append", [batch.map(({ name, updates }) => ({ name, updates }))]) as Promise<
          number[][]
        >,
    )
  }

  /** Opens (creating if needed) the database in `dataDir`; rejects if it cannot be opened. */
  static async open(dataDir: string): Promise<SqliteStorage> {
    mkdirSync(dataDir, { recursive: true })
    const worker = new Worker(new URL("./sqlite-worker.js", import.meta.url), {
      workerData: { file: join(dataDir, SQLITE_FILE) },
    })
    const storage = new SqliteStorage(worker)
    // The worker's first message says the database is open (id 0).
    await new Promise((resolve, reject) => storage.waiting.set(0, { resolve, reject }))
    return storage
  }

  private settle(reply: Reply): void {
    const waiter = this.waiting.get(reply.id)
    if (!waiter) return
    this.waiting.delete(reply.id)
    if (reply.error) waiter.reject(Object.assign(new Error(reply.error.message), { code: reply.error.code }))
    else waiter.resolve(reply.result)
  }

  private fail(error: Error): void {
    this.failure ??= error
    for (const waiter of this.waiting.values()) waiter.reject(error)
    this.waiting.clear()
  }

  private request(op: string, args: unknown[], transfer: ArrayBuffer[] = []): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure)
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject })
      this.worker.postMessage({ id, op, args }, transfer)
    })
  }

  private assertOpen() {
    if (this.closed) throw new Error("storage is closed")
  }

  async load(name: string): Promise<StoredDocument> {
    this.assertOpen()
    await this.group.drain()
    return (await this.request("load", [name])) as StoredDocument
  }

  append(name: string, updates: readonly Uint8Array[]): Promise<number[]> {
    this.assertOpen()
    return this.group.append(name, updates)
  }

  async compact(name: string, snapshot: Uint8Array, through: number): Promise<void> {
    this.assertOpen()
    await this.group.drain()
    await this.request("compact", [name, snapshot, through])
  }

  async list(): Promise<string[]> {
    this.assertOpen()
    await this.group.drain()
    return (await this.request("list", [])) as string[]
  }

  async close(): Promise<void> {
    if (this.closed) return
    await this.group.drain()
    this.closed = true
    try {
      await this.request("close", [])
    } finally {
      await this.worker.terminate()
    }
  }
}
