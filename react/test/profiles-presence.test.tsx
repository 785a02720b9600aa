// @vitest-environment happy-dom

import { spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { type ChatClient, createChatClient } from "@parley/client"
import { profileRecord, setProfile, type UserId } from "@parley/shared"
import { act, cleanup, render, screen } from "@testing-library/react"
import { SignJWT } from "jose"
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest"
import * as Y from "yjs"
import { ParleyProvider, usePresence, useProfile, useTypingNames } from "../src/index.js"

const clients: ChatClient[] = []
afterEach(async () => {
  cleanup()
  await Promise.all(clients.splice(0).map((c) => c.destroy()))
})

// Under happy-dom, `import "ws"` resolves to its browser stub: load the Node build.
const nodeRequire = createRequire(resolve("package.json"))
const WebSocket = nodeRequire("ws") as unknown

const SECRET = `react-test-${Math.random().toString(36).slice(2)}`

/** A relay process (happy-dom's `import.meta.url` is not a file URL: paths from the working directory). */
async function startRelay(): Promise<{ url: string; httpUrl: string; stop: () => void }> {
  const dataDir = mkdtempSync(join(tmpdir(), "parley-react-test-"))
  const child = spawn(
    process.execPath,
    [
      resolve("relay/bin/parley-relay.js"),
      "--port",
      "0",
      "--storage",
      "memory",
      "--data-dir",
      dataDir,
      "--auth-secret",
      SECRET,
    ],
    // Without the start-up warm-up, as every test's relay (see TEST_RELAY_ENV in
    // relay/test/helpers/relay-process.ts, which cannot be imported here: see above).
    { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, PARLEY_SKIP_WARM_UP: "1" } },
  )
  const port = await new Promise<number>((done, fail) => {
    let buffered = ""
    child.stdout.on("data", (chunk: Buffer) => {
      buffered += chunk.toString()
      const match = /"msg":"listening".*?"port":(\d+)|"port":(\d+).*?"msg":"listening"/.exec(buffered)
      if (match) done(Number(match[1] ?? match[2]))
    })
    child.on("exit", (code) => fail(new Error(`relay exited (${code})`)))
  })
  return {
    url: `ws://127.0.0.1:${port}`,
    httpUrl: `http://127.0.0.1:${port}`,
    stop: () => child.kill("SIGTERM"),
  }
}
type RelayProcess = Awaited<ReturnType<typeof startRelay>>

async function connectClient(relay: RelayProcess, user: string): Promise<ChatClient> {
  const client = await createChatClient({
    url: relay.url,
    // Signed here: happy-dom's fetch is not Node's, and the relay needs no dev mode.
    token: () =>
      new SignJWT({})
        .setProtectedHeader({ alg: "HS256" })
        .setSubject(user)
        .setExpirationTime("1h")
        .sign(new TextEncoder().encode(SECRET)),
    user,
    storage: "memory",
    WebSocket: WebSocket as never,
    reconnect: { minDelay: 50, maxDelay: 400 },
  })
  clients.push(client)
  return client
}

const eventually = (assertion: () => void) => vi.waitFor(assertion, { timeout: 15_000, interval: 20 })

async function offlineClient(user: string): Promise<ChatClient> {
  const client = await createChatClient({
    url: "ws://127.0.0.1:9",
    token: () => {
      throw new Error("offline: no token")
    },
    user,
    storage: "memory",
    connect: false,
    WebSocket: WebSocket as never,
  })
  clients.push(client)
  return client
}

describe("useProfile", () => {
  it("shows the user's own edit and a peer's profile as it arrives, re-rendering only whose profile changed", async () => {
    const client = await offlineClient("alice")
    const chat = await client.createConversation({ participants: ["bob", "carol"] })
    const renders = new Map<string, number>()
    function Name({ user }: { user: string }) {
      renders.set(user, (renders.get(user) ?? 0) + 1)
      const profile = useProfile(user)
      return (
        <p data-testid={user}>
          {profile.name}
          {profile.picture ? ` <${profile.picture}>` : ""}
        </p>
      )
    }
    render(
      <ParleyProvider client={client}>
        <Name user="alice" />
        <Name user="bob" />
        <Name user="carol" />
      </ParleyProvider>,
    )
    expect(screen.getByTestId("bob").textContent).toBe("bob")
    await act(() => client.setProfile({ name: "Alice", picture: "https://example.com/a.png" }))
    expect(screen.getByTestId("alice").textContent).toBe("Alice <https://example.com/a.png>")

    // Bob's own entry, written on his replica, reaches this one.
    const carolRenders = renders.get("carol")
    const bobs = new Y.Doc()
    Y.applyUpdate(bobs, Y.encodeStateAsUpdate(chat.doc))
    setProfile(bobs, "bob" as UserId, profileRecord({ name: "Bob" }))
    act(() => Y.applyUpdate(chat.doc, Y.encodeStateAsUpdate(bobs, Y.encodeStateVector(chat.doc))))
    expect(screen.getByTestId("bob").textContent).toBe("Bob")
    expect(renders.get("carol")).toBe(carolRenders)
  })
})

describe("with a relay", () => {
  let relay: RelayProcess
  beforeAll(async () => {
    relay = await startRelay()
  })
  afterAll(async () => {
    await relay?.stop()
  })

  it("usePresence shows the SDK's presence (online, then offline with last seen) and typing by name", async () => {
    const alice = await connectClient(relay, "alice-r")
    const bob = await connectClient(relay, "bob-r")
    const chat = await alice.createConversation({ participants: ["bob-r"] })
    const hello = chat.send("hello")
    await eventually(() => expect(alice.conversation(chat.id).status(hello.id)).toBe("sent"))
    function People() {
      const presence = usePresence(chat)
      const typing = useTypingNames(chat)
      return (
        <>
          <ul>
            {presence.map((p) => (
              <li key={p.user}>{`${p.user}:${p.status}${p.lastSeen !== undefined ? ":seen" : ""}`}</li>
            ))}
          </ul>
          <p data-testid="typing">{typing.join(",")}</p>
        </>
      )
    }
    function Contacts() {
      return (
        <p data-testid="contacts">
          {usePresence()
            .map((p) => `${p.user}:${p.status}`)
            .join(",")}
        </p>
      )
    }
    render(
      <ParleyProvider client={alice}>
        <People />
        <Contacts />
      </ParleyProvider>,
    )
    const bobs = await bob.conversation(chat.id).ready()
    await bob.setProfile({ name: "Bob" })
    await eventually(() => expect(screen.getByText("bob-r:online:seen")).toBeTruthy())
    expect(screen.getByTestId("contacts").textContent).toBe("bob-r:online")
    act(() => bobs.typing())
    await eventually(() => expect(screen.getByTestId("typing").textContent).toBe("Bob"))
    await act(() => bobs.close())
    await eventually(() => expect(screen.getByText("bob-r:offline:seen")).toBeTruthy())
  }, 30_000)
})
