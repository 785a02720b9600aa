import {
  assignSequenceNumbers,
  type ConversationId,
  changeRole,
  checkEditRecord,
  checkFleetingSeconds,
  checkMarker,
  checkParticipantRecord,
  checkProfileRecord,
  checkSequenceRecord,
  checkStoredRecord,
  createConversation,
  decodeStoredRecord,
  isDeletedRecord,
  type MessageId,
  messageIndex,
  nextFromDocument,
  parseReactionKey,
  sendMessage,
  TopLevel,
  typesOf,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import { type CheckResult, checkUpdate } from "../../src/policy/check-update.js"
import { ClientBindings } from "../../src/policy/client-bindings.js"
import type { Principal } from "../../src/principal.js"
import { RELAY_DOC_OPTIONS } from "../../src/replica-view.js"

export const alice = "alice" as UserId // owner
export const bob = "bob" as UserId // admin
export const carol = "carol" as UserId // member
export const dave = "dave" as UserId // member
export const erin = "erin" as UserId // not a participant

export const user = (id: UserId): Principal => ({ kind: "user", user: id })
export const RELAY: Principal = { kind: "relay" }
export const CONVERSATION = "g~policy-test" as ConversationId

/** The relay's state of a group conversation with a few sequenced messages, and its bindings. */
export interface Scene {
  relay: Y.Doc
  bindings: ClientBindings
  /** One message of each user, by author. */
  messages: Record<string, MessageId>
}

export function scene(): Scene {
  const relay = new Y.Doc(RELAY_DOC_OPTIONS)
  createConversation(
    relay,
    alice,
    { kind: "group", id: CONVERSATION, participants: [bob, carol, dave], title: "Team" },
    { now: 1 },
  )
  changeRole(relay, alice, bob, "admin")
  const messages: Record<string, MessageId> = {}
  for (const author of [alice, bob, carol, dave]) {
    messages[author] = sendMessage(relay, author, { body: `hello from ${author}` }, { now: 2 }).id
  }
  assignSequenceNumbers(relay, nextFromDocument(relay))
  return { relay, bindings: new ClientBindings(), messages }
}

/** A replica of the relay's state, as a client that just synced has it (with its own client id). */
export function replicaOf(relay: Y.Doc): Y.Doc {
  const doc = new Y.Doc()
  Y.applyUpdate(doc, Y.encodeStateAsUpdate(relay))
  return doc
}

/** The update `change` makes to `doc`, merged into one. */
export function updateOf(doc: Y.Doc, change: (doc: Y.Doc) => void): Uint8Array {
  const updates: Uint8Array[] = []
  const collect = (u: Uint8Array) => updates.push(u)
  doc.on("update", collect)
  try {
    change(doc)
  } finally {
    doc.off("update", collect)
  }
  return Y.mergeUpdates(updates)
}

/** Everything `replica` has that `relay` lacks: what a reconnecting client sends (sync step 2). */
export const pendingOf = (replica: Y.Doc, relay: Y.Doc): Uint8Array =>
  Y.encodeStateAsUpdate(replica, Y.encodeStateVector(relay))

/** Checks `update` from `principal` against the scene, and applies it (binding its ids) when accepted. */
export function submit(s: Scene, principal: Principal, update: Uint8Array): CheckResult {
  const result = checkUpdate({
    doc: s.relay,
    update,
    principal,
    bindings: s.bindings,
    conversation: CONVERSATION,
  })
  if (result.allowed) {
    s.bindings.bind(result.newBindings ?? [])
    Y.applyUpdate(s.relay, update)
  }
  return result
}

/**
 * What must hold of every state the relay stores: only known top-level types,
 * valid records, unique live message ids, valid participants, markers within
 * the sequence numbers given, nothing pending.
 */
export function assertInvariants(doc: Y.Doc): void {
  const fail = (what: string) => {
    throw new Error(`invariant broken: ${what}`)
  }
  const known = new Set<string>(Object.values(TopLevel))
  for (const name of doc.share.keys()) if (!known.has(name)) fail(`unknown top-level type ${name}`)
  if (doc.store.pendingStructs !== null || doc.store.pendingDs !== null) fail("pending structs")
  const t = typesOf(doc)
  const live = new Set<string>()
  for (const value of t.messages.toArray()) {
    const problem = checkStoredRecord(value)
    if (problem) fail(`message record: ${problem}`)
    const record = decodeStoredRecord(value)!
    if (!isDeletedRecord(record)) {
      if (live.has(record.id)) fail(`duplicate message ${record.id}`)
      live.add(record.id)
    }
  }
  for (const [key, record] of t.participants) {
    const problem = checkParticipantRecord(record)
    if (problem) fail(`participant ${key}: ${problem}`)
  }
  for (const [key, edit] of t.edits) if (checkEditRecord(edit)) fail(`edit ${key}`)
  for (const [key, profile] of t.profiles) {
    const problem = checkProfileRecord(profile)
    if (problem) fail(`profile ${key}: ${problem}`)
  }
  for (const key of t.reactions.keys()) if (!parseReactionKey(key)) fail(`reaction key ${key}`)
  for (const value of t.order) if (checkSequenceRecord(value)) fail(`order ${value}`)
  const last = messageIndex(doc).lastSequence()
  for (const which of [t.read, t.delivered]) {
    for (const [key, value] of which) {
      if (checkMarker(value)) fail(`marker ${key}`)
      if (value > last) fail(`marker ${key} at ${value} beyond ${last}`)
    }
  }
  for (const [key, value] of t.meta) {
    if (
      ![
        "schemaVersion",
        "id",
        "kind",
        "title",
        "createdBy",
        "createdAt",
        "distinctKey",
        "metadata",
        "deletedAt",
        "deletedBy",
        "fleetingSeconds",
      ].includes(key)
    )
      fail(`meta ${key}`)
    if (key === "fleetingSeconds" && checkFleetingSeconds(value)) fail("fleetingSeconds")
    if (key === "title" && typeof value !== "string") fail("title")
  }
}
