// Hostile webhook receivers: one that redirects (307) to an internal address, one that answers
// 2xx with an endless body, one that never answers, one that answers one byte a second.
//
//   node --conditions=parley-source --import tsx test/audit/dependencies/webhook-attack.ts redirect|huge|never|slow
//
// One relay (SQLite) with `--webhook` pointing at the receiver. Alice sends messages; the script
// watches what the receiver and an "internal" server (a canary on another port, standing in for
// an admin endpoint or a cloud metadata service) get, the relay's memory, and whether chat keeps
// working. Expected: a redirect is not followed (the canary gets nothing), a receiver's answer
// body never costs the relay more than a bounded amount of memory, the relay keeps serving.
import { readFileSync } from "node:fs"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { createConversation, newConversationId, newMessageId, sendMessage, type UserId } from "@parley/shared"
import { TestClient } from "../../../relay/test/helpers/clients.js"
import { startRelayProcess } from "../../../relay/test/helpers/relay-process.js"
import { atExit, check, logSummary, RELAY_DIST, run, sleep } from "./lib.js"

const mode = process.argv[2] ?? "redirect"
/** The endless body stops after this many bytes: enough to show the relay keeps all of it. */
const HUGE_BYTES = 1536 * 1024 * 1024

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void) {
  const server = createServer(handler)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  atExit(() => {
    server.closeAllConnections()
    server.close()
  })
  return (server.address() as AddressInfo).port
}

const rssOf = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024

run(async () => {
  const canaryHits: string[] = []
  const canary = await listen((req, res) => {
    canaryHits.push(`${req.method} ${req.url}`)
    res.end("internal")
  })
  let received = 0
  let bytesSent = 0
  const receiver = await listen((req, res) => {
    req.resume()
    received++
    if (mode === "redirect") {
      res.writeHead(307, { location: `http://127.0.0.1:${canary}/admin/secret` })
      res.end()
    } else if (mode === "huge") {
      res.writeHead(200, { "content-type": "application/octet-stream" })
      const chunk = Buffer.alloc(1024 * 1024, 97)
      const pump = () => {
        while (bytesSent < HUGE_BYTES) {
          bytesSent += chunk.length
          if (!res.write(chunk)) return void res.once("drain", pump)
        }
        res.end()
      }
      pump()
    } else if (mode === "slow") {
      res.writeHead(200, { "content-type": "text/plain" })
      const timer = setInterval(() => res.write("x"), 1000)
      res.on("close", () => clearInterval(timer))
    }
    // never: no answer at all
  })

  const relay = await startRelayProcess({
    script: RELAY_DIST,
    args: [
      "--webhook",
      `http://127.0.0.1:${receiver}/hook`,
      "--webhook-secret",
      "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
      "--hook-timeout-ms",
      "10000",
    ],
  })
  atExit(() => relay.kill())
  const rssBefore = rssOf(relay.child.pid!)

  const id = newConversationId()
  const alice = new TestClient(relay.url, id, await relay.token("alice"))
  atExit(() => alice.close())
  await alice.synced()
  createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: ["bob" as UserId] })
  await alice.allSaved()
  // Chat keeps working meanwhile: each message acknowledged, timed.
  let maxAck = 0
  let peakRss = rssBefore
  for (let i = 0; i < 24; i++) {
    const t0 = Date.now()
    sendMessage(alice.doc, "alice" as UserId, { id: newMessageId(), body: `message ${i}` })
    const acked = await Promise.race([alice.allSaved().then(() => true), sleep(5000).then(() => false)])
    maxAck = Math.max(maxAck, acked ? Date.now() - t0 : 5000)
    if (relay.child.exitCode !== null || relay.child.signalCode !== null) break
    peakRss = Math.max(peakRss, rssOf(relay.child.pid!))
    await sleep(500)
  }
  const alive = relay.child.exitCode === null && relay.child.signalCode === null
  console.log(
    `receiver got ${received} requests; canary got ${JSON.stringify(canaryHits.slice(0, 5))} (${canaryHits.length}); ` +
      `relay RSS ${(rssBefore / 2 ** 20).toFixed(0)} MiB before, peak ${(peakRss / 2 ** 20).toFixed(0)} MiB; ` +
      `body bytes sent ${(bytesSent / 2 ** 20).toFixed(0)} MiB; slowest ack ${maxAck} ms`,
  )
  check(alive, "the relay is still running")
  check(maxAck < 2000, "chat acknowledged within 2 s throughout", maxAck)
  if (mode === "redirect")
    check(canaryHits.length === 0, "a webhook redirect is not followed to another address", canaryHits)
  if (mode === "huge")
    check(
      peakRss - rssBefore < 256 * 2 ** 20,
      "a receiver's endless answer costs the relay less than 256 MiB",
      `${((peakRss - rssBefore) / 2 ** 20).toFixed(0)} MiB`,
    )
  if (alive) {
    const metrics = await (await fetch(`${relay.httpUrl}/metrics`)).text()
    console.log(
      metrics
        .split("\n")
        .filter((l) => l.startsWith("parley_hook_attempts_total") || l.startsWith("parley_hook_dead"))
        .join("\n"),
    )
  }
  console.log("relay warnings/errors:", logSummary(relay.lines))
})
