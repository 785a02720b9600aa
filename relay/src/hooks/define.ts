import type {
  ConversationId,
  ConversationInfo,
  CreateConversationInput,
  MarkerTarget,
  MessageId,
  MessageView,
  MessageWindow,
  Metadata,
  Participant,
  Role,
  SendMessageInput,
  UserId,
} from "@parley/shared"
import type { Logger } from "../log.js"
import type { PushNotification } from "../push/notification.js"
import { HANDLER_NAMES, type HookEvent, type HookEventType } from "./events.js"

/** A conversation as a hook reads it. */
export interface ConversationState {
  readonly conversation: ConversationInfo
  readonly participants: readonly Participant[]
  /** The window asked for (default: the last 50 messages), in canonical order. */
  readonly messages: readonly MessageView[]
  readonly lastSequence: number
  /** Unread count per participant (shared `unreadCount`). */
  readonly unread: Readonly<Record<UserId, number>>
}

/** A user's inbox as a hook sees it. */
export interface InboxSummary {
  /** Unread messages over all the user's conversations. */
  readonly totalUnread: number
  /** Unread messages per conversation. */
  readonly unread: Readonly<Record<ConversationId, number>>
  /** Conversations the user muted. */
  readonly muted: readonly ConversationId[]
}

/**
 * Reads users' inboxes (kept by the relay, after hooks of the same change may
 * run: combine with `conversations.get` for the conversation at hand).
 */
export interface HookInboxes {
  /** The user's totals, derived from their conversations (one read per conversation they are in): exact even for a user nobody keeps an inbox for. */
  summary(user: UserId): Promise<InboxSummary>
}

/**
 * Reading and writing conversations from a hook: the operations of the HTTP
 * API. Every write runs `asUser`'s rules, then takes the relay's one update
 * path (checked, saved, sequenced, broadcast) and fires events of its own,
 * whose actor is `{ kind: "bot", user: asUser, hook }`.
 *
 * Every write is idempotent across retries of the same event: a handler that
 * wrote and then failed (threw, timed out, the relay died) is run again, and
 * its writes then change nothing twice. A message sent without an `id` and a
 * group created without one get ids derived from the event id, the hook and
 * the write's position among the handler's writes, so a retry that makes the
 * same calls in the same order finds them; every other write is skipped when
 * the conversation already holds what it would write.
 */
export interface HookConversations {
  get(id: ConversationId, window?: MessageWindow): Promise<ConversationState | undefined>
  /**
   * Creates a group (its id derived from the event when `input.id` is absent)
   * or finds-or-creates the direct conversation of `asUser` and the one other
   * participant. A group `asUser` already created under that id is returned as it is.
   */
  create(asUser: UserId, input: CreateConversationInput): Promise<ConversationInfo>
  /** Sends a message (its id derived from the event when `input.id` is absent); resolves with it, sequenced. */
  send(id: ConversationId, asUser: UserId, input: SendMessageInput): Promise<MessageView>
  edit(id: ConversationId, asUser: UserId, messageId: MessageId, body: string): Promise<void>
  deleteMessage(id: ConversationId, asUser: UserId, messageId: MessageId): Promise<void>
  /** Unpins a sticky message (`asUser` its author, an owner or an admin). */
  unpin(id: ConversationId, asUser: UserId, messageId: MessageId): Promise<void>
  react(id: ConversationId, asUser: UserId, messageId: MessageId, emoji: string): Promise<void>
  unreact(id: ConversationId, asUser: UserId, messageId: MessageId, emoji: string): Promise<void>
  addParticipants(
    id: ConversationId,
    asUser: UserId,
    users: readonly UserId[],
    role?: Role,
  ): Promise<UserId[]>
  removeParticipants(id: ConversationId, asUser: UserId, users: readonly UserId[]): Promise<UserId[]>
  /** `asUser` leaves the conversation. */
  leave(id: ConversationId, asUser: UserId): Promise<void>
  changeRole(id: ConversationId, asUser: UserId, user: UserId, role: Role): Promise<void>
  rename(id: ConversationId, asUser: UserId, title: string): Promise<void>
  /** Replaces the conversation's metadata. */
  setMetadata(id: ConversationId, asUser: UserId, metadata: Metadata): Promise<void>
  /** Marks the conversation deleted. */
  deleteConversation(id: ConversationId, asUser: UserId): Promise<void>
  /** Moves `asUser`'s read marker forward to `upTo` (a sequence number, a message id; default the latest). */
  markRead(id: ConversationId, asUser: UserId, upTo?: MarkerTarget): Promise<void>
  /** Moves `asUser`'s delivered marker forward to `upTo` (default the latest). */
  markDelivered(id: ConversationId, asUser: UserId, upTo?: MarkerTarget): Promise<void>
}

