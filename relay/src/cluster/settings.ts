import { createHash, createHmac, createPublicKey, randomBytes } from "node:crypto"
import type { Redis } from "ioredis"
import type pg from "pg"
import type { AuthKey } from "../auth.js"
import type { Logger } from "../log.js"
import { ExitCode, StartupError } from "../startup-error.js"
import type { ClusterMetrics } from "./metrics.js"

/**
 * The settings every relay of one cluster must share, by the name errors,
 * logs, metrics and `/readyz` give them, with the flags that set each (relay
 * README, "Settings every relay shares", says why each must match). Settings
 * not listed here (ports, hosts, per-relay limits, log level) may differ.
 * `storage` comes first: relays on different databases cannot compare the
 * rest (see {@link settingsDiffering}).
 */
export const CLUSTER_SETTINGS = {
  storage: "--database-url: the PostgreSQL database and schema",
  auth: "the token key: --auth-secret, --auth-public-key or --auth-jwks-url (and --dev)",
  "auth-issuer": "--auth-issuer",
  "auth-audience": "--auth-audience",
  "token-expiry": "--allow-tokens-without-exp, --max-token-lifetime-ms",
  "lease-ms": "--lease-ms",
  "lease-stall-ms": "--lease-stall-ms",
  "delivery-targets": "--hooks modules, --webhook URLs, Web Push (VAPID keys) on or off",
  "webhook-secret": "--webhook-secret",
  "push-keys": "--vapid-public-key, --vapid-private-key",
  epochs:
    "--epoch-garbage-bytes, --epoch-garbage-interval-ms, --epoch-stock-grace-ms, --history-epoch-client-ids",
  history: "--history-segment-size and the other --history-* flags",
  "update-limits":
    "the update cost limits: --max-update-structs, --max-update-values, ... --max-delete-visits",
  "event-retention": "--event-retention-hours, --event-retention-events",
} as const
/** The name of one of {@link CLUSTER_SETTINGS}. */
export type ClusterSettingName = keyof typeof CLUSTER_SETTINGS

/** The values of the shared settings but `storage` (which the database gives), as canonical strings. */
export type SharedSettingValues = Readonly<Record<Exclude<ClusterSettingName, "storage">, string>>
/** The shared settings the relay knows; the cluster adds its own (the lease timings). */
export type RelaySettingValues = Omit<SharedSettingValues, "lease-ms" | "lease-stall-ms">

/** What {@link sharedSettingValues} reads from a relay's options. */
export interface SharedSettingsInput {
  readonly auth?: AuthKey
  readonly dev: boolean
  readonly issuer?: string
  readonly audience?: string
  readonly allowTokensWithoutExp: boolean
  readonly maxTokenLifetimeMs: number
  /** The delivery targets' names (`hook:<module>`, `webhook:<url>`, `inbox`, `push`, ...). */
  readonly deliveryTargets: readonly string[]
  readonly webhookSecret?: string
  /** The VAPID public key, when this relay sends Web Push with keys given to it (not dev mode's own). */
  readonly vapidPublicKey?: string
  readonly epochs: Readonly<Record<string, number>>
  readonly history: Readonly<Record<string, number>> | false
  /** The update cost limits a conversation's owner judges its changes by. */
  readonly updateLimits: Readonly<Record<string, number>>
  readonly eventRetention: Readonly<Record<string, number>>
}

/** Object keys sorted, so that two relays write one value the same way. */
const canonical = (value: unknown): string =>
  JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1)))
      : v,
  )

/** The token key as one string: a PEM's key material rather than its text (line breaks, comments). */
function keyValue(key: AuthKey | undefined, dev: boolean): string {
  const mode = dev ? "dev+" : ""
  if (!key) return `${mode}none`
  if (key.kind === "secret") return `${mode}secret:${key.secret}`
  if (key.kind === "jwks") return `${mode}jwks:${key.url}`
  let material: string
  try {
    material = createPublicKey(key.pem).export({ type: "spki", format: "der" }).toString("base64")
  } catch {
    material = key.pem
  }
  return `${mode}public-key:${material}`
}

/**
 * The shared settings of a relay, as canonical strings. They hold secrets
 * (the token secret, the webhook secret): they never leave the relay but
 * through {@link digestSettings}.
 */
