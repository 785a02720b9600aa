import { ErrorCode, ParleyError } from "@parley/shared"
import { problemOf } from "../api/problem.js"
import type { HttpRequest, RelayExtension } from "../extension.js"

/** Whether `path` is one of the push routes (`PushExtension`'s). */
export function isPushPath(path: string): boolean {
  return (
    path === "/v1/push/public-key" ||
    path === "/v1/me/push-subscriptions" ||
    path.startsWith("/v1/me/push-subscriptions/")
  )
}

/**
 * On a relay without push (no VAPID keys): the push routes answer 404 "push
 * is off", as link previews do when off. Before, they fell through to the
 * HTTP API, which answered a user's token 401 "a valid API key is required"
 * and counted it as a failed sign-in of the address: an app calling
 * `registerPush` 120 times locked everyone behind its NAT out (an outside
 * probe). Placed where `PushExtension` would be.
 */
export class PushOff implements RelayExtension {
  readonly name = "push-off"

  async httpRequest({ req, res }: HttpRequest): Promise<boolean> {
    if (!isPushPath((req.url ?? "/").split("?")[0]!)) return false
    const error = new ParleyError(ErrorCode.NOT_FOUND, "push is off on this relay (it has no VAPID keys)")
    res.writeHead(404, { "content-type": "application/problem+json", "cache-control": "no-store" })
    res.end(JSON.stringify(problemOf(error, 404)))
    return true
  }
}
