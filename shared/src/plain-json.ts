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
 * A copy of `value` made of fresh arrays and plain objects, each property
 * read once, without the object keys whose value is `undefined` (as
 * `JSON.stringify` leaves them out: `{ title: maybeTitle }` is ordinary
 * JavaScript). What is checked is what is written: a getter or a Proxy read
 * again by the write could hand it another value than the check saw (an
 * outside probe wrote a bigint that way). Anything else is kept as it is,
 * for {@link plainJsonOf} to refuse.
 */
function plainCopy<T>(value: T, depth = 0): T {
  if (depth > MAX_DEPTH || typeof value !== "object" || value === null) return value
  if (Array.isArray(value)) {
    if (Object.getPrototypeOf(value) !== Array.prototype) return value
    return Array.from(value, (v: unknown) => plainCopy(v, depth + 1)) as T
  }
  if (Object.getPrototypeOf(value) !== Object.prototype) return value
  const kept: [string, unknown][] = []
  for (const [key, v] of Object.entries(value)) if (v !== undefined) kept.push([key, plainCopy(v, depth + 1)])
  // fromEntries defines each key as data, "__proto__" too (an assignment would set the prototype).
  return Object.fromEntries(kept) as T
}

/**
 * `value` as it is written to a conversation document: a plain copy of it,
 * its `undefined` object keys left out (see {@link plainCopy}); throws INVALID_ARGUMENT when
 * what remains is not plain JSON (a function, a symbol, NaN or Infinity, a
 * bigint, a byte array, a Map, a Date, an instance of a class). Written as
 * it came, such a value was refused by the relay after the fact, and every
 * later change of the device to that conversation with it (an outside probe).
 */
export function plainJsonOf<T>(value: T, what: string): T {
  const kept = plainCopy(value)
  if (!isPlainJson(kept))
    throw new ParleyError(
      ErrorCode.INVALID_ARGUMENT,
      `${what} holds plain JSON only (strings, finite numbers, booleans, null, arrays and plain objects)`,
    )
  return kept
}
