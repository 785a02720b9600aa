import { z } from "@hono/zod-openapi"
import { isAttachmentId, isConversationId, isMessageId, isUserId, Limits } from "@parley/shared"
import { HANDLER_NAMES } from "../hooks/events.js"
import { SERVICE_PARTICIPANT_PREFIX } from "../principal.js"

/**
 * A string of at most `max` UTF-16 code units, as the document rules count
 * them. zod's `max` counts code points: a title of 200 emoji passed it and
 * was refused later, as 413 (a title) or 422 (a body), not 400 naming the field.
 */
const text = (max: number, min?: number) =>
  (min === undefined ? z.string() : z.string().min(min))
    .max(max)
    .refine((value) => value.length <= max, `at most ${max} UTF-16 code units (an emoji counts 2 or more)`)

// Every body, parameter and header of the HTTP API is declared here, once: the same schemas
// validate requests and generate `openapi.json`. Objects are strict: an unknown field is refused.

/** A user id (a token subject). */
export const UserIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9_.@-]{1,64}$/)
  // The shared rule whole (not dots alone, not `__proto__`): the id every other way of writing checks.
  .refine(isUserId, { message: "not a user id: dots alone and __proto__ are not ids" })
  .openapi("UserId", { description: "1-64 of letters, digits, `_ . @ -`.", example: "alice" })

/** A user an API key may act as: any user but the reserved service participants. */
export const ActAsUserSchema = UserIdSchema.refine((u) => !u.startsWith(SERVICE_PARTICIPANT_PREFIX), {
  message: `ids starting with "${SERVICE_PARTICIPANT_PREFIX}" are services, not users`,
})

export const ConversationIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9_.~@-]{1,160}$/)
  .refine(isConversationId, { message: "not a conversation id" })
  .openapi("ConversationId", { example: "g~support-4711" })

export const MessageIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9_-]{8,64}$/)
  .refine(isMessageId, { message: "not a message id" })
  .openapi("MessageId", { example: "m_4f2c1b9a77" })

export const RoleSchema = z.enum(["owner", "admin", "member"]).openapi("Role")
export const PrioritySchema = z.enum(["normal", "sticky", "emergency", "fleeting"]).openapi("Priority", {
  description:
    "`sticky`: pinned until its author or an admin unpins it. `emergency`: bypasses mutes, pushed at high urgency, flagged in the recipient's inbox until read. `fleeting`: deleted for everyone `fleetingSeconds` after it was written; the deleted message the relay leaves then keeps this priority, for readers to hide rather than show as deleted.",
})

export const MetadataSchema = z.record(z.string(), z.unknown()).openapi("Metadata", {
  description: `Free-form JSON object, at most ${Limits.metadataBytes} bytes encoded, nesting objects and arrays at most ${Limits.metadataDepth} deep (itself the first).`,
})

export const AttachmentSchema = z
  .strictObject({
    // An upload's attachment as its last chunk answered it (`UploadedAttachment`): with its `id` the
    // message owns the file (deleting the message deletes it; it is not swept as unreferenced).
    kind: z.literal("file").optional(),
    id: z
      .string()
      .refine(isAttachmentId, "not an attachment id the relay gave an upload")
      .optional()
      .openapi({ example: "att_0123456789abcdefghjkmnpqrs" }),
    url: text(Limits.urlLength, 1),
    name: text(Limits.attachmentNameLength).optional(),
    mimeType: text(255).optional(),
    size: z.number().int().nonnegative().optional(),
    width: z.number().int().nonnegative().optional(),
    height: z.number().int().nonnegative().optional(),
    thumbnail: z
      .strictObject({
        url: text(Limits.urlLength, 1),
        width: z.number().int().nonnegative(),
        height: z.number().int().nonnegative(),
      })
      .optional(),
  })
  .openapi("Attachment")

const asUser = ActAsUserSchema.optional().openapi({
  description:
    "Act as this user (needs the `act-as-user` scope). Without it the key acts as its own participant `service.<key name>`.",
})

// --- parameters

