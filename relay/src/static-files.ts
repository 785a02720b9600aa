import { createReadStream } from "node:fs"
import { stat } from "node:fs/promises"
import type { IncomingMessage, ServerResponse } from "node:http"
import { extname, join, normalize, resolve, sep } from "node:path"
import { pipeline } from "node:stream"
import { endWhenStalled } from "./stalled-reader.js"

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".ico": "image/x-icon",
  ".wasm": "application/wasm",
  ".map": "application/json",
  ".txt": "text/plain; charset=utf-8",
}

/**
 * A response whose reader takes no bytes for about this long loses its
 * connection (see {@link endWhenStalled}). Static files need no token:
 * without it, anyone could hold a socket and an open file per request for as
 * long as they liked.
 */
const STALLED_READER_MS = 30_000

/**
 * Serves a built web app from `root`; unknown paths without an extension get
 * `index.html` (client-side routing). Never serves outside `root`; a path
 * that does not decode is not found.
 */
export async function serveStatic(root: string, req: IncomingMessage, res: ServerResponse): Promise<boolean> {
  const base = resolve(root)
  let path: string
  try {
    path = decodeURIComponent(new URL(req.url ?? "/", "http://relay").pathname)
  } catch {
    return false
  }
  let file = resolve(join(base, normalize(path)))
  if (file !== base && !file.startsWith(base + sep)) return false
  let info = await stat(file).catch(() => undefined)
  if (info?.isDirectory()) {
    file = join(file, "index.html")
    info = await stat(file).catch(() => undefined)
  }
  if (!info && extname(path) === "") {
    file = join(base, "index.html")
    info = await stat(file).catch(() => undefined)
  }
  if (!info?.isFile()) return false
  res.writeHead(200, {
    "content-type": TYPES[extname(file)] ?? "application/octet-stream",
    "content-length": info.size,
  })
  if (req.method === "HEAD") res.end()
  else {
    endWhenStalled(res, STALLED_READER_MS)
    // pipeline, not pipe: a response that ends early (the reader left, or stalled) closes the file too.
    pipeline(createReadStream(file), res, () => {})
  }
  return true
}
