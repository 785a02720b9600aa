import { createHash, randomBytes, timingSafeEqual } from "node:crypto"
import { ErrorCode, ParleyError } from "@parley/shared"

/**
 * What an API key may do. `act-as-user` lets a key write and read as one of the
 * app's users (the `asUser` field); without it a key acts as its own service
 * participant only. `users:erase` lets a key erase everything a user wrote
 * (GDPR): give it only to the service that handles erasure requests.
 */
export const API_SCOPES = [
  "conversations:read",
  "conversations:write",
  "messages:read",
  "messages:write",
  "events:read",
  "act-as-user",
  "users:erase",
] as const
/** One of {@link API_SCOPES}. */
export type ApiScope = (typeof API_SCOPES)[number]

/** A stored key: never its secret, only the secret's SHA-256. */
export interface ApiKeyRecord {
  /** Public part of the key (`pk_<id>_...`), its primary key. */
  readonly id: string
  /** The service's name: `actor.subject` in events, `service.<name>` as a participant. */
  readonly name: string
  readonly scopes: readonly ApiScope[]
  /** SHA-256 of the secret part, hex. */
  readonly secretHash: string
  readonly createdAt: number
  readonly revokedAt?: number
}

/**
 * Where API keys persist: one part of the relay's {@link Backend}, so keys live
 * and are backed up with the documents. Every backend passes the key store part
 * of `relay/test/conformance/backend.ts`.
 */
export interface ApiKeyStore {
  /** Stores a new key; CONFLICT when an active key already has its name. */
  create(record: ApiKeyRecord): Promise<void>
  /** The key with `id`, revoked or not. */
  get(id: string): Promise<ApiKeyRecord | undefined>
  /** Every key, revoked ones included, oldest first. */
  list(): Promise<ApiKeyRecord[]>
  /** Revokes the active key with this id or name; false when there is none. */
  revoke(idOrName: string, now: number): Promise<boolean>
}

const KEY_NAME = /^[a-z0-9][a-z0-9_-]{0,47}$/
const KEY_FORMAT = /^pk_([A-Za-z0-9]{16})_([A-Za-z0-9_-]{43})$/

/** Parses a service name: 1–48 of `a-z 0-9 _ -`, starting with a letter or digit. */
export function parseKeyName(name: string): string {
  if (!KEY_NAME.test(name))
    throw new ParleyError(
      ErrorCode.INVALID_ARGUMENT,
      `invalid key name ${JSON.stringify(name)}: 1-48 of a-z, 0-9, _ and -, starting with a letter or digit`,
    )
  return name
}

/** Parses a scope list (comma-separated or repeated). */
export function parseScopes(values: readonly string[]): ApiScope[] {
  const scopes = new Set<ApiScope>()
  for (const value of values.flatMap((v) => v.split(","))) {
    const scope = value.trim()
    if (!scope) continue
    if (!(API_SCOPES as readonly string[]).includes(scope))
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `unknown scope ${JSON.stringify(scope)}; known: ${API_SCOPES.join(", ")}`,
      )
    scopes.add(scope as ApiScope)
  }
  if (scopes.size === 0) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "a key needs at least one scope")
  return [...scopes]
}

/**
 * SHA-256 suffices (no argon2/scrypt): the secret is 256 random bits, not a
 * human password, so there is no dictionary to slow down; a fast hash keeps
 * every request's check cheap.
 */
export const hashSecret = (secret: string): string => createHash("sha256").update(secret).digest("hex")

/** A new key: the full secret (shown once) and the record to store. */
export function newApiKey(
  name: string,
  scopes: readonly ApiScope[],
  now: number = Date.now(),
): { readonly key: string; readonly record: ApiKeyRecord } {
  const id = randomBytes(12).toString("base64url").replace(/[-_]/g, "0").slice(0, 16)
  const secret = randomBytes(32).toString("base64url")
  return {
    key: `pk_${id}_${secret}`,
    record: {
      id,
      name: parseKeyName(name),
      scopes: [...scopes],
      secretHash: hashSecret(secret),
      createdAt: now,
    },
  }
}

/** Splits a presented key into id and secret; undefined when it is not shaped like a key. */
export function splitApiKey(key: string): { readonly id: string; readonly secret: string } | undefined {
  const match = KEY_FORMAT.exec(key)
  return match ? { id: match[1]!, secret: match[2]! } : undefined
}

/** True when `secret` is the one `record` was made with (constant time). */
export function secretMatches(record: ApiKeyRecord, secret: string): boolean {
  return timingSafeEqual(Buffer.from(hashSecret(secret), "hex"), Buffer.from(record.secretHash, "hex"))
}

/** A key without its hash, for listings. */
export function describeKey(record: ApiKeyRecord) {
  return {
    id: record.id,
    name: record.name,
    scopes: record.scopes,
    createdAt: new Date(record.createdAt).toISOString(),
    ...(record.revokedAt !== undefined ? { revokedAt: new Date(record.revokedAt).toISOString() } : {}),
  }
}

const conflict = (name: string) =>
  new ParleyError(ErrorCode.CONFLICT, `an active key is already named ${JSON.stringify(name)}`)

/** Keys in memory, for tests and the in-memory relay. */
export class MemoryApiKeyStore implements ApiKeyStore {
  private readonly keys = new Map<string, ApiKeyRecord>()

  async create(record: ApiKeyRecord): Promise<void> {
    for (const k of this.keys.values())
      if (k.name === record.name && k.revokedAt === undefined) throw conflict(record.name)
    this.keys.set(record.id, record)
  }

  async get(id: string): Promise<ApiKeyRecord | undefined> {
    return this.keys.get(id)
  }

  async list(): Promise<ApiKeyRecord[]> {
    return [...this.keys.values()].sort((a, b) => a.createdAt - b.createdAt)
  }

  async revoke(idOrName: string, now: number): Promise<boolean> {
    for (const [id, k] of this.keys) {
      if ((k.id === idOrName || k.name === idOrName) && k.revokedAt === undefined) {
        this.keys.set(id, { ...k, revokedAt: now })
        return true
      }
    }
    return false
  }
}

/** A row of the keys' table, as SQLite and PostgreSQL return it. */
export interface ApiKeyRow {
  id: string
  name: string
  scopes: string
  secret_hash: string
  created_at: number | string
  revoked_at: number | string | null
}

/** The record a stored row holds. */
export function recordOfRow(row: ApiKeyRow): ApiKeyRecord {
  return {
    id: row.id,
    name: row.name,
    scopes: JSON.parse(row.scopes) as ApiScope[],
    secretHash: row.secret_hash,
    createdAt: Number(row.created_at),
    ...(row.revoked_at !== null ? { revokedAt: Number(row.revoked_at) } : {}),
  }
}

export { conflict as keyNameConflict }
