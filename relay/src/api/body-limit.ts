import { ErrorCode, ParleyError } from "@parley/shared"
import type { MiddlewareHandler } from "hono"
import { bodyLimit } from "hono/body-limit"
import { problemResponse } from "./problem.js"

/**
 * Middleware that reads at most `maxBytes` of a request's body: beyond it the
 * answer is 413 `TOO_LARGE` and the connection is closed (the rest of the
 * body is not read, so the connection cannot carry another request). Put it
 * after authentication, so that a stranger's body is never read at all.
 */
export function limitBody(maxBytes: number): MiddlewareHandler[] {
  return [
    async (c, next) => {
      // @hono/node-server's light request (the relay leaves Node's globals alone) cannot be copied by
      // the global Request constructor, which bodyLimit uses: give it a standard one over the same stream.
      const raw = c.req.raw
      if (raw.body)
        c.req.raw = new Request(raw.url, {
          method: raw.method,
          headers: raw.headers,
          body: raw.body,
          signal: raw.signal,
          duplex: "half",
        } as RequestInit)
      await next()
    },
    bodyLimit({
      maxSize: maxBytes,
      onError: (c) =>
        problemResponse(
          c,
          new ParleyError(ErrorCode.TOO_LARGE, `request body exceeds ${maxBytes} bytes`),
          413,
          {
            connection: "close",
          },
        ),
    }),
  ]
}
