/**
 * The code blocks of the user-facing docs, run as a user would copy them (see
 * "Two tests check what a user gets" in the root README): every `ts` block is
 * type-checked; `ts` and `sh` blocks run, unless marked
 * `<!-- doc-test: not run (reason) -->`, against a dev relay whose address
 * replaces the documented default `127.0.0.1:1234`. A `ts` block that
 * default-exports `defineHooks` is loaded as a hook module by a relay and must
 * handle a message.
 */
import { spawn } from "node:child_process"
import { once } from "node:events"
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { type AddressInfo, createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { createChatClient } from "@parley/client"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import WebSocket from "ws"
import { runKeysCli } from "../../relay/src/api/keys-cli.js"
import {
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../../relay/test/helpers/relay-process.js"
import { buildPackages } from "../packages-build.js"
import { blockName, type DocBlock, ILLUSTRATION, RUN, readBlocks } from "./blocks.js"

const ROOT = fileURLToPath(new URL("../..", import.meta.url))
const DOCS = ["README.md", "client/README.md", "relay/README.md", "relay/HOOKS.md", "relay/API.md"]
/** Where the docs say a relay listens (`npm start`); replaced by the test relay's address. */
const DOCUMENTED_ADDRESS = "127.0.0.1:1234"
const blocks = DOCS.flatMap((file) => readBlocks(ROOT, file))
const runnable = blocks.filter((block) => (RUN as readonly string[]).includes(block.lang) && !block.notRun)
// Inside the repository, so that the blocks' imports resolve to the workspace packages.
const work = join(ROOT, ".tsbuild/doc-blocks")

let relay: RelayProcess
/** An HTTP API key with every scope, made in the docs' relay's data before it starts (API.md's `$PARLEY_API_KEY`). */
let apiKey: string
let relayData: string
beforeAll(async () => {
  rmSync(work, { recursive: true, force: true })
  mkdirSync(join(work, "run"), { recursive: true })
  relayData = mkdtempSync(join(tmpdir(), "parley-docs-"))
  const made: string[] = []
  const scopes = "conversations:read,conversations:write,messages:read,messages:write,events:read,act-as-user"
  await runKeysCli(
    ["create", "docs", "--scopes", scopes, "--data-dir", relayData],
    (line) => made.push(line),
    {},
  )
  apiKey = (JSON.parse(made[0]!) as { key: string }).key
  relay = await startRelayProcess({ dataDir: relayData, args: ["--dev"] })
  const closed = createServer().listen(0, "127.0.0.1")
  await once(closed, "listening")
  offlineAddress = `127.0.0.1:${(closed.address() as AddressInfo).port}`
  closed.close()
})
afterAll(async () => {
  await stopRelayProcesses()
  rmSync(work, { recursive: true, force: true })
  rmSync(relayData, { recursive: true, force: true })
})

/** Runs a program to its end; a program still running after `timeoutMs` is killed (and fails). */
function run(
  command: string,
  args: readonly string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: { ...process.env, ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    })
    let output = ""
    child.stdout.on("data", (chunk) => {
      output += chunk
    })
    child.stderr.on("data", (chunk) => {
      output += chunk
    })
    const timer = setTimeout(() => {
      output += `\n(killed: still running after ${options.timeoutMs ?? 60_000} ms)`
      child.kill("SIGKILL")
    }, options.timeoutMs ?? 60_000)
    child.once("error", reject)
    child.once("exit", (code) => {
      clearTimeout(timer)
      resolve({ code, output })
    })
  })
}

const where = (block: DocBlock) => `${block.file}:${block.line}`
const localize = (code: string, address = `127.0.0.1:${relay.port}`) =>
  code.replaceAll(DOCUMENTED_ADDRESS, address)
