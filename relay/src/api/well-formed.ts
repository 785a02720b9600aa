import { ErrorCode, illFormedPath, ParleyError } from "@parley/shared"
import type { Context, MiddlewareHandler } from "hono"
import { visit } from "jsonc-parser"
import { problemResponse } from "./problem.js"

/** A decoder that throws on bytes no UTF-8 character is made of, rather than putting U+FFFD in. */
const strictUtf8 = new TextDecoder("utf-8", { fatal: true })

/**
 * Most values (and object entries) a JSON body may hold. The largest bodies
 * the API takes — a group of 1,000 participants, a message with 4 KB of
 * metadata and 10 attachments — hold a few thousand; every value costs a
 * walk for well-formedness and the schema's validation after `JSON.parse`
 * built it, about 1 µs each, so a 256 KiB body of 120,000 zeros cost
 * 56–210 ms to refuse.
 */
export const MAX_JSON_VALUES = 10_000

/**
 * Whether the JSON text `text` holds at most `max` values: counted from its
 * characters without parsing (each value but the first follows a comma or
 * opens an array or object), so a body is judged for what it would build
 * before anything builds it. A text that is not JSON may be miscounted; the
 * route's parsing refuses it either way.
 */
export function jsonValuesWithin(text: string, max: number): boolean {
  let values = 1
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c)
        i++ // backslash: the next character is escaped
      else if (c === 0x22) inString = false
    } else if (c === 0x22) inString = true
    else if (c === 0x2c || c === 0x5b || c === 0x7b) {
      if (++values > max) return false
    }
  }
  return true
}

/**
 * The first key that the JSON text `text` repeats within one object, once
 * decoded (`"x"` and `"\u0078"` are one key), and the path of that object
 * (`metadata.tags.0`, `(body)` at the top); undefined when none does.
 * `JSON.parse` keeps the last of them silently, where another reader (a proxy
 * that checked or signed the request) may keep the first. Read with
 * jsonc-parser's visitor, which builds nothing: one pass over the text, whose
 * size the body limit bounds (about what `JSON.parse` of it costs: 5 ms for
 * 9,000 keys). Meant for a text `JSON.parse` accepted.
 */
export function repeatedKey(text: string): { readonly key: string; readonly at: string } | undefined {
  let found: { key: string; at: string } | undefined
  const objects: Set<string>[] = []
  visit(text, {
    onObjectBegin: () => {
      objects.push(new Set())
    },
    onObjectEnd: () => {
      objects.pop()
    },
    onObjectProperty: (key, _offset, _length, _line, _character, path) => {
      const keys = objects.at(-1)
      if (found || !keys) return
      if (keys.has(key)) found = { key, at: path().join(".") || "(body)" }
      else keys.add(key)
    },
  })
  return found
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
export function requireWellFormedJson(
  /** Told of each JSON body's length once read, before anything parses it (the key's rate charges by it). */
  charge: (c: Context, bytes: number) => void = () => {},
): MiddlewareHandler {
  return async (c, next) => {
    // The bodies the routes' validation parses as JSON (Hono's `validator` test of the media type).
    const [type = "", ...parameters] = (c.req.header("content-type") ?? "").split(";")
    const mediaType = type.trim().toLowerCase()
    if (!/^application\/([\w.-]+\+)?json$/.test(mediaType)) return next()
    // JSON in UTF-8, as documented: another media type or charset was decoded as UTF-8 regardless, and
    // what it could not decode was stored as U+FFFD (a Latin-1 "café" became "caf\uFFFD").
    const charset = parameters
      .map((p) => p.trim().toLowerCase())
      .find((p) => p.startsWith("charset="))
      ?.slice("charset=".length)
      .replaceAll('"', "")
    if (
      mediaType !== "application/json" ||
      (charset !== undefined && charset !== "utf-8" && charset !== "utf8")
    )
      return problemResponse(
        c,
        new ParleyError(
          ErrorCode.INVALID_ARGUMENT,
          "a request body is content-type: application/json, in UTF-8 (charset=utf-8 or none)",
        ),
        415,
      )
    // Hono keeps the body read: the route's validation parses it again from here, not the stream.
    const bytes = await c.req.arrayBuffer()
    charge(c, bytes.byteLength)
    let text: string
    try {
      text = strictUtf8.decode(bytes)
    } catch {
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        "the request body is not UTF-8 (bytes no UTF-8 character is made of); send UTF-8",
      )
    }
    if (!jsonValuesWithin(text, MAX_JSON_VALUES))
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `a request body holds at most ${MAX_JSON_VALUES} JSON values`,
      )
    let body: unknown
    let prototypeKey = false
    try {
      // A "__proto__" key is an own property of what JSON.parse returns, but every copy made of it
      // (the routes' validation, the stored value) drops it: refused, not silently lost.
      body = JSON.parse(text, (key, value: unknown) => {
        if (key === "__proto__") prototypeKey = true
        return value
      })
    } catch {
      return next()
    }
    if (prototypeKey)
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        'the key "__proto__" is not accepted in a request body',
      )
    // Objects are strict: a repeated key is refused, not resolved to its last value.
    const repeated = repeatedKey(text)
    if (repeated)
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `${repeated.at === "(body)" ? "" : `${repeated.at}: `}the key ${JSON.stringify(repeated.key)} appears twice in one object of the request body; send each key once`,
      )
    const at = illFormedPath(body)
    if (at !== undefined)
      throw new ParleyError(
        ErrorCode.INVALID_ARGUMENT,
        `${at}: not well-formed UTF-16 (a lone surrogate, e.g. a string cut inside an emoji); send whole characters`,
      )
    return next()
  }
}
