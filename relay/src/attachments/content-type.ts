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

/**
 * What leading bytes that no binary signature matched are: `text/html` (or
 * `image/svg+xml`) when they open like markup — a browser sniffing them
 * would render them — `text/plain` when they are UTF-8 without control
 * bytes, else `application/octet-stream`.
 */
export function sniffText(head: Uint8Array): string {
  let bytes = head.subarray(0, TEXT_SNIFF_BYTES)
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) bytes = bytes.subarray(3)
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
  let text: string | undefined
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(0, end))
  } catch {
    text = undefined
  }
  if (text === undefined) return "application/octet-stream"
  if (MARKUP.test(text))
    return /^\s*(<\?xml[^>]*>\s*)?(<!--[\s\S]*?-->\s*)*<svg/i.test(text) ? "image/svg+xml" : "text/html"
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
 * else {@link sniffText} on the head.
 */
export async function sniffContentType(
  bytes: () => AsyncIterable<Uint8Array>,
  head: Uint8Array,
): Promise<string> {
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