export function sharedSettingValues(input: SharedSettingsInput): RelaySettingValues {
  return {
    auth: keyValue(input.auth, input.dev),
    "auth-issuer": input.issuer ?? "",
    "auth-audience": input.audience ?? "",
    "token-expiry": canonical({
      allowWithoutExp: input.allowTokensWithoutExp,
      maxLifetimeMs: input.maxTokenLifetimeMs,
    }),
    "delivery-targets": canonical([...input.deliveryTargets].sort()),
    "webhook-secret": input.webhookSecret ?? "",
    "push-keys": input.vapidPublicKey ?? "",
    epochs: canonical(input.epochs),
    history: canonical(input.history),
    "update-limits": canonical(input.updateLimits),
    "event-retention": canonical(input.eventRetention),
  }
}

/** Per setting, the digest a relay publishes. */
export type SettingDigests = Readonly<Record<ClusterSettingName, string>>

/**
 * The digests of `values` under the cluster's `salt` (HMAC-SHA256, keyed by
 * the salt, of a fixed label, the setting's name and its value), and of the
 * storage (a SHA-256 of the salt: relays on one database share it).
 *
 * Why keyed by a salt kept in PostgreSQL: a digest then says nothing to
 * someone who reads Redis alone, not even whether two clusters share a
 * secret, and a precomputed table of common secrets is no use. Someone who
 * reads both could test guesses of a weak `--auth-secret` against it, as
 * they could against any token signed with it.
 */
export function digestSettings(values: SharedSettingValues, salt: Buffer): SettingDigests {
  const digests: Record<string, string> = {
    storage: createHash("sha256").update("parley cluster storage v1\0").update(salt).digest("base64url"),
  }
  for (const [name, value] of Object.entries(values))
    digests[name] = createHmac("sha256", salt)
      .update(`parley cluster setting v1\0${name}\0${value}`)
      .digest("base64url")
  return digests as SettingDigests
}

/**
 * The names of the settings whose digests differ: only `storage` when the
 * storage does (the other digests are made with another database's salt,
 * and would all differ whatever the settings).
 */
export function settingsDiffering(
  mine: SettingDigests,
  theirs: Partial<SettingDigests>,
): ClusterSettingName[] {
  if (mine.storage !== theirs.storage) return ["storage"]
  return (Object.keys(CLUSTER_SETTINGS) as ClusterSettingName[]).filter((name) => mine[name] !== theirs[name])
}

/**
 * The table holding the cluster's salt (one row, made by the first relay):
 * the same for every relay of the database, and random, so the storage's
 * digest tells databases apart whatever URL each relay reaches them by.
 */
export const CLUSTER_IDENTITY_SCHEMA = `
CREATE TABLE IF NOT EXISTS parley_cluster_identity (
  one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
  salt BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
`

/** The cluster's salt, made by the first relay to ask. */
export async function clusterSalt(pool: pg.Pool): Promise<Buffer> {
  await pool.query("INSERT INTO parley_cluster_identity (salt) VALUES ($1) ON CONFLICT (one) DO NOTHING", [
    randomBytes(32),
  ])
  const { rows } = await pool.query<{ salt: Buffer }>("SELECT salt FROM parley_cluster_identity")
  return rows[0]!.salt
}

/** Default of {@link SettingsCheckOptions.refreshMs}: how often a relay writes its record again and reads the others'. */
export const SETTINGS_REFRESH_MS = 5000
/** Default of {@link SettingsCheckOptions.ttlMs}: a relay that stops refreshing its record is forgotten after this. */
export const SETTINGS_TTL_MS = 15_000

/** One relay's record in `<prefix>relay-settings` (a hash, by relay id). */
interface SettingsRecord {
  readonly joinedAt: number
  readonly expiresAt: number
  /** Started with `--cluster-config-change`: its differences were declared. */
  readonly change: boolean
  readonly settings: Partial<SettingDigests>
}

