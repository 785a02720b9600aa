/**
 * Can several users together, each within every per-user limit, hold an
 * honest pair up? An honest pair (carol and dave, stock y-websocket providers,
 * a message every 50 ms in turn, each timed from send to the other replica
 * having it) chats on a quiet relay, then while K users, S sockets each (one
 * conversation per socket), send frames of 1,000 short messages (the value
 * cap, ~100 ms of relay CPU each) as fast as each is saved, one in flight per
 * socket, for D seconds. Prints the pair's latency quiet and under the flood,
 * the flood's frames saved and refused, and the relay's CPU. Asserts nothing.
 *
 *   npm run bench:many-users [-- --users 8 --sockets 1 --seconds 20]
 */
import { fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import * as Y from "yjs"
import { TestClient } from "../../relay/test/helpers/clients.js"
import { updateFrame } from "../../relay/test/helpers/frame-probe.js"
import { startRelayProcess, stopRelayProcesses } from "../../relay/test/helpers/relay-process.js"
import { createConversation, newConversationId, sendMessage, type UserId } from "../../shared/src/index.js"
import { printLatencies, printLatencyHeader, startHonestPair } from "./honest-pair.js"
import { readProcess } from "./proc.js"
import { sleep } from "./stats.js"

const { values: flags } = parseArgs({
  options: {
    users: { type: "string", default: "8" },
    sockets: { type: "string", default: "1" },
    seconds: { type: "string", default: "20" },
    // The flooders' own process (see `flood`).
    child: { type: "boolean", default: false },
  },
})
const users = Number(flags.users)
const sockets = Number(flags.sockets)
const seconds = Number(flags.seconds)

interface Flooder {
  readonly user: UserId
  readonly token: string
}
type FromChild =
  | { readonly ready: true }
  | { readonly saved: number; readonly refused: Record<string, number> }

if (flags.child) await flood()
else await main()

/**
 * The flooders, in a process of their own (building and sending frames of 1,000 messages would
 * otherwise share the event loop of the pair's clients and time the bench, not the relay).
 */
async function flood(): Promise<void> {
  const { url, flooders } = JSON.parse(process.env.PARLEY_MANY_USERS!) as {
    url: string
    flooders: Flooder[]
  }
  const clients: { client: TestClient; frames: Uint8Array[] }[] = []
  for (const [i, { user, token }] of flooders.entries()) {
    const conversation = newConversationId()
    const client = new TestClient(url, conversation, token)
    await client.opened
    await client.synced()
    // Written on a replica of its own (the test client sends whatever its document gets at once).
    const local = new Y.Doc()
    Y.applyUpdate(local, Y.encodeStateAsUpdate(client.doc))
    const change = (write: () => void) => {
      const at = Y.encodeStateVector(local)
      local.transact(write)
      return updateFrame(Y.encodeStateAsUpdate(local, at))
    }
    client.send(
      change(() => createConversation(local, user, { kind: "group", id: conversation, participants: [] })),
    )
    await client.until(() => client.saves.length > 0)
    // Built before the flood, each on the one before (enough for the budget's burst and rate).
    const frames = Array.from({ length: seconds * 3 }, (_, k) =>
      change(() => {
        for (let m = 0; m < 1_000; m++) sendMessage(local, user, { body: `flood ${i}/${k}/${m}` })
      }),
    )
    clients.push({ client, frames })
  }
  const send = (message: FromChild) => process.send!(message)
  send({ ready: true })
  await new Promise((resolve) => process.once("message", resolve))
  let saved = 0
  const refused: Record<string, number> = {}
  const end = performance.now() + seconds * 1000
  await Promise.all(
    clients.map(async ({ client, frames }) => {
      for (const frame of frames) {
        if (performance.now() >= end || client.closeEvent) break
        const saves = client.saves.length
        const errors = client.errors.length
        client.send(frame)
        await client.until(
          () => client.saves.length > saves || client.errors.length > errors || !!client.closeEvent,
        )
        if (client.saves.length > saves) {
          saved++
          continue
        }
        const error = client.errors[client.errors.length - 1] as { readonly code?: string } | undefined
        // (Narrowed by the loop's check, but set meanwhile.)
        const closed = client.closeEvent as { readonly code: number } | undefined
        const why = closed ? `closed ${closed.code}` : String(error?.code ?? "?")
        refused[why] = (refused[why] ?? 0) + 1
        // A refused frame leaves the replica ahead of the relay: this socket's later ones would be too.
        break
      }
    }),
  )
  for (const { client } of clients) client.close()
  send({ saved, refused })
  process.exit(0)
}

async function main(): Promise<void> {
  const relay = await startRelayProcess()
  const pair = await startHonestPair(relay)
  const flooders: Flooder[] = []
  for (let u = 0; u < users; u++) {
    const user = `flooder${u}` as UserId
    for (let s = 0; s < sockets; s++) flooders.push({ user, token: await relay.token(user) })
  }
  const child = fork(fileURLToPath(import.meta.url), ["--child", ...process.argv.slice(2)], {
    env: { ...process.env, PARLEY_MANY_USERS: JSON.stringify({ url: relay.url, flooders }) },
    execArgv: process.execArgv,
  })
  const fromChild = () => new Promise<FromChild>((resolve) => child.once("message", resolve as never))
  await fromChild()

  console.log(
    `${users} users × ${sockets} sockets, frames of 1,000 short messages, one in flight per socket, ${seconds} s`,
  )
  printLatencyHeader(14)
  const pid = relay.child.pid!
  let cpu = readProcess(pid).cpuMs
  let at = performance.now()
  pair.take()
  await sleep(3_000)
  const quietCpu = ((readProcess(pid).cpuMs - cpu) / (performance.now() - at)) * 100
  printLatencies(14, "quiet", pair.take(), `relay CPU ${quietCpu.toFixed(0)} % of a core`)

  cpu = readProcess(pid).cpuMs
  at = performance.now()
  const done = fromChild()
  child.send("go")
  const result = (await done) as Extract<FromChild, { saved: number }>
  const floodCpu = ((readProcess(pid).cpuMs - cpu) / (performance.now() - at)) * 100
  const refused =
    Object.keys(result.refused).length > 0 ? `, refused or closed: ${JSON.stringify(result.refused)}` : ""
  printLatencies(
    14,
    "under flood",
    pair.take(),
    `relay CPU ${floodCpu.toFixed(0)} % of a core; ${result.saved} frames saved${refused}`,
  )
  await pair.stop()
  await stopRelayProcesses()
  process.exit(0)
}
