/**
 * The chat workload, written with @parley/shared's operations so that every
 * server receives byte-for-byte the same kind of Yjs updates: a group
 * conversation created by its first participant, then short text messages.
 */
import {
  type ConversationId,
  createConversation,
  getConversation,
  listParticipants,
  type MessageId,
  newMessageId,
  sendMessage,
  storedRecordId,
  typesOf,
  type UserId,
} from "@parley/shared"
import * as Y from "yjs"
import { type BenchClient, type ConnectOptions, connect } from "./drivers.js"
import type { RunningServer } from "./servers.js"
import { until, within } from "./stats.js"

/** A message body of typical chat length (the same text as the model benchmark). */
export const body = (n: number): string => `Message ${n}: a typical short chat line of text.`

/** Sends one message as the client's user; returns its id. */
export function send(client: BenchClient, n: number): MessageId {
  // The id is ours, not read back: inside an enclosing transaction the message
  // is not readable until the transaction ends.
  const id = newMessageId()
  sendMessage(client.doc, client.user, { id, body: body(n) })
  return id
}

/** An open conversation and its connected participants (the creator first). */
export interface Chat {
  readonly id: ConversationId
  readonly clients: BenchClient[]
}

const SETUP_TIMEOUT = 60_000

/**
 * Creates conversation `id` through its first user's client, waits until the
 * server confirmed it, then connects the other users and waits until each of
 * them sees the conversation with every participant.
 */
export async function openChat(
  server: RunningServer,
  id: ConversationId,
  users: readonly UserId[],
  options: ConnectOptions = {},
): Promise<Chat> {
  const creator = await connect(server, id, users[0]!, options)
  await within(creator.synced, SETUP_TIMEOUT, `${id}: creator sync`)
  createConversation(creator.doc, users[0]!, { kind: "group", id, participants: users.slice(1) })
  await confirmed(creator, SETUP_TIMEOUT)
  const others = await Promise.all(users.slice(1).map((user) => connect(server, id, user, options)))
  const clients = [creator, ...others]
  await within(Promise.all(others.map((c) => c.synced)), SETUP_TIMEOUT, `${id}: participants sync`)
  const ready = await until(
    () => clients.every((c) => getConversation(c.doc) && listParticipants(c.doc).length === users.length),
    SETUP_TIMEOUT,
  )
  if (!ready) throw new Error(`${id}: participants never saw the conversation (${problemsOf(clients)})`)
  return { id, clients }
}

/** Waits for the server's confirmation of everything `client` wrote; fails if the server closes or refuses it. */
export async function confirmed(client: BenchClient, timeoutMs: number): Promise<void> {
  let done = false
  void client.confirmed().then(() => {
    done = true
  })
  await until(() => done || client.problems.length > 0, timeoutMs, 2)
  if (!done) throw new Error(`${client.user}: writes not confirmed (${problemsOf([client])})`)
}

/** Problems reported by clients, for error messages. */
export const problemsOf = (clients: readonly BenchClient[]): string =>
  [...new Set(clients.flatMap((c) => c.problems))].slice(0, 5).join("; ") || "no errors reported"

/** Calls `listener` with the ids of messages as they arrive in `doc`, from any origin. */
export function onMessages(doc: Y.Doc, listener: (ids: MessageId[]) => void): () => void {
  const messages = typesOf(doc).messages
  const observer = (event: Y.YArrayEvent<unknown>) => {
    const ids: MessageId[] = []
    for (const item of event.changes.added) {
      for (const value of item.content.getContent()) {
        const id = storedRecordId(value)
        if (id) ids.push(id)
      }
    }
    if (ids.length > 0) listener(ids)
  }
  messages.observe(observer)
  return () => messages.unobserve(observer)
}

/** How many message records `doc` holds. */
export const messagesIn = (doc: Y.Doc): number => typesOf(doc).messages.length

/** Closes every client. */
export function closeAll(clients: Iterable<BenchClient>): void {
  for (const client of clients) client.destroy()
}

/** The local clock of the client's own writes (what a "saved" ack must cover). */
export const ownClock = (client: BenchClient): number => Y.getState(client.doc.store, client.doc.clientID)
