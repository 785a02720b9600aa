import { mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { hooksApi, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { apiClient, createKey, freshDataDir } from "./helpers.js"

/** A hook module that appends each event's type and actor to `HOOK_LOG`. */
const ACTOR_RECORDER = `import { appendFileSync } from "node:fs"
import { defineHooks } from ${JSON.stringify(hooksApi())}
const record = ({ event }) => appendFileSync(process.env.HOOK_LOG, JSON.stringify({ type: event.type, actor: event.actor }) + "\\n")
export default defineHooks({ onConversationCreated: record, onMessageSent: record, onMessagesRead: record })
`

describe("API writes in hooks", () => {
  afterAll(async () => {
    await stopRelayProcesses()
  })

  it("name the key's service as the actor, with the participant it wrote as", async () => {
    const dataDir = freshDataDir()
    const hooks = join(dataDir, "hooks")
    mkdirSync(hooks)
    writeFileSync(join(hooks, "record.mjs"), ACTOR_RECORDER)
    const log = join(dataDir, "hook.log")
    const key = await createKey(dataDir, "crm", ["conversations:write", "messages:write", "act-as-user"])
    const relay = await startRelayProcess({
      dataDir,
      args: ["--hooks", hooks],
      env: { HOOK_LOG: log },
      hooksUseHooksApi: true,
    })
    const api = apiClient(() => relay.httpUrl, key)
    await api("POST", "/v1/conversations", { id: "g~crm", participants: [{ user: "alice" }] })
    await api("POST", "/v1/conversations/g~crm/messages", { body: "from the CRM" })
    await api("POST", "/v1/conversations/g~crm/messages", { body: "from alice", asUser: "alice" })
    await api("POST", "/v1/conversations/g~crm/read", { asUser: "alice" })
    const read = () =>
      readFileSync(log, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((line) => JSON.parse(line))
    await expect
      .poll(
        () => {
          try {
            return read().length
          } catch {
            return 0
          }
        },
        { timeout: 10_000 },
      )
      .toBe(4)
    expect(read()).toEqual([
      { type: "conversation.created", actor: { kind: "service", subject: "crm", user: "service.crm" } },
      { type: "message.sent", actor: { kind: "service", subject: "crm", user: "service.crm" } },
      { type: "message.sent", actor: { kind: "service", subject: "crm", user: "alice" } },
      { type: "messages.read", actor: { kind: "service", subject: "crm", user: "alice" } },
    ])
  })
})