/** How {@link SettingsCheck} runs. */
export interface SettingsCheckOptions {
  readonly redis: Redis
  readonly prefix: string
  readonly relayId: string
  readonly log: Logger
  readonly metrics: ClusterMetrics
  readonly digests: SettingDigests
  /** `--cluster-config-change`: join a cluster whose relays have other settings (a deliberate change). */
  readonly change: boolean
  readonly refreshMs?: number
  readonly ttlMs?: number
}

/** Whether this relay's settings agree with the cluster's, for `/readyz`. */
export type SettingsState =
  | { readonly agreed: true }
  | {
      readonly agreed: false
      /** The settings this relay has that a relay which joined before it does not. */
      readonly settings: readonly ClusterSettingName[]
      readonly since: number
    }

/**
 * Publishes this relay's setting digests in Redis (`<prefix>relay-settings`,
 * one field per relay, expiring {@link SETTINGS_TTL_MS} after its relay last
 * wrote it) and compares them with the other relays'.
 *
 * At start ({@link SettingsCheck.join}) a relay whose settings differ from a
 * live relay's is refused, unless it was given `--cluster-config-change`.
 * While running (every {@link SETTINGS_REFRESH_MS}), a difference found (two
 * relays started at once, each seeing nobody) is logged as an error and
 * counted by every relay that sees it, and the relay that joined later is
 * not ready: the newcomer is the one the load balancer leaves, not the
 * cluster that served before it.
 */
export class SettingsCheck {
  private readonly refreshMs: number
  private readonly ttlMs: number
  private readonly key: string
  private joinedAt = 0
  private timer: NodeJS.Timeout | undefined
  private checking = false
  private closed = false
  private current: SettingsState = { agreed: true }
  /** Relays already reported, with what differed: each difference is logged and counted once. */
  private readonly reported = new Map<string, string>()

  private constructor(private readonly options: SettingsCheckOptions) {
    this.refreshMs = options.refreshMs ?? SETTINGS_REFRESH_MS
    this.ttlMs = options.ttlMs ?? SETTINGS_TTL_MS
    this.key = `${options.prefix}relay-settings`
  }

  /**
   * Compares this relay's settings with those of the live relays, then
   * publishes them and keeps checking. Rejects with a {@link StartupError}
   * (exit code 2, rule `cluster-settings`) naming the settings that differ
   * when this relay would join a cluster whose relays have other settings,
   * unless `change` declares it.
   */
  static async join(options: SettingsCheckOptions): Promise<SettingsCheck> {
    const check = new SettingsCheck(options)
    check.refuseIfDiffering(await check.others(), true)
    check.joinedAt = Date.now()
    await check.publish()
    // Two relays started at once each found nobody: the later one (read after both published) yields.
    try {
      check.refuseIfDiffering(
        (await check.others()).filter(([id, record]) => check.before(id, record)),
        false,
      )
    } catch (error) {
      await check.close()
      throw error
    }
    check.timer = setInterval(() => void check.refresh(), check.refreshMs)
    check.timer.unref()
    return check
  }

  /** Whether this relay's settings agree with those of every relay that joined before it. */
  get state(): SettingsState {
    return this.current
  }

  /** Whether `record` (relay `id`'s) joined before this relay. */
  private before(id: string, record: SettingsRecord): boolean {
    return record.joinedAt < this.joinedAt || (record.joinedAt === this.joinedAt && id < this.options.relayId)
  }

  /** Throws when `others` have other settings and no change was declared; else warns of a declared one (`warn`). */
  private refuseIfDiffering(others: readonly (readonly [string, SettingsRecord])[], warn: boolean): void {
    const differing = new Set<ClusterSettingName>()
    for (const [, record] of others)
      for (const name of settingsDiffering(this.options.digests, record.settings)) differing.add(name)
    if (differing.size === 0) return
    const names = [...differing]
    const listed = names.map((name) => `${name} (${CLUSTER_SETTINGS[name]})`).join("; ")
    if (this.options.change) {
      if (warn)
        this.options.log.warn(
          { settings: names, relays: others.length },
          "joining a cluster whose relays have other settings, as --cluster-config-change allows: restart every relay with the new settings, then drop the flag",
        )
      return
    }
    for (const name of names) this.options.metrics.settingsMismatches.inc({ setting: name })
    throw new StartupError(
      ExitCode.CONFIG,
      `the cluster's relays have other settings: ${listed}. Give every relay of the cluster the same values, ` +
        'or --cluster-config-change while changing them on purpose (relay README, "Settings every relay shares")',
      { rule: "cluster-settings" },
    )
  }

