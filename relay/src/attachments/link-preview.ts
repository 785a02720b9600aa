import { ErrorCode, Limits, ParleyError } from "@parley/shared"
import { checkEndpointBeforeSend, type EndpointPolicy } from "../push/endpoint.js"
import { publicOnlyFetch } from "../push/public-fetch.js"

/** What a link preview says about a page. */
export interface LinkPreview {
  readonly url: string
  readonly title?: string
  readonly description?: string
}

/** How {@link LinkPreviewer} fetches. */
export interface LinkPreviewOptions {
  /** Private and loopback addresses, http: (tests only). Default: public https and http only. */
  readonly endpoints?: EndpointPolicy
  readonly timeoutMs?: number
  readonly maxBytes?: number
  readonly fetch?: typeof fetch
}

const MAX_REDIRECTS = 3

const ENTITIES: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: " " }
function decodeEntities(text: string): string {
  return text.replace(/&(#x[0-9a-f]{1,6}|#\d{1,7}|[a-z]{2,8});/gi, (all, name: string) => {
    if (name[0] === "#") {
      const code =
        name[1] === "x" || name[1] === "X" ? Number.parseInt(name.slice(2), 16) : Number(name.slice(1))
      return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : all
    }
    return ENTITIES[name.toLowerCase()] ?? all
  })
}
const clean = (text: string | undefined, max: number) => {
  if (text === undefined) return undefined
  const value = decodeEntities(text).replace(/\s+/g, " ").trim().slice(0, max)
  return value.length > 0 ? value : undefined
}

/**
 * Where each tag opening with `open` (lower case) is in `lower` (the head with
 * ASCII letters in lower case, so that positions are the head's): from its
 * `<` to its first `>`, those within `maxLength` characters, in order. One
 * pass: the next opening is searched for after the tag's `>`, as HTML reads
 * it, so nothing is read twice. A pattern like `/<meta\b[^>]{0,2000}>/g`
 * instead tries up to 2,000 characters at every opening that never closes:
 * a page of 100,000 `<meta` cost 1.1–1.6 s of the relay's CPU (an outside
 * probe).
 */
function tagsOf(lower: string, open: string, maxLength: number): [from: number, to: number][] {
  const tags: [number, number][] = []
  for (let at = lower.indexOf(open); at >= 0; ) {
    // Only this tag, not a longer name (`<metadata`), as `\b` would have it.
    const next = lower.charCodeAt(at + open.length)
    if ((next >= 0x61 && next <= 0x7a) || (next >= 0x30 && next <= 0x39) || next === 0x5f || next === 0x2d) {
      at = lower.indexOf(open, at + open.length)
      continue
    }
    const close = lower.indexOf(">", at)
    if (close < 0) break
    if (close - at <= maxLength) tags.push([at, close + 1])
    at = lower.indexOf(open, close + 1)
  }
  return tags
}

/** The `content` of each `<meta>` by its `property` or `name` (the first of each). */
function metaContents(head: string, lower: string): Map<string, string> {
  const found = new Map<string, string>()
  for (const [from, to] of tagsOf(lower, "<meta", 2000)) {
    const tag = head.slice(from, to)
    const key = /\b(?:property|name)\s*=\s*["']([^"']{1,100})["']/i.exec(tag)?.[1]?.toLowerCase()
    if (!key || found.has(key)) continue
    const content = /\bcontent\s*=\s*"([^"]{0,5000})"|\bcontent\s*=\s*'([^']{0,5000})'/i.exec(tag)
    if (content) found.set(key, content[1] ?? content[2] ?? "")
  }
  return found
}

/** The text of the first `<title>` element, when it holds one (no markup inside, at most 2,000 characters). */
function titleOf(head: string, lower: string): string | undefined {
  const [tag] = tagsOf(lower, "<title", 200)
  if (tag === undefined) return undefined
  const from = tag[1]
  const to = lower.indexOf("<", from)
  if (to < 0 || to - from > 2000 || !/^<\/title\s*>/.test(lower.slice(to, to + 64))) return undefined
  return head.slice(from, to)
}

const utf16 = new TextDecoder("utf-16le")

/**
 * `text` with ASCII letters in lower case, and nothing else changed, so that
 * positions in it are the text's (`toLowerCase` may lengthen a non-ASCII
 * letter: `İ`). One pass over the code units; a replace by runs of capitals
 * called back once per run, which a page of `aA` repeated made 70–85 ms.
 */
function asciiLowerCase(text: string): string {
  const units = new Uint16Array(text.length)
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    units[i] = c >= 0x41 && c <= 0x5a ? c + 0x20 : c
  }
  return utf16.decode(units)
}

/** Where the part {@link parseLinkPreview} reads ends. */
const HEAD_ENDS = /<\/head\s*>|<body[\s>]/i

