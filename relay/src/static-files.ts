import { createReadStream } from "node:fs"
import { stat } from "node:fs/promises"
import type { IncomingMessage, ServerResponse } from "node:http"
import { extname, join, normalize, resolve, sep } from "node:path"

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
 * Serves a built web app from `root`; unknown paths without an extension get
 * `index.html` (client-side routing). Never serves outside `root`.
 */
export async function serveStatic(root: string, req: IncomingMessage, res: ServerResponse): Promise<boolean> {
  const base = resolve(root)
  const path = decodeURIComponent(new URL(req.url ?? "/", "http://relay").pathname)
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
  else createReadStream(file).pipe(res)
  return true
}
