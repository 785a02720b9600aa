// Installs the benchmark's peers (Hocuspocus, the y-websocket 2 server: test/bench/package.json)
// into test/bench/node_modules on first use, and again whenever their lock file changed. They
// are not part of the repository's own install: running and testing Parley does not need them.
import { execFileSync } from "node:child_process"
import { existsSync, statSync } from "node:fs"
import { fileURLToPath } from "node:url"

const dir = fileURLToPath(new URL("../test/bench/", import.meta.url))
const installed = `${dir}node_modules/.package-lock.json`
if (!existsSync(installed) || statSync(installed).mtimeMs < statSync(`${dir}package-lock.json`).mtimeMs) {
  process.stderr.write("Installing the benchmark's peers into test/bench/node_modules (once) ...\n")
  execFileSync("npm", ["ci", "--no-audit", "--no-fund"], { cwd: dir, stdio: "inherit" })
}