export const ConversationParams = z.strictObject({
  id: ConversationIdSchema.openapi({ param: { name: "id", in: "path" } }),
})
export const MessageParams = z.strictObject({
  id: ConversationIdSchema.openapi({ param: { name: "id", in: "path" } }),
  messageId: MessageIdSchema.openapi({ param: { name: "messageId", in: "path" } }),
})
export const ParticipantParams = z.strictObject({
  id: ConversationIdSchema.openapi({ param: { name: "id", in: "path" } }),
  user: UserIdSchema.openapi({ param: { name: "user", in: "path" } }),
})
export const ReactionParams = z.strictObject({
  id: ConversationIdSchema.openapi({ param: { name: "id", in: "path" } }),
  messageId: MessageIdSchema.openapi({ param: { name: "messageId", in: "path" } }),
  emoji: z
    .string()
    .min(1)
    .max(Limits.emojiLength)
    .openapi({ param: { name: "emoji", in: "path" } }),
})
export const UserParams = z.strictObject({
  user: UserIdSchema.openapi({ param: { name: "user", in: "path" } }),
})
/** The query of routes that take none: empty, strictly. */
export const NoQuery = z.strictObject({})
/** `?asUser=` of the requests without a body (deletions). */
export const AsUserQuery = z.strictObject({ asUser })

const seq = z.coerce.number().int().nonnegative()
export const MessagesQuery = z.strictObject({
  after: seq.optional().openapi({
    description: "Only messages with a greater sequence number: the first `limit` of them (pages forward).",
  }),
  before: seq.optional().openapi({
    description:
      "Only messages with a smaller sequence number: the last `limit` of them (pages back towards the oldest).",
  }),
  limit: z.coerce.number().int().min(1).max(200).default(50),
  type: z
    .string()
    .min(1)
    .max(Limits.typeLength)
    .optional()
    .openapi({ description: "Only this message type." }),
})
export const PageQuery = z.strictObject({
  offset: z.coerce.number().int().nonnegative().default(0),
  limit: z.coerce.number().int().min(1).max(200).default(50),
})

const EVENT_TYPES = Object.keys(HANDLER_NAMES) as [
  keyof typeof HANDLER_NAMES,
  ...(keyof typeof HANDLER_NAMES)[],
]
export const EventTypeSchema = z.enum(EVENT_TYPES).openapi("EventType")
export const EventsQuery = z.strictObject({
  conversation: ConversationIdSchema.optional().openapi({ description: "Only this conversation's events." }),
  user: UserIdSchema.optional().openapi({
    description: "Only events of conversations this user took part in when they happened.",
  }),
  type: z
    .string()
    .optional()
    .openapi({ description: "Comma-separated event types (e.g. `message.sent,messages.read`)." })
    .pipe(
      z
        .string()
        .transform((s) => s.split(",").filter(Boolean))
        .pipe(z.array(EventTypeSchema).max(EVENT_TYPES.length))
        .optional(),
    ),
  after: z
    .string()
    .regex(/^[0-9]{1,16}$/)
    .optional()
    .openapi({
      description: "Resume after this event id (as `Last-Event-ID`, which wins when both are given).",
    }),
})
export const EventsHeaders = z.object({
  "last-event-id": z
    .string()
    .regex(/^[0-9]{1,16}$/)
    .optional(),
})
export const IdempotencyHeaders = z.object({
  "idempotency-key": z
    .string()
    .min(1)
    .max(255)
    .regex(/^[\x21-\x7e]+$/)
    .optional()
    .openapi({
      description:
        "Makes the send idempotent: a retry with the same key (on the same conversation, from the same API key) returns the first result.",
    }),
})

// --- bodies

export const CreateConversationBody = z
  .strictObject({
    id: ConversationIdSchema.optional().openapi({
      description: "Group id; generated (`g~...`) when absent.",
    }),
    title: text(Limits.titleLength).optional(),
    metadata: MetadataSchema.optional(),
    participants: z
      .array(z.strictObject({ user: UserIdSchema, role: RoleSchema.default("member") }))
      .max(Limits.participants - 1)
      .default([]),
    asUser,
  })
  .openapi("CreateConversation")

export const DirectConversationBody = z
  .strictObject({
    with: UserIdSchema.openapi({ description: "The other user of the direct conversation." }),
    asUser,
  })
  .openapi("DirectConversation")

export const UpdateConversationBody = z
  .strictObject({
    title: text(Limits.titleLength).optional(),
    metadata: MetadataSchema.optional(),
    fleetingSeconds: z.number().int().min(1).max(Limits.fleetingSeconds).nullable().optional().openapi({
      description: "Seconds after which fleeting messages disappear; null restores the default (1 day).",
    }),
    asUser,
  })
  .refine((b) => b.title !== undefined || b.metadata !== undefined || b.fleetingSeconds !== undefined, {
    message: "give a title, metadata or fleetingSeconds",
  })
  .openapi("UpdateConversation")

