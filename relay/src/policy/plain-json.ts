/**
 * Values a conversation document may hold: what JSON can say, nothing more.
 * Yjs's `ContentAny` also carries `undefined`, bigints, byte arrays and objects
 * whose `__proto__` key swapped their prototype (so that fields read through
 * it but never reach other replicas); the validators of shared assume JSON.
 */
export function isPlainJson(value: unknown, depth = 0): boolean {
  if (depth > 32) return false
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

/** Structural equality of two plain JSON values. */
export function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false
  if (Array.isArray(a) !== Array.isArray(b)) return false
  const ka = Object.keys(a)
  const kb = Object.keys(b)
  if (ka.length !== kb.length) return false
  for (const k of ka) {
    if (
      !Object.hasOwn(b, k) ||
      !sameJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])
    )
      return false
  }
  return true
}
