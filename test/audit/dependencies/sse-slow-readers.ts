// `/v1/events` held open by readers that never read, while the conversation is busy.
//
//   node --conditions=parley-source --import tsx test/audit/dependencies/sse-slow-readers.ts
//
// One relay (SQLite). Four API keys with events:read each open their four streams (the per-key
// limit) from raw sockets that never read; a fifth stream per key is refused. A writer then sends
// 400 messages of 8,000 characters through the API (about 7 MB of events per stream). Checks: the
// relay's memory stays bounded (it does not queue what a stalled reader does not take), chat and a
// healthy reader keep going, a stream that goes away frees its slot, and the relay stops in
// bounded time (SIGTERM) with stalled streams open.
import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { connect, type Socket } from "node:net"
import { createConversation, newConversationId, newMessageId, sendMessage, type UserId } from "@parley/shared"
import { TestClient } from "../../../relay/test/helpers/clients.js"
import { startRelayProcess } from "../../../relay/test/helpers/relay-process.js"
import { atExit, check, logSummary, RELAY_DIST, run, sleep } from "./lib.js"

const rssOf = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024

run(async () => {
  const relay = await startRelayProcess({
    script: RELAY_DIST,
    args: ["--api-requests-per-second", "1000", "--api-request-burst", "1000"],
  })
  atExit(() => relay.kill())
  const key = (name: string, scopes: string) =>
    JSON.parse(
      execFileSync(
        process.execPath,
        [RELAY_DIST, "keys", "create", name, "--scopes", scopes, "--data-dir", relay.dataDir],
        {
          encoding: "utf8",
        },
      ),
    ).key as string
  const writer = key("writer", "conversations:write,messages:write")
  const streamKeys = [0, 1, 2, 3].map((i) => key(`stream${i}`, "events:read"))
  const healthyKey = key("healthy", "events:read")
  const port = relay.port

  /** A stream opened from a raw socket that never reads what it is sent. */
  const stalled = (k: string) =>
    new Promise<{ socket: Socket; head: string }>((resolve) => {
      const socket = connect(port, "127.0.0.1", () => {
        socket.write(`GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${k}\r\n\r\n`)
      })
      socket.once("data", (chunk: Buffer) => {
        socket.pause()
        resolve({ socket, head: chunk.toString().split("\r\n")[0]! })
      })
      atExit(() => socket.destroy())
    })
  const sockets: Socket[] = []
  const heads: string[] = []
  for (const k of streamKeys)
    for (let i = 0; i < 5; i++) {
      const { socket, head } = await stalled(k)
      sockets.push(socket)
      heads.push(head)
    }
  check(
    heads.filter((h) => h.includes(" 200 ")).length === 16,
    "four streams per key open",
    heads.filter((h) => h.includes(" 200 ")).length,
  )
  check(
    heads.filter((h) => h.includes(" 429 ")).length === 4,
    "the fifth stream of each key is refused 429",
    heads,
  )

  // A healthy reader, counting message.sent events.
  let healthySeen = 0
  const healthy = await fetch(`${relay.httpUrl}/v1/events?type=message.sent&conversation=g~audit4-sse`, {
    headers: { authorization: `Bearer ${healthyKey}` },
  })
  const reading = (async () => {
    const reader = healthy.body!.getReader()
    const decoder = new TextDecoder()
    for (;;) {
      const { done, value } = await reader.read().catch(() => ({ done: true, value: undefined }))
      if (done) return
      healthySeen += (decoder.decode(value, { stream: true }).match(/event: message\.sent/g) ?? []).length
    }
  })()

  const id = "g~audit4-sse"
  await fetch(`${relay.httpUrl}/v1/conversations`, {
    method: "POST",
    headers: { authorization: `Bearer ${writer}`, "content-type": "application/json" },
    body: JSON.stringify({ id, participants: [{ user: "alice" }] }),
  })
  const chat = newConversationId()
  const alice = new TestClient(relay.url, chat, await relay.token("alice"))
  atExit(() => alice.close())
  await alice.synced()
  createConversation(alice.doc, "alice" as UserId, {
    kind: "group",
    id: chat,
    participants: ["bob" as UserId],
  })
  await alice.allSaved()

  const before = rssOf(relay.child.pid!)
  let peak = before
  let slowestAck = 0
  const body = "z".repeat(8000)
  for (let i = 0; i < 400; i++) {
    const r = await fetch(`${relay.httpUrl}/v1/conversations/${id}/messages`, {
      method: "POST",
      headers: { authorization: `Bearer ${writer}`, "content-type": "application/json" },
      body: JSON.stringify({ body: `${i} ${body}` }),
    })
    if (r.status !== 201) throw new Error(`send ${i}: ${r.status} ${await r.text()}`)
    if (i % 50 === 0) {
      const t0 = Date.now()
      sendMessage(alice.doc, "alice" as UserId, { id: newMessageId(), body: `chat ${i}` })
      await alice.allSaved()
      slowestAck = Math.max(slowestAck, Date.now() - t0)
      peak = Math.max(peak, rssOf(relay.child.pid!))
    }
  }
  for (let t = 0; t < 20 && healthySeen < 400; t++) await sleep(250)
  peak = Math.max(peak, rssOf(relay.child.pid!))
  console.log(
    `RSS ${(before / 2 ** 20).toFixed(0)} MiB before, peak ${(peak / 2 ** 20).toFixed(0)} MiB; healthy reader saw ${healthySeen} of 400; slowest chat ack ${slowestAck} ms`,
  )
  check(
    peak - before < 128 * 2 ** 20,
    "stalled readers cost the relay less than 128 MiB",
    `${((peak - before) / 2 ** 20).toFixed(0)} MiB`,
  )
  check(healthySeen === 400, "a reading stream gets every event meanwhile", healthySeen)
  check(slowestAck < 2000, "chat acknowledged within 2 s throughout", slowestAck)

  // A stalled stream that goes away frees its slot.
  sockets[0]!.destroy()
  let reopened = ""
  for (let t = 0; t < 20 && !reopened.includes(" 200 "); t++) {
    await sleep(250)
    const { socket, head } = await stalled(streamKeys[0]!)
    reopened = head
    if (!head.includes(" 200 ")) socket.destroy()
  }
  check(reopened.includes(" 200 "), "a stream whose reader left frees its slot", reopened)

  // Graceful stop with stalled streams open.
  const t0 = Date.now()
  relay.child.kill("SIGTERM")
  const stopped = await Promise.race([relay.exited.then(() => true), sleep(20_000).then(() => false)])
  check(stopped, "SIGTERM stops the relay within 20 s with stalled streams open", `${Date.now() - t0} ms`)
  console.log(`stopped in ${Date.now() - t0} ms`)
  console.log("relay warnings/errors:", logSummary(relay.lines))
  void reading
})