export const AddParticipantsBody = z
  .strictObject({
    users: z.array(UserIdSchema).min(1).max(Limits.participants),
    role: RoleSchema.default("member"),
    asUser,
  })
  .openapi("AddParticipants")

export const ChangeRoleBody = z.strictObject({ role: RoleSchema, asUser }).openapi("ChangeRole")

export const SendMessageBody = z
  .strictObject({
    id: MessageIdSchema.optional().openapi({
      description:
        "Client-chosen id: sending it again returns the first message (also via `Idempotency-Key`).",
    }),
    body: text(Limits.bodyLength),
    type: text(Limits.typeLength, 1).optional(),
    priority: PrioritySchema.optional(),
    metadata: MetadataSchema.optional(),
    attachments: z.array(AttachmentSchema).max(Limits.attachments).optional(),
    replyTo: MessageIdSchema.optional(),
    asUser,
  })
  .openapi("SendMessage")

export const EditMessageBody = z
  .strictObject({ body: text(Limits.bodyLength), asUser })
  .openapi("EditMessage")

export const ReactBody = z.strictObject({ emoji: text(Limits.emojiLength, 1), asUser }).openapi("React")

export const MarkReadBody = z
  .strictObject({
    upTo: z
      .union([z.number().int().nonnegative(), MessageIdSchema])
      .optional()
      .openapi({ description: "A sequence number or a message id; the latest message when absent." }),
    asUser,
  })
  .openapi("MarkRead")

// --- responses

export const ProblemSchema = z
  .object({
    type: z.string().openapi({ example: "urn:parley:error:FORBIDDEN" }),
    title: z.string(),
    status: z.number().int(),
    detail: z.string(),
    code: z.string().openapi({ description: "Parley's error code." }),
    rule: z.string().optional().openapi({ description: "The document rule that refused a write." }),
  })
  .openapi("Problem")

export const ParticipantSchema = z
  .object({ user: UserIdSchema, role: RoleSchema, addedBy: UserIdSchema, addedAt: z.number() })
  .openapi("Participant")

export const ProfileSchema = z
  .object({
    user: UserIdSchema,
    name: z.string().openapi({ description: "Display name (the user id when they set none)." }),
    picture: z.string().optional().openapi({ description: "An https URL." }),
    named: z.boolean().openapi({ description: "Whether the user set a name." }),
  })
  .openapi("Profile")

export const MessageSchema = z
  .object({
    id: MessageIdSchema,
    author: UserIdSchema,
    body: z.string(),
    type: z.string(),
    createdAt: z.number(),
    priority: PrioritySchema,
    replyTo: MessageIdSchema.optional(),
    attachments: z.array(AttachmentSchema),
    metadata: MetadataSchema,
    seq: z.number().int().optional(),
    editedAt: z.number().optional(),
    deleted: z.object({ at: z.number(), by: UserIdSchema }).optional(),
    reactions: z.record(z.string(), z.array(UserIdSchema)),
    authorName: z.string().optional().openapi({
      description: "The author's display name (their profile in the conversation), if they set one.",
    }),
    authorPicture: z
      .string()
      .optional()
      .openapi({ description: "The author's picture (an https URL), if they set one." }),
  })
  .openapi("Message")

/**
 * What a write answers a key that may not read what it wrote to (no
 * `conversations:read` / `messages:read`): what identifies it, no more.
 */
export const ConversationRefSchema = z
  .object({ id: ConversationIdSchema, kind: z.enum(["direct", "group"]) })
  .openapi("ConversationRef", {
    description:
      "A write's answer to a key without `conversations:read`: the conversation's id and kind (the whole conversation would be a read).",
  })

export const MessageRefSchema = z
  .object({ id: MessageIdSchema, seq: z.number().int().optional() })
  .openapi("MessageRef", {
    description:
      "A write's answer to a key without `messages:read`: the message's id, and its number for a send (the message itself, or where another message is in the conversation, would be a read).",
  })

