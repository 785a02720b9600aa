import type { IncomingMessage, ServerResponse } from "node:http"

/**
 * Ends `req`'s connection when its body has not arrived whole within `ms`
 * (`--api-body-timeout-ms`): for the relay's small JSON bodies (API requests,
 * upload creation, push registration), so that a body trickled a byte at a
 * time holds no connection for Node's 300 s request timeout. Upload chunks
 * have their own pace rule instead. Returns what to call once the request is
 * answered (the deadline is cleared when the response closes too).
 */
export function bodyDeadline(req: IncomingMessage, res: ServerResponse, ms: number): () => void {
  const deadline = setTimeout(() => {
    if (!req.complete) req.socket.destroy()
  }, ms)
  deadline.unref()
  res.once("close", () => clearTimeout(deadline))
  return () => {
    if (req.complete) clearTimeout(deadline)
  }
}
