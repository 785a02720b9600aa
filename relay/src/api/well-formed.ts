import { ErrorCode, ParleyError } from "@parley/shared"
import type { MiddlewareHandler } from "hono"

/** A surrogate code unit not paired with its other half (a `u` regex reads pairs as one code point). */
const LONE_SURROGATE = /\p{Surrogate}/u

/** Whether `s` is well-formed UTF-16 (`String.prototype.isWellFormed`, which the compile target lacks). */
const wellFormed = (s: string): boolean => !LONE_SURROGATE.test(s)

/** A value met in a body, with how it was reached (its path is built only when it is reported). */
interface Visit {
  readonly value: unknown
  readonly key: string
  readonly parent: Visit | undefined
}

const pathOf = (visit: Visit): string => {
  const keys: string[] = []
  for (let at: Visit | undefined = visit; at?.parent; at = at.parent) keys.push(at.key)
  return keys.reverse().join(".") || "(body)"
}

/**
 * Where in `value` (a parsed JSON body) a string, or an object's key, is not
 * well-formed UTF-16 — it holds a lone surrogate, such as a string cut in the
 * middle of an emoji — as a path like `metadata.tags.2`; undefined when every
 * string is well-formed. Walked with a stack of its own, not recursion: a body
 * may nest deeper than the call stack goes.
 */
export function illFormedPath(value: unknown): string | undefined {
  const stack: Visit[] = [{ value, key: "", parent: undefined }]
  for (let visit = stack.pop(); visit; visit = stack.pop()) {
    if (typeof visit.value === "string") {
      if (!wellFormed(visit.value)) return pathOf(visit)
    } else if (typeof visit.value === "object" && visit.value !== null) {
      for (const [key, item] of Object.entries(visit.value)) {
        const child = { value: item, key, parent: visit }
        if (!wellFormed(key)) return pathOf(child)
        stack.push(child)
      }
    }
  }
  return undefined
}

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
