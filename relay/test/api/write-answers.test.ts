import { afterAll, describe, expect, it } from "vitest"
import { startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"
import { apiClient, createKey, freshDataDir } from "./helpers.js"

afterAll(() => stopRelayProcesses())

/** Whether `body`, as JSON, holds `secret` anywhere. */
const holds = (body: unknown, secret: string) => JSON.stringify(body ?? null).includes(secret)

const ALL_SCOPES = [
  "conversations:read",
  "conversations:write",
  "messages:read",
  "messages:write",
  "act-as-user",
]

/** A relay process with one API key per entry of `keys` (name: scopes), and a client for each. */
async function relayWithKeys<Name extends string>(keys: Record<Name, string[]>) {
  const dataDir = freshDataDir()
  const secrets = new Map<Name, string>()
  for (const [name, scopes] of Object.entries(keys) as [Name, string[]][])
    secrets.set(name, await createKey(dataDir, name, scopes))
  const relay = await startRelayProcess({ dataDir })
  return (name: Name) => apiClient(() => relay.httpUrl, secrets.get(name))
}

describe("a write's answer to a key that may not read", () => {
  it("names what was written and shows nothing a read would, while a key that may read gets the whole view", async () => {
    const as = await relayWithKeys({
      admin: ALL_SCOPES,
      rooms: ["conversations:write", "act-as-user"],
      bot: ["messages:write", "act-as-user"],
    })
    const [asAdmin, asRooms, asBot] = [as("admin"), as("rooms"), as("bot")]

    // Alice's private talk with bob, and a group she owns, each with a secret last message.
    const direct = await asAdmin("POST", "/v1/conversations/direct", { with: "bob", asUser: "alice" })
    expect(direct.status).toBe(201)
    const dm = direct.body.id as string
    const dmSecret = "PRIVATE: my pin is 4711"
    expect(
      (await asAdmin("POST", `/v1/conversations/${dm}/messages`, { body: dmSecret, asUser: "alice" })).status,
    ).toBe(201)
    const group = await asAdmin("POST", "/v1/conversations", {
      id: "g~plans",
      title: "Plans",
      participants: [{ user: "bob" }],
      asUser: "alice",
    })
    expect(group.status).toBe(201)
    const groupSecret = "GROUP SECRET: layoffs on friday"
    const sent = await asAdmin("POST", "/v1/conversations/g~plans/messages", {
      body: groupSecret,
      asUser: "alice",
    })
    expect(sent.status).toBe(201)
    const messageId = sent.body.id as string

    // The reads themselves are refused to the write-only keys.
    expect((await asRooms("GET", `/v1/conversations/${dm}`)).status).toBe(403)
    expect((await asBot("GET", "/v1/conversations/g~plans/messages")).status).toBe(403)

    // Conversation writes: the conversation's id and kind, nothing of its messages, markers or people.
    const found = await asRooms("POST", "/v1/conversations/direct", { with: "bob", asUser: "alice" })
    expect(found.status).toBe(200)
    expect(found.body).toEqual({ id: dm, kind: "direct" })
    const renamed = await asRooms("PATCH", "/v1/conversations/g~plans", { title: "Plans", asUser: "alice" })
    expect(renamed.status).toBe(200)
    expect(renamed.body).toEqual({ id: "g~plans", kind: "group" })
    const role = await asRooms("PUT", "/v1/conversations/g~plans/participants/bob/role", {
      role: "admin",
      asUser: "alice",
    })
    expect(role.status).toBe(200)
    expect(role.body).toEqual({ id: "g~plans", kind: "group" })
    const created = await asRooms("POST", "/v1/conversations", {
      id: "g~new",
      participants: [],
      asUser: "carol",
    })
    expect(created.status).toBe(201)
    expect(created.body).toEqual({ id: "g~new", kind: "group" })

    // Message writes: a reaction's answer is the message's id alone (its number is where someone else's
    // message is in the conversation), a send's its id and number; not its body or others' reactions.
    const reacted = await asBot("POST", `/v1/conversations/g~plans/messages/${messageId}/reactions`, {
      emoji: "👍",
      asUser: "bob",
    })
    expect(reacted.status).toBe(200)
    expect(reacted.body).toEqual({ id: messageId })
    const unreacted = await asBot(
      "DELETE",
      `/v1/conversations/g~plans/messages/${messageId}/reactions/${encodeURIComponent("👍")}?asUser=bob`,
    )
    expect(unreacted.status).toBe(200)
    expect(unreacted.body).toEqual({ id: messageId })
    const mine = await asBot("POST", "/v1/conversations/g~plans/messages", {
      body: "from the bot",
      asUser: "bob",
    })
    expect(mine.status).toBe(201)
    expect(mine.body).toEqual({ id: expect.any(String), seq: expect.any(Number) })
    for (const answer of [found, renamed, role, reacted, unreacted, mine])
      for (const secret of [dmSecret, groupSecret]) expect(holds(answer.body, secret)).toBe(false)

    // A key that may read gets the whole view from the same writes.
    const whole = await asAdmin("POST", "/v1/conversations/direct", { with: "bob", asUser: "alice" })
    expect(whole.body.lastMessage.body).toBe(dmSecret)
    const wholeReaction = await asAdmin("POST", `/v1/conversations/g~plans/messages/${messageId}/reactions`, {
      emoji: "🎉",
      asUser: "alice",
    })
    expect(wholeReaction.body).toMatchObject({ body: groupSecret, reactions: { "🎉": ["alice"] } })
  })

  it("does not let a key that may not read test a guess at another user's message through a send under its id", async () => {
    const as = await relayWithKeys({ admin: ALL_SCOPES, bot: ["messages:write", "act-as-user"] })
    const [asAdmin, asBot] = [as("admin"), as("bot")]
    expect(
      (
        await asAdmin("POST", "/v1/conversations", {
          id: "g~hr",
          participants: [{ user: "bob" }],
          asUser: "alice",
        })
      ).status,
    ).toBe(201)
    const secret = { id: "m_salary", body: "salary: 91000", asUser: "alice" }
    expect((await asAdmin("POST", "/v1/conversations/g~hr/messages", secret)).status).toBe(201)

    // The right guess and a wrong one get the same refusal, before anything is compared.
    const right = await asBot("POST", "/v1/conversations/g~hr/messages", secret)
    const wrong = await asBot("POST", "/v1/conversations/g~hr/messages", { ...secret, body: "salary: 50000" })
    for (const answer of [right, wrong]) {
      expect(answer.status).toBe(403)
      expect(answer.body.code).toBe("FORBIDDEN")
      expect(answer.body.detail).toContain("Idempotency-Key")
    }

    // Its own idempotent sends work as before: by Idempotency-Key as any user, by id as its own participant.
    const keyed = { body: "payroll runs tonight", asUser: "alice" }
    const header = { "idempotency-key": "payroll-1" }
    const first = await asBot("POST", "/v1/conversations/g~hr/messages", keyed, header)
    const again = await asBot("POST", "/v1/conversations/g~hr/messages", keyed, header)
    expect([first.status, again.status]).toEqual([201, 200])
    expect(again.body).toEqual(first.body)
    expect(
      (await asBot("POST", "/v1/conversations/g~hr/messages", { ...keyed, body: "other" }, header)).status,
    ).toBe(409)

    // A key that may read the message compares as before.
    expect((await asAdmin("POST", "/v1/conversations/g~hr/messages", secret)).status).toBe(200)
    expect(
      (await asAdmin("POST", "/v1/conversations/g~hr/messages", { ...secret, body: "salary: 50000" })).status,
    ).toBe(409)
  })
})
