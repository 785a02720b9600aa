// @vitest-environment happy-dom
// The page's origin here is happy-dom's own, not the relay's: tokens are signed by the test (the relay
// gives dev tokens to its own origin only), and happy-dom's fetch is told not to apply CORS.
// @vitest-environment-options {"settings":{"fetch":{"disableSameOriginPolicy":true}}}

import { type ChatClient, createChatClient } from "@parley/client"
import { cleanup, render, screen } from "@testing-library/react"
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest"
import {
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../../relay/test/helpers/relay-process.js"
import { ParleyProvider, useAttachmentUrl } from "../src/index.js"

const clients: ChatClient[] = []
afterEach(async () => {
  cleanup()
  await Promise.all(clients.splice(0).map((c) => c.destroy()))
})

async function connect(relay: RelayProcess, user: string): Promise<ChatClient> {
  const client = await createChatClient({
    url: relay.url,
    user,
    token: () => relay.token(user),
    storage: "memory",
  })
  clients.push(client)
  return client
}

describe("@parley/react attachments with a relay", () => {
  let relay: RelayProcess
  beforeAll(async () => {
    relay = await startRelayProcess()
  })
  afterAll(async () => {
    await stopRelayProcesses()
  })

  it("gives a participant a signed URL for an uploaded file, and a non-participant NOT_FOUND", async () => {
    const alice = await connect(relay, "reacta")
    const carol = await connect(relay, "reactc")
    const chat = await alice.createConversation({ participants: ["reactb"] })
    const sent = chat.send({ body: "notes", files: [new Blob(["hello from react"], { type: "text/plain" })] })
    await vi.waitFor(() => expect(chat.message(sent.id)?.attachments).toHaveLength(1), { timeout: 15_000 })
    const attachment = chat.message(sent.id)!.attachments[0]!
    function Link({ label }: { label: string }) {
      const { url, error } = useAttachmentUrl(attachment)
      return (
        <p>
          {label}: {url ? new URL(url).pathname : (error?.code ?? "loading")}
        </p>
      )
    }
    render(
      <>
        <ParleyProvider client={alice}>
          <Link label="alice" />
        </ParleyProvider>
        <ParleyProvider client={carol}>
          <Link label="carol" />
        </ParleyProvider>
      </>,
    )
    const id = (attachment as { id: string }).id
    await screen.findByText(`alice: /v1/attachments/${id}`)
    await screen.findByText("carol: NOT_FOUND")
    const url = await alice.attachmentUrl(attachment)
    expect(await (await fetch(url)).text()).toBe("hello from react")
  })
})
