import { type ChatClient, createChatClient } from "@parley/client"
import { expect, vi } from "vitest"
import { WebSocket } from "ws"
import type { RelayProcess } from "../../relay/test/helpers/relay-process.js"

export { storedTwice } from "../../relay/test/helpers/stored-log.js"

/** `GET /readyz`: the status code and the JSON body. */
export async function readyz(httpUrl: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${httpUrl}/readyz`)
  return { status: response.status, body: (await response.json()) as Record<string, unknown> }
}

/** `GET /healthz`'s status code. */
export async function healthz(httpUrl: string): Promise<number> {
  return (await fetch(`${httpUrl}/healthz`)).status
}

/** Polls `assertion` until it passes (or the test times out on its own). */
export const eventually = (assertion: () => void | Promise<void>, timeout = 30_000) =>
  vi.waitFor(assertion, { timeout, interval: 25 })

/** Asserts the relay answers `/readyz` with 503 naming storage as the failing dependency. */
export async function expectNotReady(httpUrl: string): Promise<void> {
  const { status, body } = await readyz(httpUrl)
  expect(status).toBe(503)
  expect(body).toMatchObject({
    status: "not ready",
    // The warm-up after a start may be listed too.
    failing: expect.arrayContaining([
      expect.objectContaining({ dependency: "storage", code: "STORAGE_UNAVAILABLE" }),
    ]),
  })
}

/** alice's (or `user`'s) SDK client of `relay`, in memory, reconnecting fast: the caller destroys it. */
export function sdkClient(relay: RelayProcess, user = "alice"): Promise<ChatClient> {
  return createChatClient({
    url: relay.url,
    token: () => relay.token(user),
    user,
    storage: "memory",
    WebSocket: WebSocket as never,
    reconnect: { minDelay: 50, maxDelay: 400 },
  })
}