  /** The live records of the other relays; expired ones are removed. */
  private async others(): Promise<[string, SettingsRecord][]> {
    const fields = await this.options.redis.hgetall(this.key)
    const now = Date.now()
    const live: [string, SettingsRecord][] = []
    const expired: string[] = []
    for (const [id, text] of Object.entries(fields)) {
      if (id === this.options.relayId) continue
      let record: SettingsRecord
      try {
        record = JSON.parse(text) as SettingsRecord
      } catch {
        expired.push(id)
        continue
      }
      if (!(record.expiresAt > now)) expired.push(id)
      else live.push([id, record])
    }
    // A relay that died leaves its record: gone once it stops refreshing, with nothing to clean up by hand.
    if (expired.length > 0) await this.options.redis.hdel(this.key, ...expired)
    return live
  }

  private async publish(): Promise<void> {
    const record: SettingsRecord = {
      joinedAt: this.joinedAt,
      expiresAt: Date.now() + this.ttlMs,
      change: this.options.change,
      settings: this.options.digests,
    }
    await this.options.redis
      .multi()
      .hset(this.key, this.options.relayId, JSON.stringify(record))
      // The whole hash goes once no relay of the cluster writes it any more.
      .pexpire(this.key, this.ttlMs)
      .exec()
  }

  private async refresh(): Promise<void> {
    if (this.checking || this.closed) return
    this.checking = true
    try {
      // Written again every time: a Redis that restarted lost it.
      await this.publish()
      this.compare(await this.others())
    } catch (error) {
      // Redis failing is reported on /readyz already; the last comparison stands meanwhile.
      this.options.log.debug({ err: error }, "could not compare settings with the other relays")
    } finally {
      this.checking = false
    }
  }

  /** Logs and counts each new difference, sets the gauge, and this relay's readiness. */
  private compare(others: readonly (readonly [string, SettingsRecord])[]): void {
    const { log, metrics, change } = this.options
    const perSetting = new Map<ClusterSettingName, number>()
    const mineAgainstEarlier = new Set<ClusterSettingName>()
    const seen = new Set<string>()
    for (const [id, record] of others) {
      const names = settingsDiffering(this.options.digests, record.settings)
      if (names.length === 0) continue
      seen.add(id)
      for (const name of names) perSetting.set(name, (perSetting.get(name) ?? 0) + 1)
      const earlier = this.before(id, record)
      if (earlier && !change) for (const name of names) mineAgainstEarlier.add(name)
      const summary = names.join(",")
      if (this.reported.get(id) === summary) continue
      this.reported.set(id, summary)
      const declared = earlier ? change : record.change
      if (declared) {
        log.warn(
          { relay: id, settings: names, joinedBefore: earlier },
          "a relay of the cluster has other settings, a declared change (--cluster-config-change)",
        )
        continue
      }
      for (const name of names) metrics.settingsMismatches.inc({ setting: name })
      log.error(
        { relay: id, settings: names, joinedBefore: earlier },
        earlier
          ? "this relay's settings differ from those of a relay that joined before it: not ready until they agree (restart it with the cluster's settings)"
          : "a relay joined the cluster with other settings: it is not ready; restart it with the cluster's settings",
      )
    }
    for (const id of this.reported.keys()) if (!seen.has(id)) this.reported.delete(id)
    for (const name of Object.keys(CLUSTER_SETTINGS) as ClusterSettingName[])
      metrics.settingsDiffer.set({ setting: name }, perSetting.get(name) ?? 0)
    if (mineAgainstEarlier.size === 0) this.current = { agreed: true }
    else if (this.current.agreed)
      this.current = { agreed: false, settings: [...mineAgainstEarlier], since: Date.now() }
    else this.current = { ...this.current, settings: [...mineAgainstEarlier] }
  }

  /** Stops checking and removes this relay's record. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearInterval(this.timer)
    await this.options.redis.hdel(this.key, this.options.relayId).catch(() => undefined)
  }
}
