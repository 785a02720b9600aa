import { expect, vi } from "vitest"
import * as Y from "yjs"

/**
 * The Yjs structs stored more than once across a document's stored log, as
 * `client:clock` ranges: empty when every change was stored exactly once. A
 * re-sent update the relay stored again would show up here even though Yjs
 * hides the duplicate from anyone reading the document.
 */
export function storedTwice(updates: readonly Uint8Array[]): string[] {
  const seen = new Map<number, [number, number][]>()
  const twice: string[] = []
  for (const update of updates) {
    for (const struct of Y.decodeUpdate(update).structs) {
      if (!(struct instanceof Y.Item)) continue
      const { client, clock } = struct.id
      const ranges = seen.get(client) ?? []
      const end = clock + struct.length
      if (ranges.some(([from, to]) => clock < to && from < end)) twice.push(`${client}:${clock}`)
      ranges.push([clock, end])
      seen.set(client, ranges)
    }
  }
  return twice
}

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
    failing: [{ dependency: "storage", code: "STORAGE_UNAVAILABLE" }],
  })
}
