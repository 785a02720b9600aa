// A relay that follows a document over Redis misses what was stored while its subscriber
// connection was down, and its clients never see it while the conversation stays quiet.
//
//   node --conditions=parley-source --import tsx test/audit/dependencies/redis-follower-gap.ts
//
// Two relays over one PostgreSQL schema and a Redis server of the script's own; relay B reaches
// Redis through a TCP proxy the script cuts for 1.5 s. Alice (on A, the document's owner) sends a
// message during the cut and nothing after. Expected: once B is connected to Redis again, Bob
// (connected to B throughout) gets the message. Found: he does not (until someone writes again).
import {
  createConversation,
  listMessages,
  newConversationId,
  newMessageId,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { TestClient } from "../../../relay/test/helpers/clients.js"
import { scratchSchema } from "../../../relay/test/helpers/postgres.js"
import { startRelayProcess } from "../../../relay/test/helpers/relay-process.js"
import { startTcpProxy } from "../../../relay/test/helpers/tcp-proxy.js"
import { atExit, check, privateRedis, readyz, run, sleep } from "./lib.js"

run(async () => {
  const redis = await privateRedis()
  const schema = await scratchSchema()
  atExit(() => schema.drop())
  const proxy = await startTcpProxy("127.0.0.1", redis.port)
  atExit(() => proxy.close())
  const secret = "audit4-secret"
  const common = ["--storage", "postgres", "--database-url", schema.url, "--redis-prefix", "audit4:"]
  const a = await startRelayProcess({ secret, args: [...common, "--redis-url", redis.url] })
  atExit(() => a.kill())
  const b = await startRelayProcess({
    secret,
    args: [...common, "--redis-url", `redis://127.0.0.1:${proxy.port}`],
  })
  atExit(() => b.kill())

  const id = newConversationId()
  const alice = new TestClient(a.url, id, await a.token("alice"))
  atExit(() => alice.close())
  await alice.synced()
  createConversation(alice.doc, "alice" as UserId, { kind: "group", id, participants: ["bob" as UserId] })
  await alice.allSaved()
  const bob = new TestClient(b.url, id, await b.token("bob"))
  atExit(() => bob.close())
  await bob.synced()
  // One message before the cut: B follows the document over Redis.
  sendMessage(alice.doc, "alice" as UserId, { id: newMessageId(), body: "before" })
  await alice.allSaved()
  const seen = (body: string) => listMessages(bob.doc, { last: 100 }).some((m) => m.body === body)
  await Promise.race([bob.until(() => seen("before")), sleep(5000)])
  check(seen("before"), "bob (on B) sees a message sent on A")

  proxy.cut()
  await sleep(300)
  sendMessage(alice.doc, "alice" as UserId, { id: newMessageId(), body: "during the cut" })
  await alice.allSaved()
  console.log("stored on A while B is cut off from Redis; B's /readyz:", await readyz(b.httpUrl))
  await sleep(1200)
  proxy.heal()
  // B reconnects within about a second (ioredis' retry strategy); give it plenty.
  for (let i = 0; i < 50; i++) {
    const r = await readyz(b.httpUrl)
    if ("status" in r && r.status === 200) break
    await sleep(200)
  }
  console.log("B's /readyz after the heal:", await readyz(b.httpUrl))
  await Promise.race([bob.until(() => seen("during the cut")), sleep(10_000)])
  check(
    seen("during the cut"),
    "bob (on B) gets the message stored during B's Redis outage once B is back, without another write",
    listMessages(bob.doc, { last: 100 }).map((m) => m.body),
  )
  sendMessage(alice.doc, "alice" as UserId, { id: newMessageId(), body: "after" })
  await alice.allSaved()
  await Promise.race([bob.until(() => seen("after") && seen("during the cut")), sleep(5000)])
  check(
    seen("during the cut") && seen("after"),
    "the next write brings both",
    listMessages(bob.doc, { last: 100 }).map((m) => m.body),
  )
})
