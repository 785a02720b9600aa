import { ErrorCode, ParleyError } from "./errors.js"

/** Deepest a value nests (objects and arrays) and still counts as plain JSON. */
const MAX_DEPTH = 32

/**
 * Values a conversation document may hold: what JSON can say, nothing more.
 * Yjs's `ContentAny` also carries `undefined`, bigints, byte arrays and objects
 * whose `__proto__` key swapped their prototype (so that fields read through
 * it but never reach other replicas); the validators assume JSON. The relay
 * refuses any other value; the operations refuse it before writing.
 */
export function isPlainJson(value: unknown, depth = 0): boolean {
  if (depth > MAX_DEPTH) return false
  if (value === null || typeof value === "string" || typeof value === "boolean") return true
  if (typeof value === "number") return Number.isFinite(value)
  if (Array.isArray(value)) {
    if (Object.getPrototypeOf(value) !== Array.prototype) return false
    for (const v of value) if (!isPlainJson(v, depth + 1)) return false
    return true
  }
  if (typeof value !== "object" || Object.getPrototypeOf(value) !== Object.prototype) return false
  for (const key of Object.keys(value)) {
    if (!isPlainJson((value as Record<string, unknown>)[key], depth + 1)) return false
  }
  return true
}

/**
 * `value` without the object keys whose value is `undefined`, at any depth,
 * as `JSON.stringify` would leave them out (`{ title: maybeTitle }` is
 * ordinary JavaScript); a copy where any is left out. Anything else is kept
 * as it is, for {@link plainJsonOf} to refuse.
 */
function withoutUndefined<T>(value: T, depth = 0): T {
  if (depth > MAX_DEPTH || typeof value !== "object" || value === null) return value
  if (Array.isArray(value)) {
    const kept = value.map((v: unknown) => withoutUndefined(v, depth + 1))
    return (kept.some((v, i) => v !== value[i]) ? kept : value) as T
  }
  if (Object.getPrototypeOf(value) !== Object.prototype) return value
  const entries = Object.entries(value)
  let changed = false
  const kept: [string, unknown][] = []
  for (const [key, v] of entries) {
    if (v === undefined) {
      changed = true
      continue
    }
    const w = withoutUndefined(v, depth + 1)
    if (w !== v) changed = true
    kept.push([key, w])
  }
  // fromEntries defines each key as data, "__proto__" too (an assignment would set the prototype).
  return changed ? (Object.fromEntries(kept) as T) : value
}

/**
 * `value` as it is written to a conversation document: its `undefined` object
 * keys left out (see {@link withoutUndefined}); throws INVALID_ARGUMENT when
 * what remains is not plain JSON (a function, a symbol, NaN or Infinity, a
 * bigint, a byte array, a Map, a Date, an instance of a class). Written as
 * it came, such a value was refused by the relay after the fact, and every
 * later change of the device to that conversation with it (an outside probe).
 */
export function plainJsonOf<T>(value: T, what: string): T {
  const kept = withoutUndefined(value)
  if (!isPlainJson(kept))
    throw new ParleyError(
      ErrorCode.INVALID_ARGUMENT,
      `${what} holds plain JSON only (strings, finite numbers, booleans, null, arrays and plain objects)`,
    )
  return kept
}
