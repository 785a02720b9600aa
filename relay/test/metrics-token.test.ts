import { afterEach, describe, expect, it } from "vitest"
import { ConfigError, parseConfig } from "../src/config.js"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

afterEach(() => stopRelayProcesses())

const TOKEN = "metrics-token-0123456789abcdef"

const scrape = (url: string, authorization?: string) =>
  fetch(`${url}/metrics`, authorization ? { headers: { authorization } } : {})

describe("--metrics-token", () => {
  it("serves /metrics only to requests bearing the token (401 otherwise), and leaves /healthz and /readyz open", async () => {
    const relay = await startRelayProcess({ env: { PARLEY_METRICS_TOKEN: TOKEN } })
    for (const authorization of [
      undefined,
      "Bearer wrong-token-0123456789",
      `Basic ${TOKEN}`,
      `Bearer ${TOKEN}x`,
    ]) {
      const refused = await scrape(relay.httpUrl, authorization)
      expect(refused.status).toBe(401)
      expect(refused.headers.get("www-authenticate")).toBe('Bearer realm="metrics"')
      const text = await refused.text()
      expect(text).not.toContain("parley_")
      expect(JSON.parse(text)).toEqual({
        error: "GET /metrics needs the relay's metrics token: Authorization: Bearer TOKEN",
      })
    }
    const served = await scrape(relay.httpUrl, `Bearer ${TOKEN}`)
    expect(served.status).toBe(200)
    expect(await served.text()).toContain("parley_connections")
    expect((await fetch(`${relay.httpUrl}/healthz`)).status).toBe(200)
    expect((await fetch(`${relay.httpUrl}/readyz`)).status).not.toBe(401)
  })

  it("counts a wrong token as one of the address's failed verifications: guessing ends in 429", async () => {
    const relay = await startRelayProcess({
      args: ["--address-auth-failures-per-minute", "3"],
      env: { PARLEY_METRICS_TOKEN: TOKEN },
    })
    for (let i = 0; i < 3; i++)
      expect((await scrape(relay.httpUrl, `Bearer guess-${i}-0123456789abcdef`)).status).toBe(401)
    expect((await scrape(relay.httpUrl, `Bearer ${TOKEN}`)).status).toBe(429)
  })

  it("serves /metrics to anyone without a token, as before", async () => {
    const relay = await startRelayProcess()
    const served = await scrape(relay.httpUrl)
    expect(served.status).toBe(200)
    expect(await served.text()).toContain("parley_connections")
  })

  it("refuses a token shorter than 16 characters, from the flag or its variable", () => {
    expect(() => parseConfig(["--dev", "--metrics-token", "short"], {})).toThrow(ConfigError)
    expect(() => parseConfig(["--dev"], { PARLEY_METRICS_TOKEN: "short" })).toThrow(
      "--metrics-token must be at least 16 characters (a random one: openssl rand -hex 32)",
    )
    expect(parseConfig(["--dev"], { PARLEY_METRICS_TOKEN: TOKEN })).toMatchObject({ metricsToken: TOKEN })
  })
})
