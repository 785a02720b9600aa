import { ErrorCode, ParleyError } from "@parley/shared"
import { RateLimiter } from "../rate-limit.js"
import { storageUnavailable } from "../storage/guard.js"
import { type ApiKeyRecord, type ApiKeyStore, secretMatches, splitApiKey } from "./keys.js"

/**
 * How long a key read from storage is trusted, in ms: a key revoked with
 * `parley-relay keys revoke` (another process, which cannot tell the relay)
 * is refused at most this long after, and a busy key costs one storage read
 * per this period rather than one per request.
 */
export const DEFAULT_KEY_CACHE_MS = 5_000

/**
 * Reads of key ids not known to exist, per second across the relay (twice that in a burst): a
 * flood of made-up ids (each a storage read, on PostgreSQL a pooled connection) is answered 429
 * beyond it without reading. The ids of the stored keys are listed at the first request, so keys
 * that exist are read again whenever their cache time ends, flood or not, from the start on; a key
 * made while the relay runs may meet the 429 while a flood lasts, up to 10 s (the next listing).
 */
export const UNKNOWN_KEY_READS_PER_SECOND = 50

/** Longest the stored keys' ids go unlisted again while made-up ids meet the limit (a new key's wait). */
const LIST_AGAIN_MS = 10_000

/** What a {@link CachedApiKeyStore} is given besides the store. */
export interface KeyCacheOptions {
  /**
   * Whether storage answers (the relay's `StorageGuard`): while it serves no reads, no key is read
   * from it (a full disk, which refuses writes only, still serves them: keys are read as usual).
   */
  readonly storage?: { readonly available: boolean; readonly readable?: boolean }
  /** How long a key read is trusted, in ms (default {@link DEFAULT_KEY_CACHE_MS}). */
  readonly ttlMs?: number
  /** Default {@link UNKNOWN_KEY_READS_PER_SECOND}. */
  readonly unknownReadsPerSecond?: number
  readonly now?: () => number
}

/** A key read (or being read) by a {@link CachedApiKeyStore}. */
interface KnownKey {
  readonly record: Promise<ApiKeyRecord | undefined>
  readonly at: number
  /** The record once read, kept while it is read again (see {@link CachedApiKeyStore.holds}). */
  read: ApiKeyRecord | undefined
}

/**
 * An {@link ApiKeyStore} that remembers the keys it read for a few seconds,
 * so that authenticating a request does not read storage each time; and
 * that, while storage is failing, refuses a key it does not remember at once
 * with the retryable STORAGE_UNAVAILABLE instead of waiting for the storage
 * deadline: the answer would be that error anyway, only later. Keys read
 * before the failure keep working until they are {@link DEFAULT_KEY_CACHE_MS}
 * old, never longer, so a revocation takes effect within that bound whether
 * storage answers or not.
 *
 * Only keys that exist are remembered (revoked ones too): a prober presenting
 * made-up ids cannot grow the cache.
 */
export class CachedApiKeyStore implements ApiKeyStore {
  private readonly known = new Map<string, KnownKey>()
  private readonly ttlMs: number
  private readonly now: () => number
  /** Ids read and found (revoked ones too): as many as keys were ever made. */
  private readonly exist = new Set<string>()
  private readonly unknownReads: RateLimiter
  /** The listing of the stored keys' ids (see {@link listExisting}), and when it was asked for. */
  private listing: Promise<void> | undefined
  private listedAt = 0

  constructor(
    private readonly inner: ApiKeyStore,
    private readonly options: KeyCacheOptions = {},
  ) {
    this.ttlMs = options.ttlMs ?? DEFAULT_KEY_CACHE_MS
    this.now = options.now ?? Date.now
    const perSecond = options.unknownReadsPerSecond ?? UNKNOWN_KEY_READS_PER_SECOND
    this.unknownReads = new RateLimiter(perSecond, 2 * perSecond, this.now)
  }

  async get(id: string): Promise<ApiKeyRecord | undefined> {
    // Which keys exist is known from a listing, not only from keys seen since the start: after a
    // restart, a flood of made-up ids took the unknown ids' budget from keys that exist (an outside probe).
    if (!this.listing) await this.listExisting()
    const cached = this.known.get(id)
    if (cached && this.now() - cached.at < this.ttlMs) return cached.record
    const storage = this.options.storage
    if (storage && !(storage.readable ?? storage.available))
      throw storageUnavailable("storage is failing: the API key cannot be checked")
    if (!this.exist.has(id) && !this.unknownReads.take()) {
      // A key made meanwhile (by `parley-relay keys create`, another process) is let in by the next listing.
      void this.listExisting(LIST_AGAIN_MS)
      throw new ParleyError(ErrorCode.RATE_LIMITED, "too many requests with unknown API keys: retry later")
    }
    return this.read(id)
  }

  /**
   * True when `presented` (a whole key, `pk_<id>_<secret>`) is a key this
   * cache read (at any time since the start, or since the last revocation
   * through it), not revoked then, whose secret matches: a SHA-256 and a map
   * lookup, no storage read. For letting a key in from an address whose
   * failed verifications are spent (see `AddressLimiter`); the request then
   * checks its key as any other ({@link get}: read again once the cache time
   * is over, so a key revoked meanwhile is still refused).
   */
  holds(presented: string): boolean {
    const parts = splitApiKey(presented)
    const record = parts && this.known.get(parts.id)?.read
    return record !== undefined && record.revokedAt === undefined && secretMatches(record, parts!.secret)
  }

  /**
   * Adds every stored key's id to the ids known to exist: once, and again
   * when the last listing is older than `olderThanMs`. Failing, it leaves them
   * as they are (keys are then known as they are read).
   */
  private listExisting(olderThanMs = Number.POSITIVE_INFINITY): Promise<void> {
    if (this.listing && this.now() - this.listedAt < olderThanMs) return this.listing
    this.listedAt = this.now()
    this.listing = this.inner.list().then(
      (records) => {
        for (const record of records) this.exist.add(record.id)
      },
      () => {},
    )
    return this.listing
  }

  private read(id: string): Promise<ApiKeyRecord | undefined> {
    const now = this.now()
    // One read for the requests that arrive while it runs (a burst of one key's requests).
    // The record read before stays until this read settles: a key checked again is still held meanwhile.
    const entry: KnownKey = { record: this.inner.get(id), at: now, read: this.known.get(id)?.read }
    this.known.set(id, entry)
    const forget = () => {
      if (this.known.get(id) === entry) this.known.delete(id)
    }
    entry.record.then((record) => {
      if (record) {
        this.exist.add(id)
        entry.read = record
      } else forget()
    }, forget)
    return entry.record
  }

  create(record: ApiKeyRecord): Promise<void> {
    return this.inner.create(record)
  }

  list(): Promise<ApiKeyRecord[]> {
    return this.inner.list()
  }

  /** Revokes the key; one revoked through this store (in this process) is refused from the next request on. */
  async revoke(idOrName: string, now: number): Promise<boolean> {
    const revoked = await this.inner.revoke(idOrName, now)
    // Rare enough to forget every key rather than look for the one meant (by id or name).
    this.known.clear()
    return revoked
  }
}
