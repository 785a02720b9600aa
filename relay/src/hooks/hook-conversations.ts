import { createHash } from "node:crypto"
import { isDeepStrictEqual } from "node:util"
import {
  addParticipants,
  type ConversationId,
  changeRole,
  createConversation,
  deleteConversation,
  deleteMessage,
  directConversationId,
  ErrorCode,
  editMessage,
  GROUP_PREFIX,
  getConversation,
  getMessage,
  lastSequence,
  leaveConversation,
  listMessages,
  listParticipants,
  type MessageId,
  markDelivered,
  markRead,
  ParleyError,
  parseConversationId,
  parseUserId,
  react,
  removeParticipants,
  renameConversation,
  sendMessage,
  setConversationMetadata,
  type UserId,
  unpinMessage,
  unreact,
  unreadCount,
} from "@parley/shared"
import type * as Y from "yjs"
import type { RunningCore } from "../extension.js"
import type { ConversationState, HookConversations } from "./define.js"

/** Writes `change` to the document `name` as `asUser`'s bot write; resolves once it is saved. */
export type BotWrite = (name: string, asUser: UserId, change: (doc: Y.Doc) => void) => Promise<void>

/** What {@link hookConversations} works with. */
export interface HookConversationsOptions {
  readonly core: RunningCore
  /** The hook module's name. */
  readonly hook: string
  /** The id of the event the handler runs for: the same on every retry and after a restart. */
  readonly eventId: string
  readonly write: BotWrite
}

/**
 * The key of a handler's `position`-th write (0-based, in call order) for one
 * event: the same on every attempt at that event, so what the write creates
 * (a message, a conversation) gets the same id each time and a retry finds it
 * instead of creating another.
 */
export function writeKey(eventId: string, hook: string, position: number): string {
  return createHash("sha256")
    .update(`${eventId}\u0000${hook}\u0000${position}`)
    .digest("base64url")
    .slice(0, 22)
}

/**
 * `ctx.conversations` of one handler run: reads, and writes through the
 * relay's update path as a bot. Every write is idempotent across retries of
 * the same event (at-least-once delivery redoes a handler whose earlier
 * attempt wrote and then failed): a message sent without an id and a group
 * created without one get ids derived from the event id, the hook and the
 * write's position in the handler ({@link writeKey}); every other write is
 * skipped when the conversation already holds what it would write (same
 * title, metadata, role, body, reaction, marker, membership).
 */
export function hookConversations(options: HookConversationsOptions): HookConversations {
  return checked(unchecked(options))
}

/**
 * `conversations` with its arguments checked first: ids must be valid ids (`INVALID_ARGUMENT`, as
 * the HTTP API answers), the input an object. Before, `send(null, null, null)` threw a bare
 * TypeError and `"../x"` was looked up, answering NOT_FOUND (an outside probe).
 */
function checked(conversations: HookConversations): HookConversations {
  const methods = conversations as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>
  const wrapped: Record<string, (...args: unknown[]) => Promise<unknown>> = {}
  for (const [name, method] of Object.entries(methods))
    wrapped[name] = async (...args: unknown[]) => {
      if (name === "create") {
        parseUserId(args[0])
        objectArgument(name, "input", args[1])
      } else {
        parseConversationId(args[0])
        if (name !== "get") parseUserId(args[1])
        if (name === "send") objectArgument(name, "input", args[2])
      }
      return method(...args)
    }
  return wrapped as unknown as HookConversations
}

function objectArgument(operation: string, argument: string, value: unknown): void {
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new ParleyError(
      ErrorCode.INVALID_ARGUMENT,
      `conversations.${operation}: ${argument} must be an object`,
    )
}

