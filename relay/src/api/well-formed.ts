import { ErrorCode, illFormedPath, ParleyError } from "@parley/shared"
import type { MiddlewareHandler } from "hono"

/**
 * Middleware refusing a JSON body that holds a string which is not well-formed
 * UTF-16, with 400 naming where. JSON may carry a lone surrogate (`"\ud83d"`),
 * but the documents store strings as UTF-8, which has none: the relay would
 * keep in memory what the request said while storing, syncing and reloading
 * U+FFFD in its place, and an idempotent replay compared to the request would
 * be refused as another message after a reload. Refused for every field at
 * once, rather than changed behind the sender's back. A body that is not JSON
 * is left to the route's validation.
 */
export function requireWellFormedJson(): MiddlewareHandler {
  return async (c, next) => {
    // The bodies the routes' validation parses as JSON (Hono's `validator` test of the media type).
    const mediaType = (c.req.header("content-type") ?? "").split(";")[0]!.trim()
    if (!/^application\/([\w.-]+\+)?json$/i.test(mediaType)) return next()
    // Hono keeps the parsed body: the route's validation reads this one, not the stream again.
    const body: unknown = await c.req.json().catch(() => undefined)
    const at = illFormedPath(body)
    if (at !== undefined)
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `${at}: not well-formed UTF-16 (a lone surrogate, e.g. a string cut inside an emoji); send whole characters`,
      )
    return next()
  }
}
