// A user registers push "devices" whose endpoint (a server of theirs) answers 201 with an endless
// body; every message sent to them then has the relay read that body.
//
//   node --conditions=parley-source --import tsx test/audit/dependencies/push-endless-body.ts
//
// One relay (--dev: throwaway VAPID keys; --push-allow-insecure-endpoints so that the attacker's
// server may be on 127.0.0.1, standing in for a public address). Bob registers 4 devices, Alice
// sends him 3 messages while he is offline. Expected: the relay's memory stays flat (it reads an
// answer's status, not a body of the endpoint's choosing). Found before the fix: it buffered the
// body for the whole attempt (10 s), for every device at once.
import { readFileSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { createConversation, newConversationId, newMessageId, sendMessage, type UserId } from "@parley/shared"
import webpush from "web-push"
import { TestClient } from "../../../relay/test/helpers/clients.js"
import { startRelayProcess } from "../../../relay/test/helpers/relay-process.js"
import { atExit, check, RELAY_DIST, run, sleep } from "./lib.js"

/** Each answer stops after this many bytes (the attacker's could go on). */
const BODY_BYTES = 512 * 1024 * 1024

const rssOf = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024

run(async () => {
  let sent = 0
  let requests = 0
  const server = createServer((req, res) => {
    requests++
    req.resume()
    res.writeHead(201)
    const chunk = Buffer.alloc(1024 * 1024, 97)
    let mine = 0
    const pump = () => {
      while (mine < BODY_BYTES && !res.destroyed) {
        mine += chunk.length
        sent += chunk.length
        if (!res.write(chunk)) return void res.once("drain", pump)
      }
      res.end()
    }
    pump()
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  atExit(() => {
    server.closeAllConnections()
    server.close()
  })
  const port = (server.address() as AddressInfo).port

  const relay = await startRelayProcess({
    script: RELAY_DIST,
    args: ["--dev", "--push-allow-insecure-endpoints"],
  })
  atExit(() => relay.kill())
  const bobToken = await relay.token("bob")
  for (let d = 0; d < 4; d++) {
    const r = await fetch(`${relay.httpUrl}/v1/me/push-subscriptions`, {
      method: "POST",
      headers: { authorization: `Bearer ${bobToken}`, "content-type": "application/json" },
      body: JSON.stringify({
        device: `d${d}`,
        subscription: {
          endpoint: `http://127.0.0.1:${port}/push/${d}`,
          keys: {
            p256dh: webpush.generateVAPIDKeys().publicKey,
            auth: Buffer.alloc(16, 7).toString("base64url"),
          },
        },
      }),
    })
    if (r.status !== 200) throw new Error(`registering: ${r.status} ${await r.text()}`)
  }
  const before = rssOf(relay.child.pid!)
  const id = newConversationId()
  const alice = new TestClient(relay.url, id, await relay.token("alice"))
  atExit(() => alice.close())
  await alice.synced()
  createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: ["bob" as UserId] })
  await alice.allSaved()
  let peak = before
  for (let i = 0; i < 3; i++) {
    sendMessage(alice.doc, "alice" as UserId, { id: newMessageId(), body: `hello ${i}` })
    await alice.allSaved()
  }
  for (let t = 0; t < 24 && relay.child.exitCode === null; t++) {
    peak = Math.max(peak, rssOf(relay.child.pid!))
    await sleep(500)
  }
  console.log(
    `push requests ${requests}; body bytes sent ${(sent / 2 ** 20).toFixed(0)} MiB; relay RSS ${(before / 2 ** 20).toFixed(0)} MiB before, peak ${(peak / 2 ** 20).toFixed(0)} MiB`,
  )
  check(relay.child.exitCode === null && relay.child.signalCode === null, "the relay is still running")
  check(requests > 0, "the relay pushed to bob's devices")
  check(
    peak - before < 256 * 2 ** 20,
    "push endpoints' answer bodies cost the relay less than 256 MiB",
    `${((peak - before) / 2 ** 20).toFixed(0)} MiB`,
  )
})
