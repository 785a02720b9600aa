import { createServer, type ServerResponse } from "node:http"
import { type AddressInfo, connect } from "node:net"
import { type ConversationId, type FileAttachment, sendMessage, type UserId, UserLimit } from "@parley/shared"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { attachmentClient, createGroup } from "../helpers/attachments.js"
import { pushRelayArgs } from "../helpers/push-receiver.js"
import {
  metricLine,
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../helpers/relay-process.js"
import { until } from "../helpers/until.js"

const alice = "alice" as UserId
const bob = "bob" as UserId
const mallory = "mallory" as UserId

/** A refusal's status, `Retry-After` and problem body. */
async function answer(response: Response) {
  const text = await response.text()
  return {
    status: response.status,
    retryAfter: response.headers.get("retry-after"),
    body: text && response.headers.get("content-type")?.includes("json") ? JSON.parse(text) : undefined,
  }
}

afterAll(async () => {
  await stopRelayProcesses()
})

describe("the per-user HTTP request budget", () => {
  let relay: RelayProcess
  const api = attachmentClient(() => relay)
  const vapidArgs = pushRelayArgs(false)

  beforeAll(async () => {
    relay = await startRelayProcess({
      args: ["--user-http-requests-per-second", "1", "--user-http-request-burst", "6", ...vapidArgs],
    })
  })

  it("answers one user 429 http-requests-per-user across tokens and routes, while another user is served", async () => {
    const id = "g~http-budget-01" as ConversationId
    const client = await createGroup(relay, id, alice, [bob, mallory])
    const done = await api.upload(alice, id, "notes.txt", new Uint8Array(Buffer.from("hello, budget\n")))
    expect(done.status).toBe(201)
    const attachment = done.body!.attachment as FileAttachment
    sendMessage(client.doc, alice, { body: "notes", attachments: [attachment] })
    await client.allSaved()

    // Mallory asks for one byte at a time, with two tokens of hers (two devices), until refused.
    const tokens = [await relay.token(mallory), await relay.token(mallory, { expiresIn: "2h" })]
    expect(tokens[0]).not.toBe(tokens[1])
    const statuses: number[] = []
    let refused: Awaited<ReturnType<typeof answer>> | undefined
    for (let i = 0; i < 30 && !refused; i++) {
      const response = await fetch(`${relay.httpUrl}${attachment.url!}`, {
        headers: { authorization: `Bearer ${tokens[i % 2]}`, range: "bytes=0-0" },
      })
      statuses.push(response.status)
      if (response.status === 429) refused = await answer(response)
      else await response.arrayBuffer()
    }
    expect(statuses.slice(0, 5)).toEqual([206, 206, 206, 206, 206])
    expect(refused).toMatchObject({
      status: 429,
      body: { code: "RATE_LIMITED", rule: UserLimit.httpRequests, status: 429 },
    })
    expect(Number(refused!.retryAfter)).toBeGreaterThanOrEqual(1)

    // Her other routes share the budget: a signed URL, her push devices.
    const sign = await fetch(`${relay.httpUrl}/v1/attachments/${attachment.id}/signed-url`, {
      method: "POST",
      headers: { authorization: `Bearer ${tokens[0]}` },
    })
    expect(await answer(sign)).toMatchObject({ status: 429, body: { rule: UserLimit.httpRequests } })
    const devices = await fetch(`${relay.httpUrl}/v1/me/push-subscriptions`, {
      headers: { authorization: `Bearer ${tokens[1]}` },
    })
    expect(await answer(devices)).toMatchObject({ status: 429, body: { rule: UserLimit.httpRequests } })

    // Bob is served meanwhile: his budget is his own.
    const bobs = await api.download(attachment.url, bob, { range: "bytes=0-0" })
    expect(bobs.status).toBe(206)
    const bobsDevices = await fetch(`${relay.httpUrl}/v1/me/push-subscriptions`, {
      headers: { authorization: `Bearer ${await relay.token(bob)}` },
    })
    expect(bobsDevices.status).toBe(200)
    expect(
      await metricLine(relay, `parley_user_limit_total{limit="${UserLimit.httpRequests}"}`),
    ).toBeGreaterThan(0)
    client.close()
  })

  it("counts downloads by a signed URL against the user it was made for", async () => {
    const id = "g~http-budget-02" as ConversationId
    const client = await createGroup(relay, id, alice, [bob])
    const done = await api.upload(alice, id, "b.txt", new Uint8Array(Buffer.from("signed\n")))
    const attachment = done.body!.attachment as FileAttachment
    sendMessage(client.doc, alice, { body: "b", attachments: [attachment] })
    await client.allSaved()
    const signed = await api.sign(bob, attachment.id!)
    expect(signed.status).toBe(200)
    const url = signed.body.url as string
    // Forged signatures in bob's name spend nothing of his: they are refused before they are counted.
    const forged = url.replace(/sig=[^&]+/, "sig=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    for (let i = 0; i < 10; i++)
      expect((await fetch(`${relay.httpUrl}${forged}`, { headers: { range: "bytes=0-0" } })).status).toBe(404)
    const statuses: number[] = []
    for (let i = 0; i < 30 && !statuses.includes(429); i++) {
      const response = await fetch(`${relay.httpUrl}${url}`, { headers: { range: "bytes=0-0" } })
      statuses.push(response.status)
      await response.arrayBuffer()
    }
    expect(statuses[0]).toBe(206)
    expect(statuses.at(-1)).toBe(429)
    client.close()
  })
})

/** A local web server whose pages say their path; `/slow/...` pages wait until released. */
async function pageServer() {
  const fetched: string[] = []
  const held: ServerResponse[] = []
  const server = createServer((req, res) => {
    fetched.push(req.url ?? "")
    const page = () => {
      if (req.url?.startsWith("/missing")) {
        res.writeHead(404).end()
        return
      }
      res.writeHead(200, { "content-type": "text/html" })
      res.end(`<html><head><title>Page ${req.url}</title></head></html>`)
    }
    if (req.url?.startsWith("/slow/")) held.push(Object.assign(res, { page }))
    else page()
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return {
    url: (path: string) => `${base}${path}`,
    fetched,
    /** How many times `path` was fetched. */
    count: (path: string) => fetched.filter((p) => p === path).length,
    held: () => held.length,
    release: () => {
      for (const res of held.splice(0)) (res as ServerResponse & { page(): void }).page()
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}

describe("link previews' limits and cache", () => {
  let relay: RelayProcess
  let pages: Awaited<ReturnType<typeof pageServer>>

  beforeAll(async () => {
    pages = await pageServer()
    relay = await startRelayProcess({
      args: [
        "--link-previews",
        "--link-previews-allow-private",
        "--link-previews-per-user-at-once",
        "1",
        "--link-previews-per-user-per-minute",
        "3",
      ],
    })
  })
  afterAll(async () => {
    pages.release()
    await pages.close()
  })

  const preview = async (user: UserId, path: string) =>
    fetch(`${relay.httpUrl}/v1/link-preview?url=${encodeURIComponent(pages.url(path))}`, {
      headers: { authorization: `Bearer ${await relay.token(user)}` },
    })

  it("holds a user to their previews at once and per minute, while another user is served", async () => {
    const first = preview(mallory, "/slow/1")
    await until(pages.held, (n) => n === 1)
    // A second page while the first is being fetched: refused at once, not fetched.
    const second = await answer(await preview(mallory, "/slow/2"))
    expect(second).toMatchObject({
      status: 429,
      body: { code: "RATE_LIMITED", rule: UserLimit.linkPreviewsAtOnce },
    })
    expect(Number(second.retryAfter)).toBeGreaterThanOrEqual(1)
    expect(pages.count("/slow/2")).toBe(0)
    // Bob's preview is fetched meanwhile.
    const bobs = await preview(bob, "/bob")
    expect(bobs.status).toBe(200)
    expect(await bobs.json()).toMatchObject({ title: "Page /bob" })
    pages.release()
    expect((await first).status).toBe(200)

    // Three fetches a minute: /slow/1 was one, two more fit, the fourth is refused unfetched.
    expect((await preview(mallory, "/m2")).status).toBe(200)
    expect((await preview(mallory, "/m3")).status).toBe(200)
    const fourth = await answer(await preview(mallory, "/m4"))
    expect(fourth).toMatchObject({ status: 429, body: { rule: UserLimit.linkPreviews } })
    expect(Number(fourth.retryAfter)).toBeGreaterThanOrEqual(1)
    expect(pages.count("/m4")).toBe(0)
    // A page already previewed costs nothing: still served to her.
    expect((await preview(mallory, "/m2")).status).toBe(200)
    expect(await metricLine(relay, `parley_user_limit_total{limit="${UserLimit.linkPreviews}"}`)).toBe(1)
    expect(await metricLine(relay, `parley_user_limit_total{limit="${UserLimit.linkPreviewsAtOnce}"}`)).toBe(
      1,
    )
  })

  it("fetches a page once for every user asking within the cache's lifetime, failures included", async () => {
    const answers = []
    for (const user of [alice, bob, alice, "carol" as UserId, "dave" as UserId])
      answers.push(await preview(user, "/shared"))
    for (const response of answers) {
      expect(response.status).toBe(200)
      expect(await response.json()).toEqual({ url: pages.url("/shared"), title: "Page /shared" })
    }
    expect(pages.count("/shared")).toBe(1)

    // Requests for a page being fetched wait for that one fetch.
    const together = [preview(alice, "/slow/together"), preview(bob, "/slow/together")]
    await until(pages.held, (n) => n === 1)
    pages.release()
    for (const response of await Promise.all(together)) expect(response.status).toBe(200)
    expect(pages.count("/slow/together")).toBe(1)

    // A page that fails is not fetched again at once either.
    expect((await preview(alice, "/missing")).status).toBe(503)
    expect((await preview(bob, "/missing")).status).toBe(503)
    expect(pages.count("/missing")).toBe(1)
  })
})

describe("bad credentials over HTTP, per client address", () => {
  let relay: RelayProcess
  beforeAll(async () => {
    relay = await startRelayProcess({ args: ["--address-auth-failures-per-minute", "3"] })
  })

  it("answers 429 auth-failures-per-address before verifying, once an address spent its failures", async () => {
    const download = (token: string) =>
      fetch(`${relay.httpUrl}/v1/attachments/att_00000000000000000000000000`, {
        headers: { authorization: `Bearer ${token}` },
      })
    // A valid token takes nothing from the address: its 404 is not a failure.
    for (let i = 0; i < 5; i++) expect((await download(await relay.token(alice))).status).toBe(404)
    const forged = await relay.token(alice, { secret: "not-the-relay-secret" })
    for (let i = 0; i < 3; i++) expect((await download(forged)).status).toBe(401)
    const refused = await download(forged)
    expect(refused.status).toBe(429)
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
    expect(await refused.text()).toBe("auth-failures-per-address\n")
    // Anything with credentials the relay never verified now waits from that address, the API's routes
    // included (a token it verified before still gets in: relay/test/connection-attempts.test.ts).
    expect((await download(await relay.token(alice, { expiresIn: "2h" }))).status).toBe(429)
    const api = await fetch(`${relay.httpUrl}/v1/conversations`, {
      headers: { authorization: "Bearer pk_x_y" },
    })
    expect(api.status).toBe(429)
    // Requests without credentials are not refused by it.
    expect((await fetch(`${relay.httpUrl}/healthz`)).status).toBe(200)
  })
})

describe("downloads a user holds open", () => {
  let relay: RelayProcess
  const api = attachmentClient(() => relay)
  beforeAll(async () => {
    relay = await startRelayProcess({
      args: ["--attachment-downloads-per-user", "3", "--attachment-download-idle-ms", "1500"],
    })
  })

  /** Starts downloading `path` on a socket of its own and never reads past the response's head. */
  function stalledDownload(path: string, token?: string) {
    const socket = connect(Number(new URL(relay.httpUrl).port), "127.0.0.1")
    const status = new Promise<number>((resolve) =>
      socket.once("data", (data) => {
        socket.pause()
        resolve(Number(data.toString("latin1").split(" ")[1]))
      }),
    )
    const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()))
    socket.on("error", () => {})
    socket.write(
      `GET ${path} HTTP/1.1\r\nHost: relay\r\n${token ? `Authorization: Bearer ${token}\r\n` : ""}\r\n`,
    )
    return { socket, status, closed }
  }

  it("answers 429 downloads-at-once-per-user past the limit, signed URLs included, and ends downloads their readers stopped taking", async () => {
    const id = "g~downloads-01" as ConversationId
    const client = await createGroup(relay, id, alice, [bob])
    // Larger than the socket buffers of both ends together, so a reader that does not read holds it.
    const bytes = new Uint8Array(24 * 1024 * 1024).map((_, i) => 97 + (i % 26))
    const done = await api.upload(alice, id, "letters.txt", bytes)
    expect(done.status).toBe(201)
    const attachment = done.body!.attachment as FileAttachment
    const token = await relay.token(bob)
    const signed = await api.sign(bob, attachment.id!)
    const held = [
      stalledDownload(attachment.url!, token),
      stalledDownload(attachment.url!, token),
      stalledDownload(signed.body.url as string),
    ]
    expect(await Promise.all(held.map((d) => d.status))).toEqual([200, 200, 200])

    const refused = await answer(
      await fetch(`${relay.httpUrl}${attachment.url!}`, { headers: { authorization: `Bearer ${token}` } }),
    )
    expect(refused).toMatchObject({
      status: 429,
      retryAfter: "1",
      body: { code: "RATE_LIMITED", rule: UserLimit.downloadsAtOnce },
    })
    expect((await api.download(signed.body.url as string)).status).toBe(429)
    // Another user is served meanwhile.
    expect((await api.download(attachment.url!, alice)).bytes.length).toBe(bytes.length)

    expect(await metricLine(relay, `parley_user_limit_total{limit="${UserLimit.downloadsAtOnce}"}`)).toBe(2)
    // Readers that take nothing lose their connections after the idle limit, and their slots with them.
    const got = await until(
      () => api.download(attachment.url!, bob),
      (d) => d.status === 200,
    )
    expect(got.status).toBe(200)
    expect(Buffer.from(got.bytes).equals(Buffer.from(bytes))).toBe(true)
    // Read now, each held download ends short of the file: the relay closed it.
    const received = await Promise.all(
      held.map(async (d) => {
        let length = 0
        d.socket.on("data", (data: Buffer) => {
          length += data.length
        })
        d.socket.resume()
        await d.closed
        return length
      }),
    )
    for (const length of received) expect(length).toBeLessThan(bytes.length)
    client.close()
  })
})