export const ConversationSchema = z
  .object({
    id: ConversationIdSchema,
    kind: z.enum(["direct", "group"]),
    title: z.string(),
    metadata: MetadataSchema,
    createdBy: UserIdSchema,
    createdAt: z.number(),
    deletedAt: z.number().optional(),
    deletedBy: UserIdSchema.optional(),
    reopenedAt: z.number().optional().openapi({
      description:
        "When the deleted direct conversation was last reopened (`POST /v1/conversations/direct` or the SDK's `directConversation`), empty: what was written before its deletion stays purged.",
    }),
    reopenedBy: UserIdSchema.optional(),
    fleetingSeconds: z.number().int().optional(),
    participants: z.array(ParticipantSchema),
    markers: z.record(z.string(), z.object({ read: z.number(), delivered: z.number() })),
    profiles: z.array(ProfileSchema).openapi({
      description: "The profiles participants set in this conversation (display name, picture), by user id.",
    }),
    lastMessage: MessageSchema.optional(),
    lastSequence: z.number().int(),
  })
  .openapi("Conversation")

/** Where the next page of a listing starts: the parameter to send in place of the one given. */
export const MessageCursorSchema = z
  .union([z.strictObject({ before: z.number().int() }), z.strictObject({ after: z.number().int() })])
  .openapi("MessageCursor", {
    description:
      "Send this `before` (or `after`) in place of the one given, with the same `limit` and `type`, for the next page. Absent when there is nothing further in that direction.",
  })

export const MessageListSchema = z
  .object({
    messages: z.array(MessageSchema),
    lastSequence: z.number().int(),
    next: MessageCursorSchema.optional(),
  })
  .openapi("MessageList")

export const MarkReadResultSchema = z
  .object({
    user: UserIdSchema,
    readUpTo: z.number().int(),
    deliveredUpTo: z.number().int(),
    moved: z.boolean().openapi({ description: "False when the marker was there or further already." }),
  })
  .openapi("MarkerResult")

export const MarkerRefSchema = z.object({ user: UserIdSchema }).openapi("MarkerRef", {
  description:
    "A marker's answer to a key without `messages:read`: whose marker it wrote to (its numbers would tell where a message is, and how many the conversation holds).",
})

export const InboxPageSchema = z
  .object({
    conversations: z.array(
      z.object({
        conversationId: ConversationIdSchema,
        kind: z.enum(["direct", "group"]),
        title: z.string(),
        participants: z.object({
          count: z.number().int(),
          first: z.array(UserIdSchema),
          names: z
            .record(z.string(), z.string())
            .optional()
            .openapi({ description: "Display names the first participants set (user id → name)." }),
        }),
        lastMessage: z
          .object({
            id: z.string(),
            author: UserIdSchema,
            authorName: z.string().optional(),
            text: z.string(),
            deleted: z.boolean(),
            at: z.number(),
            seq: z.number().int().optional(),
          })
          .optional(),
        unread: z.number().int(),
        emergency: z
          .array(z.string())
          .optional()
          .openapi({ description: "Unread emergency messages (ids, oldest first); absent when none." }),
        readUpTo: z.number().int(),
        lastActivityAt: z.number(),
        deleted: z.boolean().optional(),
        muted: z.boolean(),
      }),
    ),
    total: z.number().int(),
    nextOffset: z.number().int().optional(),
  })
  .openapi("InboxPage")

export const UnreadSchema = z
  .object({ total: z.number().int(), conversations: z.record(z.string(), z.number().int()) })
  .openapi("Unread")

export const ParticipantsChangeSchema = z
  .object({ users: z.array(UserIdSchema) })
  .openapi("ParticipantsChange", { description: "The users the change actually added or removed." })

export const EventStreamSchema = z.string().openapi("EventStream", {
  description:
    "`text/event-stream`: per event `id: <log position>`, `event: <type>`, `data: <the hook event as JSON>`; `: ping` comments as heartbeats.",
})

/** What `DELETE /v1/users/{user}/content` erased. */
export const ErasureSchema = z
  .strictObject({
    user: UserIdSchema,
    conversations: z.number().int().openapi({ description: "Conversations looked in." }),
    messages: z
      .number()
      .int()
      .openapi({ description: "Messages replaced by placeholders (0 when run again)." }),
    uploads: z.number().int().openapi({
      description: "Files the user uploaded that were deleted, sent or not (0 when run again).",
    }),
    damaged: z.array(z.string()).openapi({
      description:
        "Conversations not erased because their stored state is damaged: always empty in a 200 (with any, the answer is 503 DAMAGED naming them; the others are erased).",
    }),
  })
  .openapi("Erasure")
