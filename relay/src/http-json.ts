import { maxHeaderSize, type ServerResponse } from "node:http"
import type { Socket } from "node:net"
import type { Duplex } from "node:stream"
import { ErrorCode, ParleyError } from "@parley/shared"
import { problemOf } from "./api/problem.js"

/**
 * Answers with `body` as JSON, never cached. No CORS header: nothing the relay
 * serves over HTTP is meant for pages of other origins (least of all `/dev/token`).
 */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" })
  res.end(JSON.stringify(body))
}

/** Reason phrases of the statuses {@link rawProblemAnswer} is used with. */
const REASONS: Readonly<Record<number, string>> = {
  400: "Bad Request",
  408: "Request Timeout",
  413: "Payload Too Large",
  431: "Request Header Fields Too Large",
}

/**
 * A whole HTTP/1.1 answer, written on the connection itself, carrying the
 * problem document of `error` (`application/problem+json`, as every API
 * error is) and closing the connection. For what is answered where no
 * response object can be used: a request Node's parser refused before any
 * handler ran, or a body that never arrived whole.
 */
export function rawProblemAnswer(status: number, error: ParleyError): string {
  const body = JSON.stringify(problemOf(error, status))
  return (
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Error"}\r\n` +
    "content-type: application/problem+json\r\ncache-control: no-store\r\n" +
    `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`
  )
}

/**
 * The server's `clientError` listener: what Node answers itself with an empty
 * body (431 for a head over its limit, 408 when a request did not arrive in
 * time, 400 for malformed HTTP) is answered with a problem document instead,
 * on the same terms as Node's own: only while nothing of a response was
 * written on the connection, and the connection is closed after.
 */
export function answerClientError(error: Error & { readonly code?: string }, socket: Duplex): void {
  // What Node would answer on: the response in flight on this connection, if any, has written nothing.
  const inFlight = (socket as { readonly _httpMessage?: ServerResponse })._httpMessage
  if (error.code === "ECONNRESET" || !socket.writable || inFlight?.headersSent) {
    socket.destroy()
    return
  }
  const [status, problem] =
    error.code === "HPE_HEADER_OVERFLOW"
      ? [
          431,
          new ParleyError(
            ErrorCode.TOO_LARGE,
            `the request head (its URL and headers) exceeds ${maxHeaderSize} bytes`,
          ),
        ]
      : error.code === "HPE_CHUNK_EXTENSIONS_OVERFLOW"
        ? [413, new ParleyError(ErrorCode.TOO_LARGE, "the request's chunk extensions are too large")]
        : error.code === "ERR_HTTP_REQUEST_TIMEOUT"
          ? [
              408,
              new ParleyError(
                ErrorCode.TIMEOUT,
                "a request head did not arrive whole in time (bytes sent past a body's Content-Length are read as the next request's head)",
              ),
            ]
          : [
              400,
              new ParleyError(
                ErrorCode.INVALID_ARGUMENT,
                `malformed HTTP request (${error.code ?? error.message})`,
              ),
            ]
  socket.write(rawProblemAnswer(status, problem))
  // Closed once written: a peer that never reads or closes keeps no descriptor for it.
  ;(socket as Socket).destroySoon()
}
