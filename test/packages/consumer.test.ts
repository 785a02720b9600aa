/**
 * The packages as a developer gets them: `npm pack` each, install the tarballs
 * into a new project in a temporary folder outside the repository (the rest
 * from the npm registry), and there run the relay from its installed bin with a
 * TypeScript hook that imports `@parley/relay`, a Node bot on the SDK, and
 * type-check and build a Vite app that imports the SDK and its React bindings.
 */
import { type ChildProcess, spawn } from "node:child_process"
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs"
import { tmpdir } from "node:os"
import { join, relative } from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildPackages } from "../packages-build.js"

const ROOT = fileURLToPath(new URL("../..", import.meta.url))
const PACKAGES = ["shared", "relay", "client", "react"] as const
const INSTALL_TIMEOUT_MS = 15 * 60_000

/** The environment without npm's per-script variables, which would point npm back at this repository. */
const cleanEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^npm_/i.test(name)))

/** Runs a program to its end, resolving with its stdout; rejects with all its output when it fails or outlives `timeoutMs`. */
function run(
  command: string,
  args: readonly string[],
  options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number },
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: { ...cleanEnv(), ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    })
    let output = ""
    let stdout = ""
    child.stdout.on("data", (chunk) => {
      output += chunk
      stdout += chunk
    })
    child.stderr.on("data", (chunk) => {
      output += chunk
    })
    const timeoutMs = options.timeoutMs ?? 120_000
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs)
    child.once("error", reject)
    child.once("exit", (code, signal) => {
      clearTimeout(timer)
      if (code === 0) resolve(stdout)
      else reject(new Error(`${command} ${args.join(" ")} exited with ${code ?? signal}:\n${output}`))
    })
  })
}

/** The exact version this repository installed of `name`, so that the consumer resolves the same. */
const installedVersion = (name: string) =>
  (JSON.parse(readFileSync(join(ROOT, "node_modules", name, "package.json"), "utf8")) as { version: string })
    .version

/**
 * better-sqlite3's install script fetches a prebuilt binary from GitHub, or
 * compiles SQLite (minutes) where it cannot. It is handed the binary this
 * repository's own install already has (same version and Node ABI), through
 * prebuild-install's local prebuilds folder; the install script still runs,
 * and another version is fetched or compiled as usual.
 */
async function localPrebuilds(into: string): Promise<NodeJS.ProcessEnv> {
  const version = installedVersion("better-sqlite3")
  const binary = join(ROOT, "node_modules/better-sqlite3/build/Release/better_sqlite3.node")
  if (!existsSync(binary)) return {}
  const staging = join(into, "staging")
  mkdirSync(join(staging, "build/Release"), { recursive: true })
  cpSync(binary, join(staging, "build/Release/better_sqlite3.node"))
  const name = `better-sqlite3-v${version}-node-v${process.versions.modules}-${process.platform}-${process.arch}.tar.gz`
  await run("tar", ["-czf", join(into, name), "-C", staging, "build"], { cwd: into })
  return { npm_config_better_sqlite3_local_prebuilds: into }
}

let work: string
let project: string
let packed: { name: string; filename: string; files: { path: string }[] }[]
let relay: ChildProcess | undefined

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "parley-consumer-"))
  expect(relative(ROOT, work).startsWith("..")).toBe(true)
  const tarballs = join(work, "tarballs")
  mkdirSync(tarballs)
  const prebuilds = join(work, "prebuilds")
  mkdirSync(prebuilds)
  // The prebuilt binary is packed while the packages build.
  const installEnv = localPrebuilds(prebuilds)
  // Awaited below; a failure there is not also an unhandled rejection should the build fail first.
  installEnv.catch(() => {})
  // What each package's `prepack` runs (tsc, and the SDK's bundle), run once for the test run
  // (see test/packages-build.ts) so that `npm pack --json` prints only its JSON.
  await buildPackages()
  packed = JSON.parse(
    await run(
      "npm",
      [
        "pack",
        "--json",
        "--ignore-scripts",
        "--pack-destination",
        tarballs,
        ...PACKAGES.flatMap((p) => ["-w", p]),
      ],
      { cwd: ROOT },
    ),
  )
  project = join(work, "app")
  cpSync(join(ROOT, "test/packages/consumer"), project, { recursive: true })
  // What `npm init -y` and `npm pkg set type=module private=true` wrote (two npm starts, about a
  // second), less the fields an app does not need.
  writeFileSync(
    join(project, "package.json"),
    `${JSON.stringify({ name: "app", version: "1.0.0", type: "module", private: true }, null, 2)}\n`,
  )
  await run(
    "npm",
    [
      "install",
      "--no-audit",
      "--no-fund",
      "--prefer-offline",
      ...packed.map((p) => join(tarballs, p.filename)),
      `ws@${installedVersion("ws")}`,
      `vite@${installedVersion("vite")}`,
      `typescript@${installedVersion("typescript")}`,
      `@types/node@${installedVersion("@types/node")}`,
      `@types/ws@${installedVersion("@types/ws")}`,
      `react@${installedVersion("react")}`,
      `react-dom@${installedVersion("react-dom")}`,
      `@types/react@${installedVersion("@types/react")}`,
      `@types/react-dom@${installedVersion("@types/react-dom")}`,
    ],
    { cwd: project, env: await installEnv, timeoutMs: INSTALL_TIMEOUT_MS },
  )
}, INSTALL_TIMEOUT_MS + 360_000)

