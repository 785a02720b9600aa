import type { IncomingMessage, ServerResponse } from "node:http"
import { ErrorCode, ParleyError } from "@parley/shared"
import { rawProblemAnswer } from "./http-json.js"

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
    if (req.complete) return
    // Answered on the socket itself (a body shorter than its Content-Length got an empty close): the
    // handler still waits for the body, so its response object is not ours to end. As Node answers its own
    // timeouts, written only while nothing of this request's answer was, then the connection is closed.
    if (res.socket !== req.socket || res.headersSent || !req.socket.writable) {
      req.socket.destroy()
      return
    }
    req.socket.write(
      rawProblemAnswer(
        408,
        new ParleyError(
          ErrorCode.TIMEOUT,
          `the request body did not arrive whole within ${ms} ms (is its Content-Length right?)`,
        ),
      ),
    )
    // Closed once written (not before: the answer would be lost), whatever the peer does.
    req.socket.destroySoon()
  }, ms)
  deadline.unref()
  res.once("close", () => clearTimeout(deadline))
  return () => {
    if (req.complete) clearTimeout(deadline)
  }
}
