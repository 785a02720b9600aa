// `npm start`: builds the demo app (client/demo → client/demo/dist) and starts
// the relay in dev mode serving it, then prints the URL to open. Extra
// arguments go to the relay: `npm start -- --port 8080 --storage memory`.
import { spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { build } from "vite"

const root = fileURLToPath(new URL("..", import.meta.url))
const demoDist = `${root}client/demo/dist`

await build({ configFile: `${root}client/demo/vite.config.ts`, logLevel: "warn" })

const relay = spawn(
  process.execPath,
  // --no-memory-reducer: only node's command line can give it (relay/README.md, "V8 settings").
  [
    "--no-memory-reducer",
    `${root}relay/bin/parley-relay.js`,
    "--dev",
    "--static",
    demoDist,
    ...process.argv.slice(2),
  ],
  { cwd: root, stdio: ["inherit", "pipe", "inherit"] },
)

let buffered = ""
relay.stdout.on("data", (chunk) => {
  process.stdout.write(chunk)
  buffered += chunk.toString()
  let newline = buffered.indexOf("\n")
  while (newline >= 0) {
    const line = buffered.slice(0, newline)
    buffered = buffered.slice(newline + 1)
    newline = buffered.indexOf("\n")
    let entry
    try {
      entry = JSON.parse(line)
    } catch {
      continue
    }
    if (entry.msg === "listening" && entry.httpUrl)
      process.stdout.write(
        `\n  Parley demo: ${entry.httpUrl}\n  Open it in two browser windows (one private) and sign in as two users.\n\n`,
      )
  }
})

for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => relay.kill(signal))
relay.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)))
