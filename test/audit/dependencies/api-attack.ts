// The HTTP API (API.md) against hostile and careless requests.
//
//   node --conditions=parley-source --import tsx test/audit/dependencies/api-attack.ts
//
// One relay (SQLite); keys made with `parley-relay keys create` on its data directory: `full` (every
// scope), `reader` (conversations:read, messages:read), `writer` (messages:write only), `events`
// (events:read only). Checks: every answer is a typed problem (never a 500, never a hang), a key
// never does what its scopes do not allow, path tricks reach nothing else, and the relay keeps
// serving a chat client throughout.
import { execFileSync } from "node:child_process"
import { createConversation, newConversationId, newMessageId, sendMessage, type UserId } from "@parley/shared"
import { TestClient } from "../../../relay/test/helpers/clients.js"
import { startRelayProcess } from "../../../relay/test/helpers/relay-process.js"
import { atExit, check, logSummary, RELAY_DIST, run } from "./lib.js"

run(async () => {
  const relay = await startRelayProcess({ script: RELAY_DIST })
  atExit(() => relay.kill())
  const key = (name: string, scopes: string) =>
    JSON.parse(
      execFileSync(
        process.execPath,
        [RELAY_DIST, "keys", "create", name, "--scopes", scopes, "--data-dir", relay.dataDir],
        {
          encoding: "utf8",
        },
      ),
    ).key as string
  const keys = {
    full: key(
      "full",
      "conversations:write,conversations:read,messages:write,messages:read,events:read,act-as-user",
    ),
    reader: key("reader", "conversations:read,messages:read"),
    writer: key("writer", "messages:write"),
    events: key("events", "events:read"),
  }
  const call = async (
    method: string,
    path: string,
    options: { key?: string; body?: string; type?: string; headers?: Record<string, string> } = {},
  ) => {
    try {
      const r = await fetch(`${relay.httpUrl}${path}`, {
        method,
        headers: {
          ...(options.key ? { authorization: `Bearer ${options.key}` } : {}),
          ...(options.body !== undefined ? { "content-type": options.type ?? "application/json" } : {}),
          ...options.headers,
        },
        ...(options.body !== undefined ? { body: options.body } : {}),
        signal: AbortSignal.timeout(10_000),
      })
      const text = await r.text()
      let code: string | undefined
      try {
        code = JSON.parse(text).code
      } catch {}
      return { status: r.status, code, text: text.slice(0, 200), type: r.headers.get("content-type") ?? "" }
    } catch (error) {
      return { status: 0, code: String(error), text: "", type: "" }
    }
  }

  // A conversation the full key's service owns, with alice; and one it is not part of (alice's own).
  const owned = "g~audit4-owned"
  const created = await call("POST", "/v1/conversations", {
    key: keys.full,
    body: JSON.stringify({ id: owned, participants: [{ user: "alice" }] }),
  })
  check(created.status === 201, "the full key creates a conversation", created)
  const foreign = newConversationId()
  const alice = new TestClient(relay.url, foreign, await relay.token("alice"))
  atExit(() => alice.close())
  await alice.synced()
  createConversation(alice.doc, "alice" as UserId, {
    kind: "group",
    id: foreign,
    participants: ["bob" as UserId],
  })
  await alice.allSaved()
  const sent = await call("POST", `/v1/conversations/${owned}/messages`, {
    key: keys.full,
    body: JSON.stringify({ body: "hello", id: "m_audit4_0001" }),
  })
  check(sent.status === 201, "the full key sends a message", sent)

  const results: { what: string; status: number; code?: string; text: string; type: string }[] = []
  const probe = async (what: string, ...args: Parameters<typeof call>) => {
    const r = await call(...args)
    results.push({ what, ...r })
    return r
  }

  // Scopes.
  const scopeProbes: [string, string, string, string?][] = [
    ["reader sends", "POST", `/v1/conversations/${owned}/messages`, JSON.stringify({ body: "x" })],
    ["reader renames", "PATCH", `/v1/conversations/${owned}`, JSON.stringify({ title: "pwned" })],
    [
      "reader adds a participant",
      "POST",
      `/v1/conversations/${owned}/participants`,
      JSON.stringify({ users: ["mallory"] }),
    ],
    ["reader deletes a conversation", "DELETE", `/v1/conversations/${owned}`],
    ["writer reads messages", "GET", `/v1/conversations/${owned}/messages`],
    ["writer reads a conversation", "GET", `/v1/conversations/${owned}`],
    [
      "writer acts as alice",
      "POST",
      `/v1/conversations/${foreign}/messages`,
      JSON.stringify({ body: "x", asUser: "alice" }),
    ],
    [
      "writer sends to a conversation it is not in",
      "POST",
      `/v1/conversations/${foreign}/messages`,
      JSON.stringify({ body: "x" }),
    ],
    ["writer deletes another's message", "DELETE", `/v1/conversations/${owned}/messages/m_audit4_0001`],
    ["writer reads a user's inbox", "GET", "/v1/users/alice/conversations"],
    ["writer erases a user", "DELETE", "/v1/users/alice/content"],
    ["events key reads messages", "GET", `/v1/conversations/${foreign}/messages`],
    ["reader streams events", "GET", "/v1/events"],
    ["full key erases a user (no users:erase)", "DELETE", "/v1/users/alice/content"],
    [
      "full key writes as a service participant",
      "POST",
      `/v1/conversations/${owned}/messages`,
      JSON.stringify({ body: "x", asUser: "service.reader" }),
    ],
  ]
  const keyOf = (what: string) =>
    what.startsWith("reader")
      ? keys.reader
      : what.startsWith("writer")
        ? keys.writer
        : what.startsWith("events")
          ? keys.events
          : keys.full
  for (const [what, method, path, body] of scopeProbes)
    await probe(what, method, path, { key: keyOf(what), ...(body !== undefined ? { body } : {}) })
  for (const r of results)
    check(
      r.status === 403 || r.status === 404 || r.status === 400,
      `refused: ${r.what}`,
      `${r.status} ${r.code ?? ""} ${r.text}`,
    )
  const after = await call("GET", `/v1/conversations/${owned}`, { key: keys.full })
  check(
    !after.text.includes("pwned") && !after.text.includes("mallory"),
    "nothing changed by a refused key",
    after.text,
  )
  results.length = 0

  // Malformed bodies, content types, path tricks.
  const deep = (n: number) => `{"body":"x","metadata":{"a":${"[".repeat(n)}${"]".repeat(n)}}}`
  const hostile: [
    string,
    string,
    string,
    { body?: string; type?: string; headers?: Record<string, string> }?,
  ][] = [
    ["deep JSON (100k levels)", "POST", `/v1/conversations/${owned}/messages`, { body: deep(100_000) }],
    [
      "deep JSON (1,500 levels, within the metadata cap)",
      "POST",
      `/v1/conversations/${owned}/messages`,
      { body: deep(1_500) },
    ],
    [
      "deep JSON in a conversation's metadata",
      "PATCH",
      `/v1/conversations/${owned}`,
      { body: `{"metadata":{"a":${"[".repeat(1_800)}${"]".repeat(1_800)}}}` },
    ],
    [
      "huge body",
      "POST",
      `/v1/conversations/${owned}/messages`,
      { body: `{"body":"${"x".repeat(1 << 20)}"}` },
    ],
    [
      "JSON in text/plain",
      "POST",
      `/v1/conversations/${owned}/messages`,
      { body: '{"body":"x"}', type: "text/plain" },
    ],
    [
      "form body",
      "POST",
      `/v1/conversations/${owned}/messages`,
      { body: "body=x", type: "application/x-www-form-urlencoded" },
    ],
    ["no content type", "POST", `/v1/conversations/${owned}/messages`, { body: '{"body":"x"}', type: "" }],
    ["truncated JSON", "POST", `/v1/conversations/${owned}/messages`, { body: '{"body":"x"' }],
    ["JSON null", "POST", `/v1/conversations/${owned}/messages`, { body: "null" }],
    ["JSON array", "POST", `/v1/conversations/${owned}/messages`, { body: "[]" }],
    [
      "__proto__ key",
      "POST",
      `/v1/conversations/${owned}/messages`,
      { body: '{"body":"x","__proto__":{"admin":true}}' },
    ],
    [
      "metadata __proto__",
      "POST",
      `/v1/conversations/${owned}/messages`,
      { body: '{"body":"x","metadata":{"__proto__":{"a":1}}}' },
    ],
    ["lone surrogate in body", "POST", `/v1/conversations/${owned}/messages`, { body: '{"body":"\\ud800"}' }],
    ["NUL in body", "POST", `/v1/conversations/${owned}/messages`, { body: '{"body":"a\\u0000b"}' }],
    ["number as body", "POST", `/v1/conversations/${owned}/messages`, { body: '{"body":1e400}' }],
    ["dot-dot path", "GET", "/v1/conversations/../users/alice/conversations", {}],
    ["encoded dot-dot", "GET", `/v1/conversations/%2e%2e%2fusers%2falice/messages`, {}],
    ["encoded slash in id", "GET", `/v1/conversations/g~a%2Fb/messages`, {}],
    ["inbox id", "GET", "/v1/conversations/inbox~alice", {}],
    ["inbox id encoded", "GET", "/v1/conversations/inbox%7Ealice", {}],
    ["very long id (100 KB)", "GET", `/v1/conversations/g~${"a".repeat(100_000)}`, {}],
    ["very long query", "GET", `/v1/conversations/${owned}/messages?limit=${"9".repeat(10_000)}`, {}],
    ["negative limit", "GET", `/v1/conversations/${owned}/messages?limit=-1`, {}],
    ["after=NaN", "GET", `/v1/conversations/${owned}/messages?after=NaN`, {}],
    ["repeated query", "GET", `/v1/conversations/${owned}/messages?limit=1&limit=2`, {}],
    ["events after a huge id", "GET", `/v1/events?after=${"9".repeat(400)}`, {}],
    ["events after -1", "GET", "/v1/events?after=-1", {}],
    ["last-event-id garbage", "GET", "/v1/events", { headers: { "last-event-id": "abc" } }],
    [
      "emoji path 1 KB",
      "DELETE",
      `/v1/conversations/${owned}/messages/m_audit4_0001/reactions/${"%F0%9F%91%8D".repeat(300)}`,
      {},
    ],
    ["participant user with a slash", "DELETE", `/v1/conversations/${owned}/participants/al%2Fice`, {}],
    [
      "method override header",
      "GET",
      `/v1/conversations/${owned}`,
      { headers: { "x-http-method-override": "DELETE" } },
    ],
  ]
  for (const [what, method, path, options] of hostile)
    await probe(what, method, path, { key: keys.full, ...options })
  for (const r of results) {
    console.log(`  ${r.what}: ${r.status} ${r.code ?? ""}`)
    check(r.status > 0 && r.status < 500, `typed answer, no 5xx or hang: ${r.what}`, `${r.status} ${r.text}`)
    // 431: Node's HTTP parser refuses the request line before the relay sees it (fine, and typed).
    if (r.status >= 400 && r.status !== 431)
      check(
        r.type.startsWith("application/problem+json"),
        `a problem document: ${r.what}`,
        `${r.type} ${r.text}`,
      )
  }
  const still = await call("GET", `/v1/conversations/${owned}`, { key: keys.full })
  check(still.status === 200, "the conversation still reads", still)

  // Chat kept working.
  sendMessage(alice.doc, "alice" as UserId, { id: newMessageId(), body: "still here" })
  check(
    await Promise.race([
      alice.allSaved().then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), 5000)),
    ]),
    "a chat client is still served",
  )
  check(relay.child.exitCode === null, "the relay is still running")
  console.log("relay warnings/errors:", logSummary(relay.lines))
  for (const line of relay.lines.filter((l) => l.includes('"level":50')).slice(0, 5))
    console.log(`  ${line.slice(0, 800)}`)
})
