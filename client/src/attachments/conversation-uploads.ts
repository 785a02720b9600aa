import {
  type Attachment,
  type ConversationId,
  ErrorCode,
  isErrorCode,
  type MessageId,
  type MessageView,
  type Metadata,
  newMessageId,
  ParleyError,
  type Priority,
  type RefusedWork,
  type UserId,
} from "@parley/shared"
import type { MessageStatus } from "../message-status.js"
import { HttpRefusal, isTransient, type RelayHttp } from "./http.js"
import type { OutboxEntry, OutboxFile, OutboxStore, StoredFailure } from "./outbox-store.js"
import { uploadFile } from "./upload-file.js"

/** One file of a message whose upload is not finished, as the app shows it. */
export interface LocalFile {
  readonly name: string
  /** The type the browser gave (the relay sniffs the real one). */
  readonly mimeType: string
  readonly size: number
  /** An object URL of the local bytes (for an `<img>` preview) while they are kept; absent once freed. */
  readonly url?: string
  /** The relay has the whole file. */
  readonly uploaded: boolean
  /** Why the relay refused this file (too large, type not allowed): a retry sends the message without it. */
  readonly refused?: ParleyError
}

/** Where the uploads of a message stand. */
export type UploadPhase = "queued" | "uploading" | "failed"

/** The upload part of a message still on this device: its files and how far they got. */
export interface UploadState {
  readonly phase: UploadPhase
  /** Bytes the relay has, of all the message's files. */
  readonly loaded: number
  readonly total: number
  readonly files: readonly LocalFile[]
}

/** What the SDK reports as a message's uploads move (the conversation's `upload` event). */
export interface UploadEvent {
  readonly messageId: MessageId
  /** `written`: the message is in the conversation now; `discarded`: the user dropped it. */
  readonly phase: UploadPhase | "written" | "discarded"
  readonly loaded: number
  readonly total: number
  /** Why, when `phase` is `failed`. */
  readonly error?: ParleyError
}

/** A message with files, as {@link ConversationUploads.add} takes it. */
export interface OutgoingMessage {
  readonly body: string
  readonly files: readonly Blob[]
  readonly type?: string
  readonly replyTo?: MessageId
  readonly metadata?: Metadata
  readonly priority?: Priority
  readonly attachments?: readonly Attachment[]
}

/** A pending message as the window lists it (a `ChatMessage` with its uploads). */
export interface PendingUploadView extends MessageView {
  readonly status: MessageStatus
  readonly error?: ParleyError
  readonly upload: UploadState
}

/** What a conversation lends its uploads: the replica to write into, and whether the relay is reachable. */
export interface UploadHost {
  /** The replica is loaded and the conversation writable. */
  ready(): boolean
  /** The conversation is synced with the relay now. */
  online(): boolean
  /** The user is a participant, as far as the replica knows. */
  participant(): boolean
  /** Writes the message with its attachments; idempotent by id. Throws a `ParleyError` when the rules refuse it. */
  write(entry: OutboxEntry, attachments: readonly Attachment[]): void
  /** The status of message `id` in the replica, or undefined when the replica does not hold it. */
  status(id: MessageId): MessageStatus | undefined
  /** Something about the uploads changed. */
  changed(event: UploadEvent): void
}

/** Backoff between attempts after a transient failure. */
export interface UploadRetryOptions {
  /** First delay in ms (default 1000). */
  readonly minDelay?: number
  /** Longest delay in ms (default 30000). */
  readonly maxDelay?: number
}

/** What a conversation's uploads are made of (from the client). */
export interface UploadDeps {
  readonly conversationId: ConversationId
  readonly user: UserId
  readonly store: OutboxStore
  readonly http: RelayHttp
  readonly retry?: UploadRetryOptions
  readonly clock?: () => number
  readonly random?: () => number
}

/**
 * Attempts to start an upload while the relay does not know the conversation
 * yet (created offline, its creation still on the way to the relay's storage),
 * with backoff: about a minute and a half with the default delays.
 */
const NOT_FOUND_TRIES = 8

