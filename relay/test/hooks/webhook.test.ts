import { createServer, type IncomingHttpHeaders, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { ErrorCode, ParleyError } from "@parley/shared"
import pino from "pino"
import { Registry } from "prom-client"
import { afterEach, describe, expect, it } from "vitest"
import { Dispatcher } from "../../src/hooks/dispatcher.js"
import { HookMetrics } from "../../src/hooks/metrics.js"
import { MemoryOutbox } from "../../src/hooks/outbox.js"
import { verifyWebhook, webhookName, webhookTarget } from "../../src/hooks/webhook.js"
import { sampleEvent } from "../conformance/outbox.js"

const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

interface Received {
  headers: IncomingHttpHeaders
  body: string
}

let server: Server | undefined
afterEach(async () => {
  const open = server
  server = undefined
  if (open) await new Promise((resolve) => open.close(resolve))
})

/** A receiver that answers each request with the next status of `statuses` (the last one repeats). */
async function receiver(statuses: number[]): Promise<{ url: string; received: Received[] }> {
  const received: Received[] = []
  server = createServer((req, res) => {
    let body = ""
    req.on("data", (chunk) => {
      body += chunk
    })
    req.on("end", () => {
      received.push({ headers: req.headers, body })
      res.statusCode = statuses[Math.min(received.length - 1, statuses.length - 1)]!
      res.end()
    })
  })
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve))
  return { url: `http://127.0.0.1:${(server!.address() as AddressInfo).port}/hooks`, received }
}

function deliverOne(url: string, secret: string, schedule = [1, 1, 1]) {
  const outbox = new MemoryOutbox()
  const dispatcher = new Dispatcher({
    outbox,
    targets: [webhookTarget({ url, secret, schedule })],
    log: pino({ level: "silent" }),
    metrics: new HookMetrics(new Registry()),
  })
  return {
    outbox,
    run: async () => {
      dispatcher.add(
        await outbox.enqueue({
          document: "c1",
          events: [{ event: sampleEvent("evt_1"), targets: [webhookName(url)] }],
        }),
      )
      await dispatcher.idle()
    },
  }
}

