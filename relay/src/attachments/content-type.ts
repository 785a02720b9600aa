import { Readable } from "node:stream"
import { fileTypeFromStream } from "file-type"

/**
 * Types the relay accepts by default: raster images, PDF, plain text, audio,
 * video, zip archives and office documents (OOXML, OpenDocument, the older
 * compound-file formats). A trailing `*` matches a prefix.
 */
export const DEFAULT_ATTACHMENT_TYPES: readonly string[] = [
  "image/png",
  "image/jpeg",
  "image/gif",
  "image/webp",
  "image/avif",
  "application/pdf",
  "text/plain",
  "audio/*",
  "video/*",
  "application/zip",
  "application/vnd.openxmlformats-officedocument.*",
  "application/vnd.oasis.opendocument.*",
  "application/x-cfb",
]

/**
 * Types refused whatever the allow-list says: markup a browser would run
 * (HTML, SVG, XML with scripts) and programs. SVG is refused rather than
 * served as a download: it is a script-capable document, and no thumbnail
 * library should parse it from an untrusted upload.
 */
const NEVER: readonly string[] = [
  "text/html",
  "application/xhtml+xml",
  "image/svg+xml",
  "application/xml",
  "text/xml",
  "application/javascript",
  "application/x-msdownload",
  "application/x-dosexec",
  "application/x-elf",
  "application/x-mach-binary",
  "application/x-sh",
  "application/x-executable",
  "application/vnd.microsoft.portable-executable",
  "application/java-archive",
  "application/x-apple-diskimage",
  "application/wasm",
]

/** Raster images a browser may show inline (`Content-Disposition: inline`), and the relay thumbnails. */
export const INLINE_IMAGES: ReadonlySet<string> = new Set([
  "image/png",
  "image/jpeg",
  "image/gif",
  "image/webp",
  "image/avif",
])

/** Whether `type` (a sniffed type) may be stored under `allowed`. */
export function isAllowedType(type: string, allowed: readonly string[]): boolean {
  if (NEVER.includes(type)) return false
  return allowed.some((pattern) =>
    pattern.endsWith("*") ? type.startsWith(pattern.slice(0, -1)) : pattern === type,
  )
}

/** How many leading bytes {@link sniffText} looks at. */
export const TEXT_SNIFF_BYTES = 4096

const MARKUP =
  /^\s*(<!doctype\s+html|<html|<head|<body|<script|<svg|<\?xml|<iframe|<!--|<[a-z][a-z0-9]*[\s>/])/i

/** The UTF-16 encoding whose byte-order mark `head` opens with, if any. */
function utf16Mark(head: Uint8Array): "utf-16le" | "utf-16be" | undefined {
  if (head[0] === 0xff && head[1] === 0xfe) return "utf-16le"
  if (head[0] === 0xfe && head[1] === 0xff) return "utf-16be"
  return undefined
}

/**
 * `bytes` (after a UTF-16 mark) as text, or undefined when they are not
 * UTF-16. A head of {@link TEXT_SNIFF_BYTES} may be cut: inside a code unit,
 * or between the halves of a surrogate pair, which are left out; a shorter
 * head is the whole blob, and must be whole.
 */
function decodeUtf16(bytes: Uint8Array, encoding: "utf-16le" | "utf-16be", cut: boolean): string | undefined {
  let end = bytes.length
  if (cut) {
    end -= end % 2
    const last = end >= 2 ? (encoding === "utf-16le" ? bytes[end - 1]! : bytes[end - 2]!) : 0
    if (last >= 0xd8 && last <= 0xdb) end -= 2
  }
  try {
    // ignoreBOM: the mark was taken off already; another one here would be a character (U+FEFF).
    return new TextDecoder(encoding, { fatal: true, ignoreBOM: true }).decode(bytes.subarray(0, end))
  } catch {
    return undefined
  }
}

/** `bytes` as UTF-8 text (a head cut inside its last character leaves it out), or undefined. */
function decodeUtf8(bytes: Uint8Array): string | undefined {
  // The head may end inside a multi-byte character: that incomplete last character is left out.
  let end = bytes.length
  for (let i = bytes.length - 1; i >= Math.max(0, bytes.length - 3); i--) {
    const byte = bytes[i]!
    if (byte < 0x80) break
    if (byte >= 0xc0) {
      const need = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : 2
      if (bytes.length - i < need) end = i
      break
    }
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, end))
  } catch {
    return undefined
  }
}

/**
 * What leading bytes that no binary signature matched are: `text/html` (or
 * `image/svg+xml`, or `application/xml` for an XML declaration not opening
 * HTML) when they open like markup — a browser sniffing them
 * would render them — `text/plain` when they are UTF-8, or UTF-16 behind its
 * byte-order mark, without control characters, else `application/octet-stream`.
 */
export function sniffText(head: Uint8Array): string {
  const bytes = head.subarray(0, TEXT_SNIFF_BYTES)
  const utf16 = utf16Mark(bytes)
  const text = utf16
    ? decodeUtf16(bytes.subarray(2), utf16, head.length >= TEXT_SNIFF_BYTES)
    : decodeUtf8(bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? bytes.subarray(3) : bytes)
  if (text === undefined) return "application/octet-stream"
  if (MARKUP.test(text)) {
    if (/^\s*(<\?xml[^>]*>\s*)?(<!--[\s\S]*?-->\s*)*<svg/i.test(text)) return "image/svg+xml"
    // Named as what it is in the refusal: an XML document is not HTML (both are refused).
    return /^\s*<\?xml/i.test(text) && !/<html/i.test(text) ? "application/xml" : "text/html"
  }
  // Control characters other than tab, newline, carriage return and form feed: binary.
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if ((code < 0x20 && code !== 0x09 && code !== 0x0a && code !== 0x0c && code !== 0x0d) || code === 0x7f)
      return "application/octet-stream"
  }
  return "text/plain"
}

/**
 * The content type of a stored blob, from its bytes only (the client's claim
 * is never used): a binary signature (`file-type`, reading as far into the
 * stream as the format needs, e.g. a zip's entries for office documents),
 * else {@link sniffText} on the head. A head opening with a UTF-16 mark is
 * tried as text first.
 */
export async function sniffContentType(
  bytes: () => AsyncIterable<Uint8Array>,
  head: Uint8Array,
): Promise<string> {
  // A UTF-16LE mark (FF FE) is also an MPEG-1 Layer I frame header, which file-type reports as
  // audio/mpeg: a text file was stored and served as a broken audio clip (an outside probe). Bytes
  // behind a mark that are text are text (or markup, refused as the UTF-8 kind is); audio is not.
  if (utf16Mark(head)) {
    const text = sniffText(head)
    if (text !== "application/octet-stream") return text
  }
  const stream = Readable.from(bytes(), { objectMode: false })
  let found: Awaited<ReturnType<typeof fileTypeFromStream>>
  try {
    found = await fileTypeFromStream(stream)
  } finally {
    // It reads only as far as the format needs: the rest of the blob is never fetched.
    stream.destroy()
  }
  if (found) return found.mime
  return sniffText(head)
}