const failureOf = (error: ParleyError): StoredFailure => ({
  code: error.code,
  message: error.message,
  ...(error.rule === undefined ? {} : { rule: error.rule }),
})
const errorOf = (failure: StoredFailure): ParleyError =>
  new ParleyError(
    isErrorCode(failure.code) ? failure.code : ErrorCode.INTERNAL,
    failure.message,
    failure.rule === undefined ? undefined : { rule: failure.rule },
  )

type ObjectUrls = { create(blob: Blob): string; revoke(url: string): void } | undefined
const objectUrls: ObjectUrls =
  typeof URL !== "undefined" && typeof URL.createObjectURL === "function"
    ? { create: (blob) => URL.createObjectURL(blob), revoke: (url) => URL.revokeObjectURL(url) }
    : undefined

/**
 * The messages with files of one conversation that are not in its replica
 * yet: kept in the user's outbox on this device (bytes included, so they
 * survive a reload), uploaded one message at a time, in the order sent,
 * whenever the conversation is online; then each message is written once,
 * with the relay's attachment records, under the id fixed when it was sent.
 *
 * Transient failures (no network, 5xx, 429, an expired token) are retried
 * with backoff, resuming each file where the relay stands. A refusal (403,
 * 413, 415) fails the message with the reason and frees its bytes; the user
 * retries (sending what was uploaded) or discards it.
 */
export class ConversationUploads {
  /** Loaded from the outbox (after a reload) and added since, oldest first. */
  private readonly entries = new Map<MessageId, OutboxEntry>()
  /** The bytes handed to `add` in this page, used before the stored copy (which may have failed to store). */
  private readonly held = new Map<string, Blob>()
  /** Preview object URLs, by `messageId/index`. */
  private readonly urls = new Map<string, string>()
  /** Bytes the relay has of the file being uploaded, by message. */
  private readonly partial = new Map<MessageId, number>()
  private readonly views = new Map<MessageId, PendingUploadView>()
  /** Stores in flight by message: the upload waits for its entry to be stored. */
  private readonly storing = new Map<MessageId, Promise<void>>()
  private readonly notFound = new Map<MessageId, number>()
  /** Entries known to be in the outbox (loaded from it, or stored by this page): their absence there means removed. */
  private readonly stored = new Set<MessageId>()
  private current: { id: MessageId; abort: AbortController } | undefined
  private host: UploadHost | undefined
  private running = false
  private attempt = 0
  private timer: ReturnType<typeof setTimeout> | undefined
  private closed = false
  /** Messages the relay refused, as stored in the outbox (see {@link keepRefused}); not this queue's. */
  private readonly refusedAtLoad: OutboxEntry[] = []
  /** The conversation's work the relay refused on a removal, as stored (see {@link keepRefusedWork}). */
  private refusedWorkAtLoad: OutboxEntry | undefined
  /** Resolves once the outbox's entries of this conversation are loaded. */
  readonly loaded: Promise<void>

  constructor(private readonly deps: UploadDeps) {
    this.loaded = deps.store.list(deps.conversationId).then(
      async (all) => {
        const entries = all.filter((entry) => !entry.refusedMessage && !entry.refusedWork)
        this.refusedAtLoad.push(...all.filter((entry) => entry.refusedMessage))
        this.refusedWorkAtLoad = all.find((entry) => entry.refusedWork)
        // Previews first: a waiting message is listed with them, never without and then with.
        await Promise.all(entries.map((entry) => this.loadPreviews(entry)))
        for (const entry of entries) {
          this.stored.add(entry.messageId)
          if (!this.entries.has(entry.messageId)) this.entries.set(entry.messageId, entry)
        }
      },
      (error: unknown) => console.error("parley: the outbox of unsent files could not be read", error),
    )
  }

  /** Binds the conversation; uploads start once it is ready and online. */
  attach(host: UploadHost): void {
    this.host = host
    void this.loaded.then(() => {
      if (this.closed) return
      for (const entry of this.entries.values())
        if (!entry.written) host.changed(this.eventOf(entry, entry.failed ? "failed" : "queued"))
      this.wake()
    })
  }

