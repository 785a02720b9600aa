import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { pathToFileURL } from "node:url"
import { ParleyError } from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import { loadHooks } from "../../src/hooks/loader.js"

const api = pathToFileURL(resolve(import.meta.dirname, "../../src/hooks/index.ts")).href
const dirs: string[] = []
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

function hooksDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), "parley-hooks-"))
  dirs.push(dir)
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text)
  return dir
}

const good = `import { defineHooks } from ${JSON.stringify(api)}
export default defineHooks({ onMessageSent() {} })
`

async function loadError(dir: string): Promise<ParleyError> {
  const error = await loadHooks(dir).then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(ParleyError)
  return error as ParleyError
}

describe("hook loader", () => {
  it("loads TypeScript and JavaScript modules in file-name order, skipping other files", async () => {
    const dir = hooksDir({
      "b.ts": `${good}const typed: number = 1\nvoid typed\n`,
      "a.mjs": good,
      "c.js": good,
      "README.md": "# not a hook",
      "types.d.ts": "export type X = number\n",
    })
    const loaded = await loadHooks(dir)
    expect(loaded.map((l) => l.name)).toEqual(["a.mjs", "b.ts", "c.js"])
    expect(typeof loaded[0]!.hooks.onMessageSent).toBe("function")
  })

  it("refuses a script with a syntax error, naming the file", async () => {
    const dir = hooksDir({ "ok.ts": good, "broken.ts": "export default defineHooks({ onMessageSent( }\n" })
    const error = await loadError(dir)
    expect(error.message).toContain(join(dir, "broken.ts"))
  })

  it("refuses a script whose top-level await never settles, naming the file, instead of waiting for good", async () => {
    const dir = hooksDir({ "stuck.mjs": "await new Promise(() => {})\nexport default 1\n" })
    const error = await loadHooks(dir, { timeoutMs: 200 }).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(error).toBeInstanceOf(ParleyError)
    expect((error as ParleyError).message).toContain(join(dir, "stuck.mjs"))
    expect((error as ParleyError).message).toContain("did not finish loading")
  })

  it("refuses a script that throws on import, naming the file and the error", async () => {
    const dir = hooksDir({ "throws.mjs": 'throw new Error("no API key configured")\n' })
    const error = await loadError(dir)
    expect(error.message).toContain(join(dir, "throws.mjs"))
    expect(error.message).toContain("no API key configured")
  })

  it("refuses a script without a defineHooks default export", async () => {
    const dir = hooksDir({ "plain.mjs": "export default { onMessageSent() {} }\n" })
    expect((await loadError(dir)).message).toMatch(/plain\.mjs must default-export defineHooks/)
    const none = hooksDir({ "none.mjs": "export const x = 1\n" })
    expect((await loadError(none)).message).toMatch(
      /none\.mjs must default-export defineHooks.*no default export/,
    )
  })

  it("refuses a handler name that does not exist, naming the file", async () => {
    const dir = hooksDir({
      "typo.mjs": `import { defineHooks } from ${JSON.stringify(api)}\nexport default defineHooks({ onMessageSend() {} })\n`,
    })
    const error = await loadError(dir)
    expect(error.message).toContain("typo.mjs")
    expect(error.message).toContain('unknown hook handler "onMessageSend"')
  })

  it("refuses a hooks directory that does not exist", async () => {
    const error = await loadError(join(tmpdir(), "parley-no-such-hooks-dir"))
    expect(error.message).toContain("parley-no-such-hooks-dir")
  })
})