afterAll(async () => {
  if (relay && relay.exitCode === null) {
    relay.kill("SIGTERM")
    await new Promise((resolve) => relay!.once("exit", resolve))
  }
  if (work) rmSync(work, { recursive: true, force: true })
})

/** Starts the installed `parley-relay` in the project; resolves with its WebSocket URL. */
function startInstalledRelay(args: readonly string[]): Promise<string> {
  relay = spawn(join(project, "node_modules/.bin/parley-relay"), ["--port", "0", ...args], {
    cwd: project,
    env: cleanEnv(),
    stdio: ["ignore", "pipe", "pipe"],
  })
  const child = relay
  return new Promise((resolve, reject) => {
    let output = ""
    child.stderr!.on("data", (chunk) => {
      output += chunk
    })
    child.stdout!.on("data", (chunk) => {
      output += chunk
      const listening = /"msg":"listening"/.test(output) ? /"url":"([^"]+)"/.exec(output) : null
      if (listening) resolve(listening[1]!)
    })
    child.once("exit", (code) => reject(new Error(`parley-relay exited with ${code}:\n${output}`)))
  })
}

// The tests only read the installed project (the type-check emits nothing, the Vite build writes
// dist/, the relay runs in memory): they run at once, the type-check being the longest.
describe.concurrent("the packages, installed from their tarballs in a new project", () => {
  it("ship built JavaScript, declarations, licence and changelog, and no sources or tests", () => {
    for (const pkg of packed) {
      const files = pkg.files.map((f) => f.path)
      expect(files, pkg.name).toEqual(
        expect.arrayContaining(["LICENSE", "CHANGELOG.md", "README.md", "package.json"]),
      )
      expect(files, pkg.name).toContain("dist/index.d.ts")
      expect(
        files.filter((f) => /^(src|test)\//.test(f) || f.endsWith(".tsbuildinfo")),
        pkg.name,
      ).toEqual([])
    }
    expect(packed.find((p) => p.name === "@parley/client")!.files.map((f) => f.path)).toContain(
      "dist/parley-client.js",
    )
    // The relay's bin runs dist/ when src/ is absent, as it is here.
    expect(existsSync(join(project, "node_modules/@parley/relay/src"))).toBe(false)
    expect(packed.find((p) => p.name === "@parley/react")!.files.map((f) => f.path)).toContain(
      "dist/parley-react.js",
    )
    expect(readdirSync(join(project, "node_modules/@parley"))).toEqual(["client", "react", "relay", "shared"])
  })

  it("run the relay from its bin with a TypeScript hook, and a Node bot on the SDK that the hook answers", async () => {
    const url = await startInstalledRelay(["--dev", "--storage", "memory", "--hooks", "hooks"])
    const output = await run(process.execPath, ["bot.mjs"], { cwd: project, env: { RELAY_URL: url } })
    expect(JSON.parse(output.trim().split("\n").at(-1)!)).toEqual({ pong: true, status: "sent" })
  }, 120_000)

  it("type-check an app and a hook module against the published declarations", async () => {
    await run(process.execPath, [join(project, "node_modules/typescript/bin/tsc"), "-p", "."], {
      cwd: project,
    })
  }, 120_000)

  it("build a Vite app that bundles one copy of Yjs", async () => {
    await run(
      process.execPath,
      [join(project, "node_modules/vite/bin/vite.js"), "build", "app", "--outDir", "../dist"],
      {
        cwd: project,
      },
    )
    const assets = join(project, "dist/assets")
    const code = readdirSync(assets)
      .filter((file) => file.endsWith(".js"))
      .map((file) => readFileSync(join(assets, file), "utf8"))
      .join("\n")
    expect(code).toContain("hello from the browser")
    expect(code).toContain("hello from React")
    // Yjs warns with this text when a second copy is loaded: it appears once per copy.
    expect(code.split("Yjs was already imported").length - 1).toBe(1)
  }, 120_000)
})