/**
 * The title and description a page's `<head>` gives (`og:title`, `<title>`,
 * `og:description`, `description`). Only the part before `</head>` (within
 * the size cap) is read, in passes linear in its length over three things: a
 * `<title>` element and `<meta>` tags' two attributes. A full HTML parser
 * would build the whole document to answer that; nothing here is rendered
 * or re-served as HTML, only as two plain strings.
 */
export function parseLinkPreview(url: string, html: string): LinkPreview {
  const end = html.search(HEAD_ENDS)
  const head = end < 0 ? html : html.slice(0, end)
  const lower = asciiLowerCase(head)
  const meta = metaContents(head, lower)
  const first = (names: readonly string[]) => names.map((n) => meta.get(n)).find((v) => v !== undefined)
  const title =
    clean(first(["og:title", "twitter:title"]), Limits.attachmentTitleLength) ??
    clean(titleOf(head, lower), Limits.attachmentTitleLength)
  const description = clean(
    first(["og:description", "description", "twitter:description"]),
    Limits.attachmentDescriptionLength,
  )
  return { url, ...(title ? { title } : {}), ...(description ? { description } : {}) }
}

const badGateway = (why: string) => new ParleyError(ErrorCode.UNAVAILABLE, `cannot preview the link: ${why}`)

/**
 * Fetches pages for link previews with the push endpoints' SSRF checks
 * (`checkEndpointBeforeSend`: http(s) only, no credentials, the host's
 * addresses public), on every redirect too, within a timeout and a size cap,
 * and only `text/html`.
 */
export class LinkPreviewer {
  private readonly fetch: typeof fetch
  private readonly endpoints: EndpointPolicy
  private readonly timeoutMs: number
  private readonly maxBytes: number

  constructor(options: LinkPreviewOptions = {}) {
    this.endpoints = { allowHttp: true, ...options.endpoints }
    this.fetch = options.fetch ?? publicOnlyFetch(this.endpoints)
    this.timeoutMs = options.timeoutMs ?? 5_000
    this.maxBytes = options.maxBytes ?? 512 * 1024
  }

  async preview(url: string): Promise<LinkPreview> {
    const signal = AbortSignal.timeout(this.timeoutMs)
    let target = url
    for (let hop = 0; ; hop++) {
      try {
        await checkEndpointBeforeSend(target, this.endpoints, "link")
      } catch (error) {
        // A refusal stays one; a name that does not resolve is a page that cannot be fetched (503), not
        // the relay's failure (it answered 500 and logged a stack trace any user could cause).
        if (error instanceof ParleyError) throw error
        throw badGateway(`cannot resolve ${new URL(target).hostname}`)
      }
      let response: Response
      try {
        response = await this.fetch(target, {
          redirect: "manual",
          signal,
          headers: { accept: "text/html", "user-agent": "ParleyRelay-LinkPreview/1" },
        })
      } catch (error) {
        throw badGateway((error as Error).message)
      }
      const location = response.headers.get("location")
      if (response.status >= 300 && response.status < 400 && location) {
        await response.body?.cancel()
        if (hop >= MAX_REDIRECTS) throw badGateway("too many redirects")
        target = new URL(location, target).toString()
        continue
      }
      if (!response.ok) {
        await response.body?.cancel()
        throw badGateway(`the page answered ${response.status}`)
      }
      const type = (response.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase()
      if (type !== "text/html") {
        await response.body?.cancel()
        throw badGateway(`not an HTML page (${type || "no content type"})`)
      }
      return parseLinkPreview(url, await this.readCapped(response))
    }
  }

  /**
   * The page's first bytes, up to the size cap or the end of its `<head>`,
   * whichever comes first (nothing after it is read). A page that stops
   * sending (past the deadline, or cut off) is previewed from what arrived,
   * and refused only when nothing did: its head usually comes first.
   */
  private async readCapped(response: Response): Promise<string> {
    const reader = response.body?.getReader()
    if (!reader) return ""
    const parts: Uint8Array[] = []
    let length = 0
    // The end of the head may fall across two reads: the previous read's last bytes are searched again.
    let tail = ""
    while (length < this.maxBytes) {
      let next: ReadableStreamReadResult<Uint8Array>
      try {
        next = await reader.read()
      } catch (error) {
        if (length === 0)
          throw badGateway(
            (error as Error).name === "TimeoutError"
              ? `the page sent nothing within ${this.timeoutMs} ms`
              : (error as Error).message,
          )
        break
      }
      if (next.done) break
      parts.push(next.value)
      length += next.value.length
      const text =
        tail + Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength).toString("latin1")
      if (HEAD_ENDS.test(text)) break
      tail = text.slice(-16)
    }
    await reader.cancel().catch(() => {})
    return new TextDecoder().decode(Buffer.concat(parts).subarray(0, this.maxBytes))
  }
}
