import { ErrorCode, ParleyError } from "./errors.js"

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
  return keys.reverse().join(".") || "(value)"
}

/**
 * Where in `value` (a string, or plain JSON) a string, or an object's key, is
 * not well-formed UTF-16 — it holds a lone surrogate, such as a string cut in
 * the middle of an emoji — as a path like `metadata.tags.2` (`(value)` for
 * `value` itself); undefined when every string is well-formed. Walked with a
 * stack of its own, not recursion: a value may nest deeper than the call stack
 * goes.
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
 * Throws INVALID_ARGUMENT when `value` holds a string that is not well-formed
 * UTF-16, naming where (`what`, then the path inside `value`). Documents store strings as UTF-8, which has no lone surrogates: Yjs
 * would keep the writer's string in its memory while storing and syncing
 * U+FFFD in its place, so the writer would show what nobody else sees, and
 * its own copy would differ from the stored one after a reload. Refused
 * rather than changed behind the writer's back.
 */
export function assertWellFormed(value: unknown, what?: string): void {
  const at = illFormedPath(value)
  if (at === undefined) return
  const where = what === undefined ? at : at === "(value)" ? what : `${what}: ${at}`
  throw new ParleyError(
    ErrorCode.INVALID_ARGUMENT,
    `${where}: not well-formed UTF-16 (a lone surrogate, e.g. a string cut inside an emoji); send whole characters`,
  )
}