  /**
   * Queues a message with files; returns its view at once (status `pending`).
   * The entry and its bytes are stored in the outbox in the background.
   */
  add(message: OutgoingMessage): PendingUploadView {
    message.files.forEach((file, i) => {
      if (!(file instanceof Blob))
        throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "files must be File or Blob objects")
      // The relay takes no empty upload: refused now rather than after the message waited for it.
      if (file.size === 0) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, `${fileName(file, i)} is empty`)
    })
    const files: OutboxFile[] = message.files.map((file, i) => ({
      name: fileName(file, i),
      mimeType: file.type,
      size: file.size,
    }))
    const entry: OutboxEntry = {
      messageId: newMessageId(),
      conversationId: this.deps.conversationId,
      body: message.body,
      createdAt: (this.deps.clock ?? Date.now)(),
      ...(message.type !== undefined ? { type: message.type } : {}),
      ...(message.replyTo !== undefined ? { replyTo: message.replyTo } : {}),
      ...(message.metadata !== undefined ? { metadata: message.metadata } : {}),
      ...(message.priority !== undefined ? { priority: message.priority } : {}),
      ...(message.attachments?.length ? { attachments: message.attachments } : {}),
      files,
    }
    const id = entry.messageId
    this.entries.set(id, entry)
    message.files.forEach((blob, i) => {
      this.held.set(key(id, i), blob)
      if (objectUrls) this.urls.set(key(id, i), objectUrls.create(blob))
    })
    const storing = this.deps.store.add(entry, message.files).then(
      () => {
        this.stored.add(id)
      },
      (error: unknown) => {
        // Still sent from memory while the page lives; only a reload would lose it.
        console.error("parley: a message's files could not be stored on this device", error)
      },
    )
    this.storing.set(id, storing)
    void storing.finally(() => this.storing.delete(id))
    this.host?.changed(this.eventOf(entry, "queued"))
    this.wake()
    return this.view(id)!
  }

  /** The messages the relay refused that the outbox held when the page loaded, with why, oldest first. */
  async storedRefusals(): Promise<{ view: MessageView; error: ParleyError }[]> {
    await this.loaded
    return this.refusedAtLoad.map((entry) => ({
      view: entry.refusedMessage!,
      error: errorOf(entry.failed ?? { code: ErrorCode.FORBIDDEN, message: "the relay refused the message" }),
    }))
  }

  /**
   * Keeps message `view`, which the relay refused with `error`, in the
   * outbox until {@link dropRefused}: the replica no longer holds it (a
   * resync rebuilt it without), and a reload would otherwise lose what the
   * user wrote without a word.
   */
  keepRefused(view: MessageView, error: ParleyError): void {
    const entry: OutboxEntry = {
      messageId: view.id,
      conversationId: this.deps.conversationId,
      body: view.body,
      createdAt: view.createdAt,
      files: [],
      failed: failureOf(error),
      refusedMessage: view,
    }
    this.deps.store.add(entry, []).catch((failure: unknown) => {
      console.error("parley: a refused message could not be kept on this device", failure)
    })
  }

  /** The work the relay refused on a removal that the outbox held when the page loaded (see {@link keepRefusedWork}). */
  async storedRefusedWork(): Promise<RefusedWork | undefined> {
    await this.loaded
    const entry = this.refusedWorkAtLoad
    if (!entry?.refusedWork) return undefined
    return {
      through: new Map(entry.refusedWork),
      error: errorOf(entry.failed ?? { code: ErrorCode.FORBIDDEN, message: "the relay refused the changes" }),
    }
  }

  /**
   * Keeps in the outbox, until {@link dropRefusedWork}, that the relay
   * refused with `work.error` the conversation's work written up to
   * `work.through` (the user removed), while the replica still holds it: a
   * reload then leaves it out too (shared `rebasePendingWork`), where it
   * would otherwise go out with the replica's sync if the user was added
   * back meanwhile.
   */
  keepRefusedWork(work: RefusedWork): void {
    const entry: OutboxEntry = {
      messageId: this.refusedWorkKey,
      conversationId: this.deps.conversationId,
      body: "",
      createdAt: 0,
      files: [],
      failed: failureOf(work.error),
      refusedWork: [...work.through],
    }
    this.refusedWorkAtLoad = entry
    this.deps.store.add(entry, []).catch((failure: unknown) => {
      console.error("parley: refused changes could not be kept on this device", failure)
    })
  }

  /** Forgets the refused work (the replica was rebuilt without it). */
  dropRefusedWork(): void {
    if (!this.refusedWorkAtLoad) return
    this.refusedWorkAtLoad = undefined
    void this.deps.store.remove(this.refusedWorkKey).catch(() => {})
  }

  /** The outbox key of {@link keepRefusedWork}'s entry: one per conversation, never a message id (random, without a colon). */
  private get refusedWorkKey(): MessageId {
    return `refused-work:${this.deps.conversationId}` as MessageId
  }

  /** Forgets refused message `id` in the outbox (the user retried or discarded it). */
  dropRefused(id: MessageId): void {
    const at = this.refusedAtLoad.findIndex((entry) => entry.messageId === id)
    if (at >= 0) this.refusedAtLoad.splice(at, 1)
    void this.deps.store.remove(id).catch(() => {})
  }

  /** Whether message `id` is one of these (not yet written). */
  has(id: MessageId): boolean {
    const entry = this.entries.get(id)
    return entry !== undefined && !entry.written
  }

  /** The messages waiting for uploads, oldest first. */
  pending(): PendingUploadView[] {
    return this.ordered()
      .filter((entry) => !entry.written)
      .map((entry) => this.view(entry.messageId)!)
  }

  /** The view of a waiting message. */
  view(id: MessageId): PendingUploadView | undefined {
    const entry = this.entries.get(id)
    if (!entry || entry.written) return undefined
    let view = this.views.get(id)
    if (!view) {
      view = this.render(entry)
      this.views.set(id, view)
    }
    return view
  }

  /**
   * Sends a failed message again: with the files the relay has, without
   * those it refused or whose bytes were freed. Throws when `id` is not a
   * failed upload.
   */
  retry(id: MessageId): void {
    const entry = this.entries.get(id)
    if (!entry?.failed || entry.written)
      throw new ParleyError(ErrorCode.NOT_FOUND, `message ${id} is not a failed upload`)
    void this.retryEntry(entry)
  }

  /** Drops a waiting or failed message and its stored bytes. Throws when `id` is not one of them. */
  discard(id: MessageId): void {
    const entry = this.entries.get(id)
    if (!entry || entry.written)
      throw new ParleyError(ErrorCode.NOT_FOUND, `message ${id} is not waiting for uploads`)
    if (this.current?.id === id) this.current.abort.abort()
    this.entries.delete(id)
    this.forget(entry)
    void this.deps.store.remove(id).catch(() => {})
    this.host?.changed({ messageId: id, phase: "discarded", loaded: 0, total: totalOf(entry) })
  }

  /** Tries now (the conversation came online, or the user asked): ends any backoff wait. */
  wake(): void {
    if (this.closed) return
    this.settleWritten()
    clearTimeout(this.timer)
    this.timer = undefined
    this.attempt = 0
    void this.run()
  }

  /**
   * Fails every waiting message with `error`: the conversation will not take
   * them (the user was removed, it was deleted). Their bytes are freed.
   */
  failAll(error: ParleyError): void {
    if (this.closed) return
    this.current?.abort.abort()
    for (const entry of this.ordered()) if (!entry.written && !entry.failed) void this.fail(entry, error)
  }

  /** Forgets written messages the relay has saved (or refused); rewrites one a reload lost. */
  settleWritten(): void {
    const host = this.host
    if (!host || this.closed || !host.ready()) return
    for (const entry of [...this.entries.values()]) {
      if (!entry.written) continue
      const status = host.status(entry.messageId)
      if (status === "pending") continue
      if (status === undefined) {
        // Written before a reload that lost the replica's copy: write it again (the id makes it once).
        try {
          host.write(entry, attachmentsOf(entry))
        } catch (error) {
          console.error("parley: a message whose files were uploaded could not be written again", error)
          this.entries.delete(entry.messageId)
          void this.deps.store.remove(entry.messageId).catch(() => {})
        }
        continue
      }
      this.entries.delete(entry.messageId)
      void this.deps.store.remove(entry.messageId).catch(() => {})
    }
  }

  /** Stops uploading and releases the previews; the outbox keeps everything for the next time. */
  close(): void {
    this.closed = true
    clearTimeout(this.timer)
    this.current?.abort.abort()
    for (const url of this.urls.values()) objectUrls?.revoke(url)
    this.urls.clear()
    this.held.clear()
  }

  // ---- internals ----

  /** Entries oldest first (those loaded from the outbox may arrive after one added in this page). */
  private ordered(): OutboxEntry[] {
    return [...this.entries.values()].sort(
      (a, b) => a.createdAt - b.createdAt || a.messageId.localeCompare(b.messageId),
    )
  }

  private async run(): Promise<void> {
    if (this.running) return
    this.running = true
    try {
      for (;;) {
        const host = this.host
        if (this.closed || !host?.ready() || !host.online()) return
        const next = this.ordered().find((e) => !e.written && !e.failed)
        if (!next) return
        try {
          await this.send(next, host)
          this.attempt = 0
        } catch (error) {
          if (this.closed || !this.entries.has(next.messageId)) continue
          if (this.transient(next, error)) {
            this.backoff(error instanceof HttpRefusal ? error.retryAfterMs : undefined)
            return
          }
          await this.fail(next, toError(error))
        }
      }
    } finally {
      this.running = false
    }
  }

  /** Uploads the entry's files that the relay lacks, then writes the message. */
  private async send(entry: OutboxEntry, host: UploadHost): Promise<void> {
    await this.storing.get(entry.messageId)
    // Another tab of this user may hold the same outbox (after a reload there): one uploads a
    // conversation's messages at a time, the other waits (a transient refusal: backoff) and then
    // picks up what it recorded.
    const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks
    if (!locks) return this.sendLocked(entry, host)
    let ran = false
    await locks.request(
      `parley:${this.deps.user}:uploads:${this.deps.conversationId}`,
      { ifAvailable: true },
      async (lock) => {
        if (!lock) return
        ran = true
        await this.sendLocked(entry, host)
      },
    )
    if (!ran) throw new HttpRefusal(ErrorCode.UNAVAILABLE, "another tab is uploading these files", 0)
  }

  /**
   * Takes in what the outbox says of the entry now (another tab may have
   * uploaded files, written or discarded the message): false when there is
   * nothing left to send.
   */
  private async refresh(entry: OutboxEntry, host: UploadHost): Promise<boolean> {
    const id = entry.messageId
    if (host.status(id) !== undefined) {
      // The replica has the message (written by another tab): this one is done with it.
      this.markWritten(entry, host)
      return false
    }
    const list = await this.deps.store.list(this.deps.conversationId).catch(() => undefined)
    if (this.entries.get(id) !== entry) return false
    if (!list) return true
    const outside = list.find((e) => e.messageId === id)
    if (!outside) {
      if (!this.stored.has(id)) return true // never stored (quota): sent from memory
      this.entries.delete(id)
      this.forget(entry)
      host.changed({ messageId: id, phase: "discarded", loaded: 0, total: totalOf(entry) })
      return false
    }
    if (outside.written || outside.failed) {
      this.entries.set(id, outside)
      this.forget(entry)
      host.changed(
        outside.failed
          ? { ...this.eventOf(outside, "failed"), error: errorOf(outside.failed) }
          : { messageId: id, phase: "written", loaded: totalOf(outside), total: totalOf(outside) },
      )
      this.settleWritten()
      return false
    }
    const files = entry.files.map((file, i) => {
      const there = outside.files[i]
      return file.attachment || !there ? file : { ...file, ...there }
    })
    this.entries.set(id, { ...entry, files })
    this.views.delete(id)
    return true
  }

  private markWritten(entry: OutboxEntry, host: UploadHost): void {
    const id = entry.messageId
    const written: OutboxEntry = { ...entry, written: true }
    this.entries.set(id, written)
    this.forget(entry)
    this.notFound.delete(id)
    host.changed({ messageId: id, phase: "written", loaded: totalOf(entry), total: totalOf(entry) })
  }

  private async sendLocked(entry: OutboxEntry, host: UploadHost): Promise<void> {
    const id = entry.messageId
    if (!(await this.refresh(entry, host))) return
    const abort = new AbortController()
    this.current = { id, abort }
    try {
      for (let i = 0; i < entry.files.length; i++) {
        const file = this.entries.get(id)?.files[i]
        if (!file || file.attachment || file.refused) continue
        const bytes = this.held.get(key(id, i)) ?? (await this.deps.store.blob(id, i))
        if (!bytes)
          throw new ParleyError(ErrorCode.NOT_FOUND, `the bytes of ${file.name} are no longer on this device`)
        this.emitProgress(id, "uploading")
        let attachment: Attachment
        try {
          attachment = await uploadFile(this.deps.http, {
            conversationId: this.deps.conversationId,
            name: file.name,
            mimeType: file.mimeType,
            bytes,
            ...(file.uploadId !== undefined ? { uploadId: file.uploadId } : {}),
            ...(file.chunkBytes !== undefined ? { chunkBytes: file.chunkBytes } : {}),
            started: (session) => this.updateFile(id, i, session),
            progress: (loaded) => {
              this.partial.set(id, loaded)
              this.emitProgress(id, "uploading")
            },
            signal: abort.signal,
          })
        } catch (error) {
          // The relay refused this file itself (too large, a type it does not take): say which.
          if (error instanceof HttpRefusal && (error.status === 413 || error.status === 415))
            await this.updateFile(id, i, { refused: failureOf(error) })
          throw error
        }
        this.partial.delete(id)
        await this.updateFile(id, i, { attachment })
      }
      const done = this.entries.get(id)
      if (!done || abort.signal.aborted) return
      // Synchronous from the check to the write: a discard cannot fall in between.
      host.write(done, attachmentsOf(done))
      this.markWritten(done, host)
      await this.deps.store.update(this.entries.get(id)!).catch(() => {})
      await this.deps.store.freeBlobs(id).catch(() => {})
      this.settleWritten()
    } finally {
      if (this.current?.id === id) this.current = undefined
    }
  }

  private transient(entry: OutboxEntry, error: unknown): boolean {
    if (isTransient(error)) return true
    // A conversation created offline may not have reached the relay's storage when its first upload starts;
    // but a user the synced replica no longer lists as a participant is refused for good.
    if (error instanceof HttpRefusal && error.status === 404 && this.host?.participant() !== false) {
      const tries = (this.notFound.get(entry.messageId) ?? 0) + 1
      this.notFound.set(entry.messageId, tries)
      return tries < NOT_FOUND_TRIES
    }
    return false
  }

  /** Waits before the next attempt: doubling delays with jitter, never shorter than the relay asked (`Retry-After`). */
  private backoff(retryAfterMs = 0): void {
    const min = this.deps.retry?.minDelay ?? 1_000
    const max = this.deps.retry?.maxDelay ?? 30_000
    const base = Math.min(max, min * 2 ** this.attempt++)
    // Jitter: tabs and devices that failed together do not retry together.
    const delay = Math.max(retryAfterMs, base * (0.5 + (this.deps.random ?? Math.random)() / 2))
    clearTimeout(this.timer)
    this.timer = setTimeout(() => {
      this.timer = undefined
      void this.run()
    }, delay)
  }

  private async fail(entry: OutboxEntry, error: ParleyError): Promise<void> {
    const id = entry.messageId
    const latest = this.entries.get(id) ?? entry
    const failed: OutboxEntry = { ...latest, failed: failureOf(error) }
    this.entries.set(id, failed)
    this.partial.delete(id)
    this.forget(failed)
    this.host?.changed({ ...this.eventOf(failed, "failed"), error })
    await this.deps.store.update(failed).catch(() => {})
    await this.deps.store.freeBlobs(id).catch(() => {})
  }

  private async retryEntry(entry: OutboxEntry): Promise<void> {
    const { failed: _, ...rest } = entry
    const gone = new ParleyError(ErrorCode.NOT_FOUND, "the file's bytes were freed when the message failed")
    const files = await Promise.all(
      rest.files.map(async (file, i) =>
        file.attachment || file.refused || this.held.has(key(entry.messageId, i))
          ? file
          : (await this.deps.store.blob(entry.messageId, i).catch(() => undefined))
            ? file
            : { ...file, refused: failureOf(gone) },
      ),
    )
    if (this.closed || this.entries.get(entry.messageId) !== entry) return
    const next: OutboxEntry = { ...rest, files }
    this.entries.set(entry.messageId, next)
    this.notFound.delete(entry.messageId)
    this.views.delete(entry.messageId)
    this.host?.changed(this.eventOf(next, "queued"))
    await this.deps.store.update(next).catch(() => {})
    this.wake()
  }

  private async updateFile(id: MessageId, index: number, change: Partial<OutboxFile>): Promise<void> {
    const entry = this.entries.get(id)
    if (!entry) return
    const files = entry.files.map((file, i) => (i === index ? { ...file, ...change } : file))
    const next = { ...entry, files }
    this.entries.set(id, next)
    this.views.delete(id)
    // Bookkeeping only: without it a reload starts this file over, which is no reason to fail the upload.
    await this.deps.store.update(next).catch(() => {})
  }

  private emitProgress(id: MessageId, phase: UploadPhase): void {
    const entry = this.entries.get(id)
    if (!entry) return
    this.views.delete(id)
    this.host?.changed(this.eventOf(entry, phase))
  }

  private eventOf(entry: OutboxEntry, phase: UploadPhase): UploadEvent {
    return { messageId: entry.messageId, phase, loaded: this.loadedOf(entry), total: totalOf(entry) }
  }

  private loadedOf(entry: OutboxEntry): number {
    let loaded = this.partial.get(entry.messageId) ?? 0
    for (const file of entry.files) if (file.attachment) loaded += file.size
    return loaded
  }

  /** Releases what the page holds of an entry's bytes: the previews and the handed-in blobs. */
  private forget(entry: OutboxEntry): void {
    this.views.delete(entry.messageId)
    entry.files.forEach((_, i) => {
      const k = key(entry.messageId, i)
      const url = this.urls.get(k)
      if (url) objectUrls?.revoke(url)
      this.urls.delete(k)
      this.held.delete(k)
    })
  }

  private async loadPreviews(entry: OutboxEntry): Promise<void> {
    if (!objectUrls || entry.written || entry.failed) return
    await Promise.all(
      entry.files.map(async (file, i) => {
        if (file.refused) return
        const blob = await this.deps.store.blob(entry.messageId, i).catch(() => undefined)
        if (blob && !this.closed) this.urls.set(key(entry.messageId, i), objectUrls.create(blob))
      }),
    )
  }

  private render(entry: OutboxEntry): PendingUploadView {
    const id = entry.messageId
    const phase: UploadPhase = entry.failed ? "failed" : this.current?.id === id ? "uploading" : "queued"
    const files: LocalFile[] = entry.files.map((file, i) => {
      const url = this.urls.get(key(id, i))
      return {
        name: file.name,
        mimeType: file.mimeType,
        size: file.size,
        uploaded: file.attachment !== undefined,
        ...(url ? { url } : {}),
        ...(file.refused ? { refused: errorOf(file.refused) } : {}),
      }
    })
    return {
      id,
      author: this.deps.user,
      body: entry.body,
      type: entry.type ?? "text",
      createdAt: entry.createdAt,
      priority: entry.priority ?? "normal",
      ...(entry.replyTo !== undefined ? { replyTo: entry.replyTo } : {}),
      attachments: attachmentsOf(entry),
      metadata: entry.metadata ?? {},
      reactions: {},
      status: entry.failed ? "failed" : "pending",
      ...(entry.failed ? { error: errorOf(entry.failed) } : {}),
      upload: { phase, loaded: this.loadedOf(entry), total: totalOf(entry), files },
    }
  }
}

const key = (id: MessageId, index: number) => `${id}/${index}`

const totalOf = (entry: OutboxEntry) =>
  entry.files.reduce((sum, file) => sum + (file.refused && !file.attachment ? 0 : file.size), 0)

/** The message's attachments: the uploaded files, in the order given, then links and object references. */
const attachmentsOf = (entry: OutboxEntry): Attachment[] => [
  ...entry.files.flatMap((file) => (file.attachment ? [file.attachment] : [])),
  ...(entry.attachments ?? []),
]

/** A File's name; a Blob has none, so it gets one from its type. */
function fileName(blob: Blob, index: number): string {
  const name = (blob as { name?: unknown }).name
  if (typeof name === "string" && name.length > 0) return name
  const extension = blob.type.split("/")[1]?.split(/[+;]/)[0]
  return `file-${index + 1}${extension ? `.${extension}` : ""}`
}

function toError(error: unknown): ParleyError {
  if (error instanceof ParleyError) return error
  return new ParleyError(ErrorCode.INTERNAL, error instanceof Error ? error.message : String(error), {
    cause: error,
  })
}
