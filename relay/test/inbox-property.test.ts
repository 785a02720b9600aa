import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  addParticipants,
  type ConversationId,
  createConversation,
  deleteMessage,
  editMessage,
  type InboxEntry,
  inboxEntryFor,
  listInbox,
  listMessages,
  listParticipants,
  type MessageId,
  markRead,
  removeParticipants,
  renameConversation,
  sendMessage,
  type UserId,
} from "@parley/shared"
import { afterEach, describe, expect, it } from "vitest"
import type { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"
import { type RunningRelay, startRelay } from "../src/relay.js"
import { docUntil, stockProvider, synced } from "./helpers/clients.js"

const USERS = ["ann", "ben", "cat", "dan", "eve", "fay"] as UserId[]
const CONVERSATIONS = ["g~prop0", "g~prop1", "g~prop2"] as ConversationId[]

/** A small seeded generator (mulberry32), so that a failure can be replayed from its seed. */
function random(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const providers: WebsocketProvider[] = []
const cleanups: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const p of providers.splice(0)) p.destroy()
  for (const cleanup of cleanups.splice(0)) await cleanup()
})

async function inboxOf(relay: RunningRelay, user: UserId): Promise<WebsocketProvider> {
  const p = stockProvider(relay.url, `inbox~${user}`, await relay.auth.mintDev(user, {}), new Y.Doc())
  providers.push(p)
  await synced(p)
  return p
}

/** Every user's entries as a rebuild from the conversations gives them. */
async function rebuilt(relay: RunningRelay): Promise<Map<UserId, InboxEntry[]>> {
  const out = new Map<UserId, InboxEntry[]>(USERS.map((u) => [u, []]))
  for (const id of CONVERSATIONS) {
    const entries = await relay.core.read(id, (doc) =>
      listParticipants(doc).map((p) => [p.user, inboxEntryFor(doc, p.user)!] as const),
    )
    for (const [user, entry] of entries) out.get(user)?.push(entry)
  }
  for (const list of out.values())
    list.sort(
      (a, b) => b.lastActivityAt - a.lastActivityAt || a.conversationId.localeCompare(b.conversationId),
    )
  return out
}

const shown = (p: WebsocketProvider) => listInbox(p.doc).map(({ muted: _muted, ...entry }) => entry)

describe("inboxes under random changes", () => {
  // More seeds from the environment (INBOX_PROPERTY_SEEDS=1,2,3,...): a rare interleaving shows in some.
  const seeds = (process.env.INBOX_PROPERTY_SEEDS ?? "1,2,3").split(",").map(Number)
  for (const seed of seeds) {
    it(`equal a rebuild from the conversations, for connected and offline users alike (seed ${seed})`, async () => {
      const next = random(seed)
      const pick = <T>(list: readonly T[]): T => list[Math.floor(next() * list.length)]!
      const dataDir = mkdtempSync(join(tmpdir(), "parley-inbox-prop-"))
      const relay = await startRelay({ port: 0, warmUp: false, dataDir, log: "silent", dev: true })
      cleanups.push(async () => {
        await relay.close()
        rmSync(dataDir, { recursive: true, force: true })
      })
      for (const [i, id] of CONVERSATIONS.entries()) {
        const owner = USERS[i]!
        await relay.core.write(id, { kind: "user", user: owner }, (doc) =>
          createConversation(doc, owner, { kind: "group", id, participants: USERS.slice(i + 1, i + 4) }),
        )
      }
      // Some users watch their inbox during the changes, some connect and leave, some stay offline.
      const open = new Map<UserId, WebsocketProvider>()
      const members = (id: ConversationId) => relay.core.read(id, (doc) => listParticipants(doc))
      for (let step = 0; step < 120; step++) {
        const id = pick(CONVERSATIONS)
        const participants = await members(id)
        const actor = pick(participants)
        const owner = participants.find((p) => p.role === "owner")!.user
        const roll = next()
        if (roll < 0.1) {
          const user = pick(USERS)
          const watching = open.get(user)
          if (watching) {
            watching.destroy()
            open.delete(user)
          } else open.set(user, await inboxOf(relay, user))
          continue
        }
        await relay.core.write(id, { kind: "user", user: roll < 0.85 ? actor.user : owner }, (doc) => {
          const messages = listMessages(doc, { last: 1000 })
          if (roll < 0.5) sendMessage(doc, actor.user, { body: `step ${step}` })
          else if (roll < 0.6) markRead(doc, actor.user)
          else if (roll < 0.7 && messages.length > 0) {
            const own = messages.filter((m) => m.author === actor.user && !m.deleted)
            if (own.length > 0) editMessage(doc, actor.user, pick(own).id as MessageId, `edited at ${step}`)
          } else if (roll < 0.8 && messages.length > 0) {
            const own = messages.filter((m) => m.author === actor.user && !m.deleted)
            if (own.length > 0) deleteMessage(doc, actor.user, pick(own).id as MessageId)
          } else if (roll < 0.85) renameConversation(doc, owner, `title ${step}`)
          else if (roll < 0.93) {
            const outside = USERS.filter((u) => !participants.some((p) => p.user === u))
            if (outside.length > 0) addParticipants(doc, owner, [pick(outside)])
          } else {
            const members = participants.filter((p) => p.role === "member")
            if (members.length > 0) removeParticipants(doc, owner, [pick(members).user])
          }
        })
      }
      await relay.hooks?.idle()
      const expected = await rebuilt(relay)
      // Users who watched see it live; everyone sees it on connecting.
      for (const user of USERS) {
        const p = open.get(user) ?? (await inboxOf(relay, user))
        const want = JSON.stringify(expected.get(user))
        await Promise.race([
          docUntil(p.doc, () => JSON.stringify(shown(p)) === want),
          new Promise((r) => setTimeout(r, 5000)),
        ])
        expect({ user, entries: shown(p) }).toEqual({ user, entries: expected.get(user) })
      }
    }, 60_000)
  }
})
