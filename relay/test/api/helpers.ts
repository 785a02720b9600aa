import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { runKeysCli } from "../../src/api/keys-cli.js"

/** Makes an API key in `dataDir` as an operator would (`parley-relay keys create`); returns the key. */
export async function createKey(dataDir: string, name: string, scopes: readonly string[]): Promise<string> {
  const lines: string[] = []
  const code = await runKeysCli(
    ["create", name, "--scopes", scopes.join(","), "--data-dir", dataDir],
    (line) => lines.push(line),
    {},
  )
  if (code !== 0) throw new Error(`keys create failed: ${lines.join("\n")}`)
  return (JSON.parse(lines[0]!) as { key: string }).key
}

/** Revokes a key as an operator would. */
export async function revokeKey(dataDir: string, idOrName: string): Promise<void> {
  const lines: string[] = []
  const code = await runKeysCli(["revoke", idOrName, "--data-dir", dataDir], (line) => lines.push(line), {})
  if (code !== 0) throw new Error(`keys revoke failed: ${lines.join("\n")}`)
}

/** A fresh data directory for a relay process. */
export const freshDataDir = (): string => mkdtempSync(join(tmpdir(), "parley-api-"))

/** An HTTP answer, its body parsed. */
export interface Answer {
  readonly status: number
  readonly contentType: string | null
  // biome-ignore lint/suspicious/noExplicitAny: tests read whatever JSON the API answered
  readonly body: any
  readonly headers: Headers
}

/** A backend's HTTP client for the API, with one key. */
export function apiClient(baseUrl: () => string, key: string | undefined) {
  return async (
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<Answer> => {
    const response = await fetch(`${baseUrl()}${path}`, {
      method,
      headers: {
        ...(key !== undefined ? { authorization: `Bearer ${key}` } : {}),
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
        ...headers,
      },
      ...(body !== undefined ? { body: typeof body === "string" ? body : JSON.stringify(body) } : {}),
    })
    const text = await response.text()
    return {
      status: response.status,
      contentType: response.headers.get("content-type"),
      body: text ? JSON.parse(text) : undefined,
      headers: response.headers,
    }
  }
}
