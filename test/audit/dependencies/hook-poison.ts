// A hook module that takes the process down on one message, and what a supervisor's restarts do.
//
//   node --conditions=parley-source --import tsx test/audit/dependencies/hook-poison.ts timer-throw|oom|loop
//
// One relay (SQLite) with a hook module that, for a message whose body contains "poison":
// timer-throw: throws from a timer (documented to end the process); oom: allocates without bound
// (the relay runs with --max-old-space-size=192 so that this ends quickly); loop: never returns
// (a synchronous loop: a regular expression backtracking on a user's text does the same).
// The script plays a supervisor: it restarts the relay on the same data directory whenever it
// exits, or when /healthz has not answered for 3 s (a liveness probe), five times. Expected of a
// relay that "no client can take down": after a few restarts the poisonous delivery is given up
// (dead-lettered) and the relay stays up. Found: every restart resumes the delivery and dies again.
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createConversation, newConversationId, newMessageId, sendMessage, type UserId } from "@parley/shared"
import { TestClient } from "../../../relay/test/helpers/clients.js"
import { type RelayProcess, startRelayProcess } from "../../../relay/test/helpers/relay-process.js"
import { atExit, check, RELAY_DIST, run, sleep } from "./lib.js"

const mode = process.argv[2] ?? "timer-throw"
const DIST_INDEX = new URL("../../../relay/dist/index.js", import.meta.url).href

const bodies: Record<string, string> = {
  // Thrown before the handler resolves (a callback API wrapped in a promise, say).
  "timer-throw": `await new Promise(() => setTimeout(() => { throw new Error("hook bug") }, 0))`,
  oom: "const hoard = []; for (;;) hoard.push(new Array(1e5).fill(Math.random()))",
  loop: "for (;;) {}",
}

run(async () => {
  const hooks = mkdtempSync(join(tmpdir(), "audit4-poison-hooks-"))
  atExit(() => rmSync(hooks, { recursive: true, force: true }))
  writeFileSync(
    join(hooks, "poison.mjs"),
    `import { defineHooks } from ${JSON.stringify(DIST_INDEX)}
export default defineHooks({
  async onMessageSent({ subject }) {
    if (subject.message.body.includes("poison")) { ${bodies[mode]} }
  },
})
`,
  )
  const dataDir = mkdtempSync(join(tmpdir(), "audit4-poison-data-"))
  atExit(() => rmSync(dataDir, { recursive: true, force: true }))
  const secret = "audit4-poison"
  const start = () =>
    startRelayProcess({
      script: RELAY_DIST,
      dataDir,
      secret,
      nodeArgs: ["--max-old-space-size=192"],
      args: ["--hooks", hooks, "--hook-attempts", "3", "--skip-warm-up"],
    })
  const relay: RelayProcess = await start()
  atExit(() => relay.kill())

  const id = newConversationId()
  const alice = new TestClient(relay.url, id, await relay.token("alice"))
  await alice.synced()
  createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: ["bob" as UserId] })
  sendMessage(alice.doc, "alice" as UserId, { id: newMessageId(), body: "poison" })
  await alice.allSaved()
  alice.close()

  // The supervisor: restarts on the same data directory, kills a relay silent for 3 s (a liveness probe).
  await relay.kill()
  const downs: string[] = []
  for (let restart = 0; restart < 5; restart++) {
    const child = spawn(
      process.execPath,
      [
        "--max-old-space-size=192",
        RELAY_DIST,
        "--port",
        String(relay.port),
        "--data-dir",
        dataDir,
        "--auth-secret",
        secret,
        "--hooks",
        hooks,
        "--hook-attempts",
        "3",
        "--skip-warm-up",
      ],
      { stdio: ["ignore", "pipe", "ignore"] },
    )
    atExit(() => child.kill("SIGKILL"))
    const exited = new Promise<string>((resolve) =>
      child.once("exit", (code, signal) => resolve(`exited ${code ?? signal}`)),
    )
    let listening = false
    child.stdout!.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes('"msg":"listening"')) listening = true
    })
    const down = await Promise.race([
      exited,
      (async () => {
        let silentSince = Date.now()
        for (;;) {
          await sleep(250)
          const ok = await fetch(`${relay.httpUrl}/healthz`, { signal: AbortSignal.timeout(500) }).then(
            (r) => r.ok,
            () => false,
          )
          if (ok) silentSince = Date.now()
          else if (Date.now() - silentSince > 3000 && child.exitCode === null)
            return "hung (no /healthz for 3 s)"
        }
      })(),
      sleep(20_000).then(() => "up"),
    ])
    child.kill("SIGKILL")
    await exited
    if (down === "up") break
    downs.push(`${down}${listening ? "" : " before it listened"}`)
    console.log(`restart ${restart + 1}: the relay ${downs.at(-1)}`)
  }
  check(downs.length < 5, "the relay stays up after a few restarts (the poisonous delivery given up)", downs)
})