/** What a handler gets besides its event. */
export interface HookContext {
  /** This hook module's name (its file name). */
  readonly hook: string
  /** A pino child logger bound to the hook and event. */
  readonly log: Logger
  /** Aborted when the handler's time is up; pass it to `fetch` and friends. */
  readonly signal: AbortSignal
  /** Which delivery attempt this is (1 = first). */
  readonly attempt: number
  readonly conversations: HookConversations
  /** Users' inboxes: unread totals and mute flags, e.g. for push badges. */
  readonly inboxes: HookInboxes
  /** True when `event` was caused by a write this hook module made through its context. */
  isOwnWrite(event: HookEvent): boolean
}

/** A handler: may be async; throwing (or timing out) makes the relay retry it. */
export type HookHandler<T extends HookEventType> = (
  event: HookEvent<T>,
  context: HookContext,
) => void | Promise<void>

/** What `onPushNotification` gets besides the notification. */
export interface PushNotificationContext {
  /** This hook module's name (its file name). */
  readonly hook: string
  /** Who the notification is for (it goes to each of their devices). */
  readonly recipient: UserId
  /** The message's event. */
  readonly event: HookEvent<"message.sent">
  readonly log: Logger
  /** Aborted when the delivery attempt's time is up. */
  readonly signal: AbortSignal
}

/** What `onPushNotification` returns: `false` vetoes, a notification replaces, nothing keeps. */
// biome-ignore lint/suspicious/noConfusingVoidType: a handler that returns nothing keeps the notification
export type PushNotificationResult = PushNotification | false | undefined | void

/**
 * Vetoes or rewrites a push notification before it is encrypted and sent:
 * return `false` to send nothing to this recipient, a notification to send
 * that instead, or nothing to leave it as it is. Throwing fails the delivery
 * attempt, which is retried (and finally dead-lettered) like any hook's.
 */
export type PushNotificationHandler = (
  notification: PushNotification,
  context: PushNotificationContext,
) => PushNotificationResult | Promise<PushNotificationResult>

/** The handlers a hook module may define; every one is optional. */
export type Hooks = {
  readonly [T in HookEventType as (typeof HANDLER_NAMES)[T]]?: HookHandler<T>
} & {
  /** Runs for each push notification the relay is about to send (see {@link PushNotificationHandler}). */
  readonly onPushNotification?: PushNotificationHandler
}

/** Marks objects made by {@link defineHooks}, across copies of this module. */
export const HOOKS_BRAND: unique symbol = Symbol.for("parley.hooks") as never

/** A checked set of handlers, as `defineHooks` returns it. */
export type DefinedHooks = Hooks & { readonly [HOOKS_BRAND]: true }

const KNOWN = new Set<string>([...Object.values(HANDLER_NAMES), "onPushNotification"])

/**
 * Declares a hook module's handlers, typed. A hook module default-exports the
 * result:
 * ```ts
 * export default defineHooks({
 *   async onMessageSent({ subject, conversation }, { log }) { log.info(subject.message.body) },
 * })
 * ```
 * Throws on an unknown handler name (a typo would otherwise never fire).
 */
export function defineHooks(hooks: Hooks): DefinedHooks {
  for (const [key, value] of Object.entries(hooks)) {
    if (!KNOWN.has(key)) throw new TypeError(`unknown hook handler "${key}"`)
    if (typeof value !== "function") throw new TypeError(`hook handler "${key}" is not a function`)
  }
  return Object.defineProperty({ ...hooks }, HOOKS_BRAND, { value: true }) as DefinedHooks
}

/** True when `value` came from {@link defineHooks}. */
export const isDefinedHooks = (value: unknown): value is DefinedHooks =>
  typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[HOOKS_BRAND] === true

/** The handler of `hooks` for `type`, if it defines one. */
export function handlerFor(
  hooks: Hooks,
  type: HookEventType,
): ((event: HookEvent, context: HookContext) => void | Promise<void>) | undefined {
  return hooks[HANDLER_NAMES[type]] as
    | ((event: HookEvent, context: HookContext) => void | Promise<void>)
    | undefined
}

/** `HookContext.isOwnWrite` of hook module `hook`: the event's actor is that module's bot write. */
export const isOwnWriteOf =
  (hook: string) =>
  (event: HookEvent): boolean =>
    event.event.actor.kind === "bot" && event.event.actor.hook === hook
