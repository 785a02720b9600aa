import type { ServerResponse } from "node:http"

/**
 * Answers with `body` as JSON, never cached. No CORS header: nothing the relay
 * serves over HTTP is meant for pages of other origins (least of all `/dev/token`).
 */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" })
  res.end(JSON.stringify(body))
}