describe("webhooks", () => {
  it("POSTs the event signed in the Standard Webhooks scheme, which verifyWebhook accepts", async () => {
    const { url, received } = await receiver([204])
    await deliverOne(url, SECRET).run()
    expect(received).toHaveLength(1)
    const [request] = received
    expect(request!.headers["webhook-id"]).toBe("evt_1")
    expect(request!.headers["webhook-signature"]).toMatch(/^v1,[A-Za-z0-9+/=]+$/)
    expect(request!.headers["content-type"]).toBe("application/json")
    expect(verifyWebhook(SECRET, request!.headers, request!.body)).toEqual(sampleEvent("evt_1"))
  })

  it("is refused by verifyWebhook with another secret or a tampered body", async () => {
    const { url, received } = await receiver([200])
    await deliverOne(url, "a plain shared secret").run()
    const [request] = received
    expect(verifyWebhook("a plain shared secret", request!.headers, request!.body)).toMatchObject({
      event: { id: "evt_1" },
    })
    const refused = (f: () => unknown) => {
      try {
        f()
      } catch (error) {
        return error instanceof ParleyError && error.code === ErrorCode.UNAUTHORIZED
      }
      return false
    }
    expect(refused(() => verifyWebhook("another secret", request!.headers, request!.body))).toBe(true)
    expect(refused(() => verifyWebhook("a plain shared secret", request!.headers, `${request!.body} `))).toBe(
      true,
    )
  })

  it("retries on 503 with the same webhook-id until the receiver accepts", async () => {
    const { url, received } = await receiver([503, 503, 200])
    const { run, outbox } = deliverOne(url, SECRET)
    await run()
    expect(received).toHaveLength(3)
    expect(new Set(received.map((r) => r.headers["webhook-id"]))).toEqual(new Set(["evt_1"]))
    for (const r of received) verifyWebhook(SECRET, r.headers, r.body)
    expect(await outbox.pending()).toEqual([])
    expect(await outbox.deadLetters()).toEqual([])
  })

  it("retries 408 and 429 too, then gives up to the dead letters", async () => {
    const { url, received } = await receiver([408, 429, 500, 502])
    const { run, outbox } = deliverOne(url, SECRET, [1, 1, 1])
    await run()
    expect(received).toHaveLength(4)
    const dead = await outbox.deadLetters()
    expect(dead).toHaveLength(1)
    expect(dead[0]).toMatchObject({ attempts: 4, lastError: `${webhookName(url)} answered 502` })
  })

  it("waits as long as a receiver's Retry-After asks (seconds or a date), never less than its schedule, at most its longest wait", async () => {
    const answers: [number, Record<string, string>][] = [
      [429, { "retry-after": "120" }],
      [503, { "retry-after": new Date(Date.now() + 600_000).toUTCString() }],
      [429, { "retry-after": "1" }],
      [503, { "retry-after": "9999999" }],
      [500, {}],
    ]
    server = createServer((_req, res) => {
      const [status, headers] = answers.shift()!
      res.writeHead(status, headers).end()
    })
    await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve))
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`
    const target = webhookTarget({ url, secret: SECRET, schedule: [5_000, 5_000, 5_000, 5_000, 5_000] })
    const waits: (number | undefined)[] = []
    for (let failures = 1; failures <= 5; failures++) {
      const error = await target
        .deliver(sampleEvent("evt_1"), { attempt: failures, signal: new AbortController().signal })
        .then(
          () => undefined,
          (e: unknown) => e,
        )
      waits.push(target.retryDelay(failures, error))
    }
    expect(waits[0]).toBe(120_000)
    expect(waits[1]).toBeGreaterThan(590_000)
    expect(waits[1]).toBeLessThanOrEqual(600_000)
    expect(waits.slice(2)).toEqual([5_000, 36_000_000, 5_000])
  })

  it("does not retry a receiver that rejects the request (400)", async () => {
    const { url, received } = await receiver([400])
    const { run, outbox } = deliverOne(url, SECRET)
    await run()
    expect(received).toHaveLength(1)
    expect(await outbox.deadLetters()).toHaveLength(1)
  })

  it("does not follow a redirect to another address: the delivery is dead-lettered, the other address gets nothing", async () => {
    const elsewhere: string[] = []
    const internal = createServer((req, res) => {
      elsewhere.push(`${req.method} ${req.url}`)
      res.end()
    })
    await new Promise<void>((resolve) => internal.listen(0, "127.0.0.1", resolve))
    try {
      const target = `http://127.0.0.1:${(internal.address() as AddressInfo).port}/admin`
      let received = 0
      server = createServer((req, res) => {
        received++
        req.resume()
        res.writeHead(307, { location: target })
        res.end()
      })
      await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve))
      const url = `http://127.0.0.1:${(server!.address() as AddressInfo).port}/hooks`
      const { run, outbox } = deliverOne(url, SECRET)
      await run()
      expect(received).toBe(1)
      expect(elsewhere).toEqual([])
      const dead = await outbox.deadLetters()
      expect(dead).toHaveLength(1)
      expect(dead[0]!.lastError).toContain("answered 307")
    } finally {
      await new Promise((resolve) => internal.close(resolve))
    }
  })

  it("takes a 2xx whose body never ends as delivered, reading only a little of that body", async () => {
    let written = 0
    let hungUp: () => void
    const closed = new Promise<void>((resolve) => {
      hungUp = resolve
    })
    server = createServer((req, res) => {
      req.resume()
      res.writeHead(200, { "content-type": "application/octet-stream" })
      const chunk = Buffer.alloc(64 * 1024, 97)
      // Endless, as fast as the relay reads it, until the relay hangs up.
      const pump = () => {
        while (!res.destroyed) {
          written += chunk.length
          if (!res.write(chunk)) return void res.once("drain", pump)
        }
      }
      res.on("close", () => hungUp())
      pump()
    })
    await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve))
    const url = `http://127.0.0.1:${(server!.address() as AddressInfo).port}/hooks`
    const { run, outbox } = deliverOne(url, SECRET)
    await run()
    await closed
    server!.closeAllConnections()
    expect(await outbox.pending()).toEqual([])
    expect(await outbox.deadLetters()).toEqual([])
    // Socket buffers hold a few MiB at most; reading the whole answer went on for as long as the attempt ran.
    expect(written).toBeLessThan(32 * 1024 * 1024)
  })

  it("retries when the receiver cannot be reached", async () => {
    const { url, received } = await receiver([200])
    await new Promise((resolve) => server!.close(resolve))
    server = undefined
    const { run, outbox } = deliverOne(url, SECRET, [1])
    await run()
    expect(received).toHaveLength(0)
    const dead = await outbox.deadLetters()
    expect(dead[0]!.attempts).toBe(2)
  })
})