function unchecked(options: HookConversationsOptions): HookConversations {
  const { core, hook, eventId, write } = options
  let position = 0
  // Every write takes the next position, keyed or not: a handler that makes the same calls in the same
  // order on a retry (the usual case: it reads the same event) gets the same keys.
  const nextKey = () => writeKey(eventId, hook, position++)
  const wrote = async (id: ConversationId, asUser: UserId, change: (doc: Y.Doc) => void) => {
    nextKey()
    await write(id, asUser, change)
  }
  return {
    get: (id, window = { last: 50 }) =>
      core.read(id, (doc): ConversationState | undefined => {
        const conversation = getConversation(doc)
        if (!conversation) return undefined
        const participants = listParticipants(doc)
        const unread: Record<string, number> = {}
        for (const p of participants) unread[p.user] = unreadCount(doc, p.user)
        return {
          conversation,
          participants,
          messages: listMessages(doc, window),
          lastSequence: lastSequence(doc),
          unread,
        }
      }),
    create: async (asUser, input) => {
      const key = nextKey()
      const id =
        input.kind === "direct"
          ? directConversationId([asUser, ...input.participants.filter((u) => u !== asUser)])
          : (input.id ?? (`${GROUP_PREFIX}${key}` as ConversationId))
      await write(id, asUser, (doc) => {
        const existing = getConversation(doc)
        // Made by an earlier attempt of this call (or earlier by the same user, for a given id): the same answer.
        if (
          existing &&
          existing.kind === input.kind &&
          (input.kind === "direct" || existing.createdBy === asUser)
        )
          return
        createConversation(doc, asUser, { ...input, id })
      })
      const created = await core.read(id, getConversation)
      if (!created) throw new ParleyError(ErrorCode.NOT_FOUND, `conversation ${id} is gone`)
      return created
    },
    send: async (id, asUser, input) => {
      const key = nextKey()
      const messageId = input.id ?? (key as MessageId)
      // A sealed message under this id is the one sent (as a live one is), never written over.
      await core.settleSealedIds?.(id, [messageId])
      await write(id, asUser, (doc) => {
        sendMessage(doc, asUser, { ...input, id: messageId })
      })
      // Read after the write: inside the relay's transaction the message index does not show it yet.
      const sent = await core.read(id, (doc) => getMessage(doc, messageId))
      if (!sent) throw new ParleyError(ErrorCode.NOT_FOUND, `message ${messageId} is gone`)
      return sent
    },
    edit: (id, asUser, messageId, body) =>
      wrote(id, asUser, (doc) => {
        if (getMessage(doc, messageId)?.body === body) return
        editMessage(doc, asUser, messageId, body)
      }),
    deleteMessage: (id, asUser, messageId) =>
      wrote(id, asUser, (doc) => deleteMessage(doc, asUser, messageId)),
    unpin: (id, asUser, messageId) => wrote(id, asUser, (doc) => unpinMessage(doc, asUser, messageId)),
    react: (id, asUser, messageId, emoji) => wrote(id, asUser, (doc) => react(doc, asUser, messageId, emoji)),
    unreact: (id, asUser, messageId, emoji) =>
      wrote(id, asUser, (doc) => unreact(doc, asUser, messageId, emoji)),
    addParticipants: async (id, asUser, users, role) => {
      let added: UserId[] = []
      await wrote(id, asUser, (doc) => {
        added = addParticipants(doc, asUser, users, role)
      })
      return added
    },
    removeParticipants: async (id, asUser, users) => {
      let removed: UserId[] = []
      await wrote(id, asUser, (doc) => {
        removed = removeParticipants(doc, asUser, users)
      })
      return removed
    },
    leave: (id, asUser) =>
      wrote(id, asUser, (doc) => {
        if (listParticipants(doc).some((p) => p.user === asUser)) leaveConversation(doc, asUser)
      }),
    changeRole: (id, asUser, user, role) => wrote(id, asUser, (doc) => changeRole(doc, asUser, user, role)),
    rename: (id, asUser, title) =>
      wrote(id, asUser, (doc) => {
        if (getConversation(doc)?.title === title) return
        renameConversation(doc, asUser, title)
      }),
    setMetadata: (id, asUser, metadata) =>
      wrote(id, asUser, (doc) => {
        if (isDeepStrictEqual(getConversation(doc)?.metadata, metadata)) return
        setConversationMetadata(doc, asUser, metadata)
      }),
    deleteConversation: (id, asUser) => wrote(id, asUser, (doc) => deleteConversation(doc, asUser)),
    markRead: (id, asUser, upTo = "latest") =>
      wrote(id, asUser, (doc) => {
        markRead(doc, asUser, upTo)
      }),
    markDelivered: (id, asUser, upTo = "latest") =>
      wrote(id, asUser, (doc) => {
        markDelivered(doc, asUser, upTo)
      }),
  }
}
