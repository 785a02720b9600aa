import { createServer, type Server, type Socket } from "node:net"
import { afterEach, describe, expect, it, vi } from "vitest"
import { DroppedDelivery } from "../src/hooks/dispatcher.js"
import { TYPING_CONNECTIONS, webhookTarget } from "../src/hooks/webhook.js"
import { CONNECTIONS_PER_ORIGIN, USER_CHOSEN_REQUESTS_IN_FLIGHT } from "../src/outbound.js"
import { publicOnlyFetch } from "../src/push/public-fetch.js"
import { sampleEvent } from "./conformance/outbox.js"

const servers: Server[] = []
const sockets: Socket[] = []
afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy()
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))))
})

/** A receiver that accepts connections and never answers: how many it holds open now. */
async function tarpit(): Promise<{ url: string; open: () => number }> {
  let open = 0
  const server = createServer((socket) => {
    sockets.push(socket)
    open++
    socket.on("close", () => open--)
    socket.on("error", () => {})
  })
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as { port: number }
  return { url: `http://127.0.0.1:${port}/in`, open: () => open }
}

const settle = () => new Promise((r) => setTimeout(r, 300))

describe("outgoing requests to receivers that never answer", () => {
  it("hold at most a few connections to one webhook, however many deliveries are due", async () => {
    const pit = await tarpit()
    const target = webhookTarget({ url: pit.url, secret: "s" })
    const controller = new AbortController()
    // One delivery per conversation lane with an event due: before, one socket each.
    const deliveries = Array.from({ length: 100 }, (_, i) =>
      target.deliver(sampleEvent(`evt_${i}`), { signal: controller.signal } as never).catch(() => "aborted"),
    )
    // Typing posts on top: two connections of their own within the cap, the others dropped at once.
    const typing = Array.from({ length: 10 }, (_, i) => {
      const event = sampleEvent(`evt_typing_${i}`)
      return target
        .deliver(
          { ...event, event: { ...event.event, type: "typing.started" } } as never,
          {
            signal: controller.signal,
          } as never,
        )
        .catch((error: Error) => (error instanceof DroppedDelivery ? "dropped" : "aborted"))
    })
    // Connections open as undici gets to them (slowly on a loaded machine); then no more open.
    await vi.waitFor(() => expect(pit.open()).toBe(CONNECTIONS_PER_ORIGIN), { timeout: 10_000 })
    await settle()
    expect(pit.open()).toBe(CONNECTIONS_PER_ORIGIN)
    controller.abort()
    expect(new Set(await Promise.all(deliveries))).toEqual(new Set(["aborted"]))
    const outcomes = await Promise.all(typing)
    expect(outcomes.filter((o) => o === "aborted")).toHaveLength(TYPING_CONNECTIONS)
    expect(outcomes.filter((o) => o === "dropped")).toHaveLength(10 - TYPING_CONNECTIONS)
  })

  it("hold at most a few connections per user-chosen origin, and a few dozen requests in all", async () => {
    const pits = await Promise.all(Array.from({ length: 8 }, () => tarpit()))
    const send = publicOnlyFetch({ allowPrivate: true })
    const controller = new AbortController()
    // A user's push endpoints on many ports of one host: each port is an origin of its own.
    const requests = Array.from({ length: 20 }).flatMap(() =>
      pits.map((pit) =>
        send(pit.url, { method: "POST", body: "x", signal: controller.signal }).catch(() => "aborted"),
      ),
    )
    const total = () => pits.reduce((n, pit) => n + pit.open(), 0)
    await vi.waitFor(() => expect(total()).toBe(USER_CHOSEN_REQUESTS_IN_FLIGHT), { timeout: 10_000 })
    await settle()
    const open = pits.map((pit) => pit.open())
    expect(Math.max(...open)).toBeLessThanOrEqual(CONNECTIONS_PER_ORIGIN)
    expect(open.reduce((a, b) => a + b, 0)).toBe(USER_CHOSEN_REQUESTS_IN_FLIGHT)
    // Those waiting for a slot give up with their own signal.
    controller.abort()
    expect(new Set(await Promise.all(requests))).toEqual(new Set(["aborted"]))
  })
})
