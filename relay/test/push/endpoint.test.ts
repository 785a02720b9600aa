import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { describe, expect, it } from "vitest"
import { checkEndpointBeforeSend, checkEndpointUrl, isNonPublicAddress } from "../../src/push/endpoint.js"
import { publicOnlyFetch } from "../../src/push/public-fetch.js"

const strict = {}
const refused = (endpoint: string, policy = strict) => {
  try {
    checkEndpointUrl(endpoint, policy)
    return undefined
  } catch (error) {
    return (error as { code?: string }).code
  }
}

describe("push endpoints (URLs chosen by whoever registers)", () => {
  it("accepts a public https push service", () => {
    expect(refused("https://fcm.googleapis.com/fcm/send/abc")).toBeUndefined()
    expect(refused("https://updates.push.services.mozilla.com/wpush/v2/gAAA")).toBeUndefined()
  })

  it("refuses http, other schemes, credentials and overlong URLs", () => {
    expect(refused("http://push.example.com/x")).toBe("INVALID_ARGUMENT")
    expect(refused("file:///etc/passwd")).toBe("INVALID_ARGUMENT")
    expect(refused("https://user:pw@push.example.com/x")).toBe("INVALID_ARGUMENT")
    expect(refused(`https://push.example.com/${"a".repeat(3000)}`)).toBe("INVALID_ARGUMENT")
    expect(refused("not a url")).toBe("INVALID_ARGUMENT")
  })

  it("refuses the relay's own host, private networks and cloud metadata, written any way", () => {
    for (const host of [
      "127.0.0.1",
      "localhost",
      "api.localhost",
      "10.1.2.3",
      "192.168.0.10",
      "172.20.0.1",
      "169.254.169.254",
      "[::1]",
      "[fd00::1]",
      "[fe80::1]",
      "[::ffff:127.0.0.1]",
      "0.0.0.0",
      // IPv6 forms carrying 127.0.0.1: IPv4-compatible, 6to4, Teredo, local NAT64.
      "[::127.0.0.1]",
      "[2002:7f00:1::]",
      "[2001:0:7f00:1::]",
      "[64:ff9b:1::7f00:1]",
      // IPv4-translated (127.0.0.1), site-local, discard-only, documentation ranges.
      "[::ffff:0:7f00:1]",
      "[fec0::1]",
      "[100::1]",
      "[2001:db8::1]",
      "[3fff::1]",
      "192.0.2.1",
      "198.51.100.7",
      "203.0.113.9",
    ])
      expect([host, refused(`https://${host}/push`)]).toEqual([host, "INVALID_ARGUMENT"])
    expect(isNonPublicAddress("8.8.8.8")).toBe(false)
    expect(isNonPublicAddress("2607:f8b0::1")).toBe(false)
    expect(isNonPublicAddress("2a00:1450:4001::1")).toBe(false)
    expect(isNonPublicAddress("203.0.114.1")).toBe(false)
  })

  it("accepts http and private addresses only when the operator allows them (tests, local development)", () => {
    expect(refused("http://127.0.0.1:9999/push", { allowHttp: true, allowPrivate: true })).toBeUndefined()
    expect(refused("http://127.0.0.1:9999/push", { allowHttp: true })).toBe("INVALID_ARGUMENT")
  })

  it("refuses before sending a host name that resolves to a loopback address", async () => {
    await expect(checkEndpointBeforeSend("https://localhost./push", strict)).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    })
    await expect(checkEndpointBeforeSend("https://127.0.0.1/push", strict)).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    })
  })

  it("never connects to a private address a name resolves to at send time (DNS rebinding)", async () => {
    // A name that passed the check and now answers 127.0.0.1: the connection's own lookup refuses it.
    let connections = 0
    const server = createServer((_req, res) => res.end("inside")).on("connection", () => connections++)
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const port = (server.address() as AddressInfo).port
    const asked: string[] = []
    const rebinding = async (host: string) => {
      asked.push(host)
      return [{ address: "127.0.0.1", family: 4 }]
    }
    try {
      const send = publicOnlyFetch({ allowHttp: true }, rebinding)
      const failure = await send(`http://rebind.example:${port}/push`, { method: "POST" }).then(
        () => undefined,
        (error: Error) => error,
      )
      expect(failure).toBeInstanceOf(Error)
      expect(JSON.stringify(failure, Object.getOwnPropertyNames(failure)) + String(failure?.cause)).toMatch(
        /loopback or private/,
      )
      expect(asked).toEqual(["rebind.example"])
      expect(connections).toBe(0)
      // The same server is reachable when the operator allows private addresses, so the refusal above
      // is the guard's and not a dead port.
      const allowed = await publicOnlyFetch({ allowHttp: true, allowPrivate: true })(
        `http://127.0.0.1:${port}/`,
      )
      expect(await allowed.text()).toBe("inside")
    } finally {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    }
  })
})
