import { encodeKeepalive, TOKEN_PARAM } from "@parley/shared"
import { afterEach, describe, expect, it, vi } from "vitest"
import { WebSocket } from "ws"
import { startRelayProcess, stopRelayProcesses } from "./helpers/relay-process.js"

afterEach(stopRelayProcesses)

describe("relay keepalive", () => {
  it("drops a socket that stops answering pings, and says so without the token", async () => {
    const relay = await startRelayProcess({ args: ["--ping-interval-ms", "100", "--ping-timeout-ms", "500"] })
    const token = await relay.token("silent-sam")
    // autoPong off: the client's side of a half-open connection, which never answers.
    const silent = new WebSocket(`${relay.url}/inbox~silent-sam?${TOKEN_PARAM}=${token}`, { autoPong: false })
    const pinged = new Promise<void>((resolve) => silent.once("ping", () => resolve()))
    const closed = new Promise<number>((resolve) => silent.once("close", (code) => resolve(code)))
    await pinged
    // Dropped without a closing handshake: such a peer would not answer that either.
    expect(await closed).toBe(1006)
    const line = await relay.waitForLog((entry) => entry.msg === "dropped: no answer to ping")
    expect(line.doc).toBe("inbox~silent-sam")
    expect(relay.lines.join("\n")).not.toContain(token)
  })

  it("sends joined sockets keepalive frames that a stock client applies as an empty awareness update", async () => {
    const relay = await startRelayProcess({ args: ["--ping-interval-ms", "100"] })
    const token = await relay.token("kept-kim")
    const socket = new WebSocket(`${relay.url}/inbox~kept-kim?${TOKEN_PARAM}=${token}`)
    const frames: Uint8Array[] = []
    socket.on("message", (data: Buffer) => frames.push(new Uint8Array(data)))
    await vi.waitFor(() => expect(frames).toContainEqual(encodeKeepalive()), { timeout: 10_000 })
    expect([...encodeKeepalive()]).toEqual([0x01, 0x01, 0x00])
    socket.close()
  })
})
