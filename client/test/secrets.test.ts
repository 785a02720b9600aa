import { ErrorCode } from "@parley/shared"
import { afterAll, afterEach, beforeAll, expect, it, vi } from "vitest"
import {
  connectClient,
  destroyClients,
  devToken,
  eventually,
  type RelayProcess,
  startRelay,
} from "./support.js"

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay()
})
afterAll(() => relay.stop())
afterEach(async () => {
  vi.restoreAllMocks()
  await destroyClients()
})

it("logs no token when the relay turns a removed participant away", async () => {
  const tokens: string[] = []
  const token = async () => {
    const minted = await devToken(relay, "secret-bob")
    tokens.push(minted)
    return minted
  }
  const alice = await connectClient(relay, "secret-alice")
  const chat = await alice.createConversation({ participants: ["secret-bob"], title: "soon without bob" })
  const bob = await connectClient(relay, "secret-bob", { token })
  const bobChat = await bob.conversation(chat.id).ready()
  const logged: unknown[][] = []
  for (const level of ["log", "info", "warn", "error", "debug"] as const)
    vi.spyOn(console, level).mockImplementation((...args: unknown[]) => {
      logged.push(args)
    })
  chat.removeParticipants(["secret-bob"])
  await eventually(() =>
    expect(bobChat.state).toMatchObject({ state: "unavailable", reason: ErrorCode.FORBIDDEN }),
  )
  expect(tokens.length).toBeGreaterThan(0)
  const output = logged.map((args) => args.map(String).join(" ")).join("\n")
  // Counted, not compared, so that a failure does not print the token either.
  expect(tokens.filter((minted) => output.includes(minted)).length).toBe(0)
})