/** An address nothing listens on: the SDK's blocks must work offline too (its headline). */
let offlineAddress: string
const usesClient = (block: DocBlock) => /from "@parley\/client"/.test(block.code)
const isHookModule = (block: DocBlock) => /export default defineHooks\(/.test(block.code)
/** Whether the block reaches the docs' relay (at the documented address it is given instead). */
const usesDocsRelay = (block: DocBlock) => block.code.includes(DOCUMENTED_ADDRESS)

async function runTypeScript(block: DocBlock, address?: string): Promise<void> {
  const file = join(work, "run", `${blockName(block)}${address ? "_offline" : ""}.ts`)
  writeFileSync(file, localize(block.code, address))
  const browser = join(ROOT, "test/docs/browser-globals.ts")
  const { code, output } = await run(
    process.execPath,
    ["--conditions=parley-source", "--import", "tsx", "--import", browser, file],
    { cwd: join(work, "run") },
  )
  expect(code, `${where(block)} exited with ${code}:\n${output}`).toBe(0)
}

async function runHookModule(block: DocBlock): Promise<void> {
  const hooks = join(work, `hooks-${blockName(block)}`)
  mkdirSync(hooks)
  writeFileSync(join(hooks, "doc-hook.ts"), block.code)
  const hooked = await startRelayProcess({ args: ["--dev", "--hooks", hooks] })
  const user = "doc-alice"
  const client = await createChatClient({
    url: hooked.url,
    user,
    token: () => hooked.token(user),
    storage: "memory",
    WebSocket: WebSocket as never,
  })
  try {
    const chat = await client.createConversation({ participants: ["doc-bob"], title: "docs" })
    chat.send("hello from the docs")
    await hooked.waitForLog((line) => String(line.hook).endsWith("doc-hook.ts") && line.level === 30)
    const failures = hooked.lines.filter(
      (line) => line.includes("doc-hook.ts") && /"level":(40|50|60)/.test(line),
    )
    expect(failures, where(block)).toEqual([])
  } finally {
    await client.destroy()
    await hooked.kill()
  }
}

/** A stopped relay's data directory, made by the first shell block that needs one. */
let stoppedData: Promise<string> | undefined
function stoppedRelayData(): Promise<string> {
  stoppedData ??= (async () => {
    const dataDir = join(work, "stopped-data")
    const stopped = await startRelayProcess({ dataDir })
    await stopped.kill()
    return dataDir
  })()
  return stoppedData
}

async function runShell(block: DocBlock): Promise<void> {
  // A folder with a stopped relay's data directory in ./data, for the commands that read one:
  // a copy of one relay's, made once (a relay start per block cost about two seconds each), so
  // that no block sees what another wrote.
  const cwd = join(work, `sh-${blockName(block)}`)
  cpSync(await stoppedRelayData(), join(cwd, "data"), { recursive: true })
  const { code, output } = await run("bash", ["-euo", "pipefail", "-c", localize(block.code)], {
    cwd,
    env: { SERVICE_TOKEN: await relay.token("doc-ops", { role: "service" }), PARLEY_API_KEY: apiKey },
  })
  expect(code, `${where(block)} exited with ${code}:\n${output}`).toBe(0)
}

describe("documentation code blocks", () => {
  it("each name a language, and say why when they are not run", () => {
    expect(blocks.length).toBeGreaterThan(0)
    for (const block of blocks) {
      expect([...RUN, ...ILLUSTRATION] as string[], where(block)).toContain(block.lang)
      if (block.notRun) expect(RUN as readonly string[], where(block)).toContain(block.lang)
      // Blocks run inside the repository: an install there would change its manifests.
      if (block.lang === "sh" && /\bnpm (i|install|ci|add)\b/.test(block.code))
        expect(block.notRun, `${where(block)} installs packages: mark it not run`).toBeDefined()
    }
  })

  // The type-check (tsc over the blocks, against the packages' declarations as a user's project
  // gets them) runs while the blocks run, one after another, below: the two share nothing. Against
  // the declarations, not the workspace sources, which tsc would check all over again (14 s of CPU
  // against 2 s, 2026-12-02); they are built once for the test run (see test/packages-build.ts:
  // in `npm test` the type-check before the tests has built them, and the build finds them current).
  it.concurrent(
    "type-check, every TypeScript block (run or not)",
    async () => {
      await buildPackages()
      const dir = join(work, "check")
      mkdirSync(dir, { recursive: true })
      for (const block of blocks.filter((b) => b.lang === "ts"))
        writeFileSync(join(dir, `${blockName(block)}.ts`), block.code)
      writeFileSync(
        join(dir, "tsconfig.json"),
        JSON.stringify({
          extends: "../../../tsconfig.base.json",
          compilerOptions: {
            noEmit: true,
            composite: false,
            declaration: false,
            incremental: false,
            // Without the repository's "parley-source" condition: `@parley/*` resolve as a user's
            // project resolves them, to the `types` of their exports (dist/*.d.ts).
            customConditions: [],
          },
          include: ["*.ts"],
        }),
      )
      const { code, output } = await run(
        process.execPath,
        [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", dir],
        { cwd: dir, timeoutMs: 120_000 },
      )
      expect(output).toBe("")
      expect(code).toBe(0)
      // The packages' build (up to 300 s where it has to build them), then the check.
    },
    300_000 + 150_000,
  )

  const runs = (block: DocBlock) =>
    it.sequential(`${where(block)} (${block.lang}) runs`, async () => {
      if (block.lang === "sh") await runShell(block)
      else if (isHookModule(block)) await runHookModule(block)
      else await runTypeScript(block)
    }, 90_000)
  // Suites marked concurrent, so that they run beside the type-check and beside each other; the
  // blocks of each run in order, one at a time (it.sequential).
  describe("run as a user would", { concurrent: true }, () => {
    // The blocks that use the docs' relay, in the docs' order: later blocks use what earlier ones
    // made there (API.md's), and two users' conversations are the same on it whichever doc names them.
    describe("against the docs' relay, in order", { concurrent: true }, () => {
      for (const block of runnable.filter((b) => usesDocsRelay(b) && !isHookModule(b))) runs(block)
    })
    // The others start a relay of their own (a hook module, `startRelay`) or work on a stopped
    // relay's data directory copied for each block: nothing of the blocks above, nor they of these.
    describe("with a relay or data of their own, in order", { concurrent: true }, () => {
      for (const block of runnable.filter((b) => !usesDocsRelay(b) || isHookModule(b))) runs(block)
    })
    // Offline, a block uses neither relay nor what another block made, and mostly waits (the SDK's
    // blocks wait out their flush timeout, 5 s, before they give up): beside the blocks above.
    describe("offline", { concurrent: true }, () => {
      for (const block of runnable.filter((b) => b.lang === "ts" && usesClient(b)))
        it(`${where(block)} (${block.lang}) runs offline, with no relay to reach`, async () => {
          await runTypeScript(block, offlineAddress)
        }, 90_000)
    })
  })
})
