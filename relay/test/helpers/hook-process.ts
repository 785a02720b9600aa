import { existsSync, readFileSync } from "node:fs"
import type { RelayProcess } from "./relay-process.js"

/** The JSON lines a test's hook module appended to `file` (none before it wrote any). */
export const linesOf = (file: string): Record<string, unknown>[] =>
  existsSync(file)
    ? readFileSync(file, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>)
    : []

/**
 * Polls `probe` every 25 ms until `ok` holds for its value, and returns that value; throws naming
 * `what` after `ms` (hook workers restart and back off: seconds, not the usual few hundred ms).
 */
export async function untilSeen<T>(
  probe: () => T | Promise<T>,
  ok: (value: T) => boolean,
  what: string,
  ms = 30_000,
): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await probe()
    if (ok(value)) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

/** The relay process's dead letters, as `GET /admin/dead-letters` lists them to a service token. */
export async function deadLetters(relay: RelayProcess): Promise<Record<string, unknown>[]> {
  const response = await fetch(`${relay.httpUrl}/admin/dead-letters`, {
    headers: { authorization: `Bearer ${await relay.token("ops", { role: "service" })}` },
  })
  return ((await response.json()) as { deadLetters: Record<string, unknown>[] }).deadLetters
}
