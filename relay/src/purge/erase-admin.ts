import { ErrorCode, isUserId, ParleyError, type UserId } from "@parley/shared"
import type { BlobStore } from "../attachments/blob-store.js"
import type { HttpRequest, RelayExtension, RunningCore } from "../extension.js"
import type { HistoryStore } from "../history/store.js"
import { sendJson } from "../http-json.js"
import { type ErasureReport, eraseUser } from "./erase-user.js"

/** What the erasure endpoint needs besides the running core. */
export interface ErasureAdminOptions {
  /** Resolves with the caller's principal kind; throws UNAUTHORIZED for a bad token. */
  verify(token: string | null | undefined): Promise<{ readonly kind: string }>
  /** Every stored document's name. */
  list(): Promise<string[]>
  /** The sealed segments, when the relay seals history. */
  readonly history?: HistoryStore
  /** Where attachments are kept, when the relay serves them: the user's uploads are erased too. */
  readonly blobs?: BlobStore
}

const PATH = /^\/admin\/users\/([^/]+)\/content$/

/**
 * `DELETE /admin/users/{user}/content`, for operators (a service token in
 * `Authorization: Bearer <token>`, like `/admin/dead-letters`): erases
 * everything `user` wrote while the relay runs (`eraseUser`), through the
 * relay's own update path. Answers `{ user, conversations, messages }` once
 * every conversation is written and purged. One erasure runs at a time.
 */
export class ErasureAdmin implements RelayExtension {
  readonly name = "erasure-admin"
  private core: RunningCore | undefined
  private running: Promise<unknown> = Promise.resolve()

  constructor(private readonly options: ErasureAdminOptions) {}

  start(core: RunningCore): void {
    this.core = core
  }

  /**
   * Erases everything `user` wrote (`eraseUser`), after any erasure already
   * running: the admin route and the HTTP API's `DELETE /v1/users/{user}/content`
   * share this one queue.
   */
  erase(user: UserId): Promise<ErasureReport> {
    const core = this.core
    if (!core) return Promise.reject(new ParleyError(ErrorCode.UNAVAILABLE, "the relay is not running"))
    const run = this.running.then(async () => {
      const report = await eraseUser(
        core,
        await this.options.list(),
        this.options.history,
        user,
        this.options.blobs,
      )
      if (report.damaged.length > 0) throw damagedLeft(report)
      return report
    })
    this.running = run.catch(() => undefined)
    return run
  }

  async httpRequest({ req, res }: HttpRequest): Promise<boolean> {
    const match = PATH.exec(new URL(req.url ?? "/", "http://relay").pathname)
    if (!match) return false
    try {
      const header = req.headers.authorization
      const principal = await this.options.verify(header?.startsWith("Bearer ") ? header.slice(7) : undefined)
      if (principal.kind !== "service")
        throw new ParleyError(ErrorCode.FORBIDDEN, "erasure needs a service token")
      if (req.method !== "DELETE") {
        sendJson(res, 405, { error: { code: ErrorCode.INVALID_ARGUMENT, message: "use DELETE" } })
        return true
      }
      const user = decodeURIComponent(match[1]!)
      if (!isUserId(user)) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "not a user id")
      sendJson(res, 200, { user, ...(await this.erase(user)) })
    } catch (error) {
      const code = error instanceof ParleyError ? error.code : ErrorCode.INTERNAL
      const status =
        code === ErrorCode.UNAUTHORIZED
          ? 401
          : code === ErrorCode.FORBIDDEN
            ? 403
            : code === ErrorCode.INVALID_ARGUMENT
              ? 400
              : code === ErrorCode.UNAVAILABLE ||
                  code === ErrorCode.STORAGE_UNAVAILABLE ||
                  code === ErrorCode.DAMAGED
                ? 503
                : 500
      sendJson(res, status, { error: { code, message: (error as Error).message } })
    }
    return true
  }
}

/** The refusal of an erasure that left damaged conversations (it erased the others). */
export function damagedLeft(report: ErasureReport): ParleyError {
  return new ParleyError(
    ErrorCode.DAMAGED,
    `erased ${report.messages} messages in ${report.conversations - report.damaged.length} conversations, but not in ${report.damaged.length} whose stored state is damaged (${report.damaged.join(", ")}): restore them (parley-relay damaged restore) and erase again`,
  )
}
