import type { ConversationId, MessageId, UserId } from "./ids.js"

/**
 * Version of the document layout below. Bumped on any change a reader of
 * older documents would notice; written into `meta.schemaVersion`. Version 2
 * stores message records with one-letter keys ({@link StoredMessage}); the
 * readers here still read version 1 records, writers write version 2 only.
 */
export const SCHEMA_VERSION = 2

/**
 * Names of the top-level Yjs types of a conversation document. Nothing else may
 * exist at the top level (the relay refuses updates that add anything).
 */
export const TopLevel = {
  /** `Y.Map`: conversation fields, see {@link MetaKey}. */
  meta: "meta",
  /** `Y.Map<UserId, ParticipantRecord>`. */
  participants: "participants",
  /** `Y.Array<MessageRecord | DeletedMessageRecord>`: immutable records, appended. */
  messages: "messages",
  /** `Y.Map<MessageId, EditRecord>`: latest edit of a message. */
  edits: "edits",
  /** `Y.Map<ReactionKey, number>`: reaction key → time it was added. */
  reactions: "reactions",
  /** `Y.Map<UserId, number>`: read-up-to sequence number per user. */
  read: "read",
  /** `Y.Map<UserId, number>`: delivered-up-to sequence number per user. */
  delivered: "delivered",
  /**
   * `Y.Array<string>`: canonical order, written only by the relay. Each element
   * is a {@link SequenceRecord} encoded as `"<from>:<id>,<id>,..."`: the i-th id
   * has sequence number from + i. Strings because they are the most compact
   * element Yjs stores (a one-message record is about 24 bytes).
   */
  order: "order",
  /**
   * `Y.Array<SegmentSummary>`: the sealed history segments, oldest first,
   * written only by the relay when it seals (see `history.ts`).
   */
  segments: "segments",
  /**
   * `Y.Map<MessageId, StoredTombstone>`: deletions of sealed messages (their
   * records are in immutable segments, so the deletion is an overlay here).
   */
  tombstones: "tombstones",
  /**
   * `Y.Map<MessageId, UnpinRecord>`: sticky messages unpinned, and by whom.
   * Written by the message's author or an owner / admin; never changed again
   * (removed only with the message). See `priorities.ts`.
   */
  unpinned: "unpinned",
  /**
   * `Y.Map<MessageId, StoredPin>`: copies of the sticky messages the relay
   * sealed out of the live document, so that pinned lists need no segment.
   * Written only by the relay when it seals; removed with the message's
   * deletion or its unpinning.
   */
  pins: "pins",
  /**
   * `Y.Map<UserId, ProfileRecord>`: each participant's display name and
   * picture, as they set it (only their own entry: rule `own-profile`).
   */
  profiles: "profiles",
} as const
/** Name of a top-level type. */
export type TopLevelName = (typeof TopLevel)[keyof typeof TopLevel]
/** Which top-level names are maps (the rest are arrays). */
export const TOP_LEVEL_MAPS: ReadonlySet<string> = new Set([
  "meta",
  "participants",
  "edits",
  "reactions",
  "read",
  "delivered",
  "tombstones",
  "unpinned",
  "pins",
  "profiles",
])
/** Which top-level names are arrays. */
export const TOP_LEVEL_ARRAYS: ReadonlySet<string> = new Set(["messages", "order", "segments"])

/** Keys of the `meta` map. */
export const MetaKey = {
  schemaVersion: "schemaVersion",
  id: "id",
  kind: "kind",
  title: "title",
  createdBy: "createdBy",
  createdAt: "createdAt",
  distinctKey: "distinctKey",
  metadata: "metadata",
  deletedAt: "deletedAt",
  deletedBy: "deletedBy",
  /**
   * When a deleted direct conversation was last reopened (ms since the
   * epoch), written with {@link MetaKey.reopenedBy} by the change that
   * removes `deletedAt` / `deletedBy` (shared `reopenConversation`, rule
   * `reopen-direct`). Absent until the first reopen.
   */
  reopenedAt: "reopenedAt",
  /** Who last reopened the deleted direct conversation: one of its two users. */
  reopenedBy: "reopenedBy",
  /**
   * Written by the relay only, when it starts a fresh live document (an
   * epoch): the Yjs client id the epoch's content was written under.
   */
  epoch: "epoch",
  /**
   * Written with `epoch`: how far the relay had the previous live document's
   * clients (a Yjs state vector, see `epochBaseline`) when the epoch began.
   * Everything below is in the epoch's content; a replica's structs beyond
   * it are its pending work. Relays before epoch records wrote every earlier
   * epoch's clients here, first as `{ "<client id>": clock }`.
   */
  epochFrom: "epochFrom",
  /**
   * Written with `epoch`: how many epoch records the relay keeps of the live
   * documents before this one (see `EpochRecord`); absent before the first
   * record. A replica of an epoch two or more back asks for its record.
   */
  epochs: "epochs",
  /**
   * Seconds after which `fleeting` messages disappear for everyone (integer,
   * 1 ..= {@link Limits.fleetingSeconds}); absent: {@link DEFAULT_FLEETING_SECONDS}.
   * Set by owners and admins.
   */
  fleetingSeconds: "fleetingSeconds",
} as const
/** A key of the `meta` map. */
export type MetaKey = (typeof MetaKey)[keyof typeof MetaKey]

/** Direct: exactly two users, found by their pair. Group: any number, titled. */
export type ConversationKind = "direct" | "group"
/** Owner and admins manage participants, roles, title and metadata. */
export type Role = "owner" | "admin" | "member"
/**
 * What a message's priority means (see `priorities.ts`): `sticky` is pinned
 * until its author or an admin unpins it; `emergency` bypasses mutes, is
 * pushed at high urgency and stays flagged in the recipient's inbox until
 * read; `fleeting` disappears for everyone after the conversation's
 * `fleetingSeconds`, its content purged like a deletion's.
 */
export type Priority = "normal" | "sticky" | "emergency" | "fleeting"
/** Every priority, for validation and pickers. */
export const PRIORITIES: readonly Priority[] = ["normal", "sticky", "emergency", "fleeting"]
/** Seconds a `fleeting` message lives in a conversation that sets no `fleetingSeconds`: one day. */
export const DEFAULT_FLEETING_SECONDS = 86_400

/** Value in the `unpinned` map: who unpinned the sticky message, and when. */
export interface UnpinRecord {
  readonly by: UserId
  readonly at: number
}

/** Value in the `pins` map: a sealed sticky message's number and stored record (see {@link StoredMessage}). */
export interface StoredPin {
  readonly s: number
  readonly r: StoredMessage
}
/** Free-form JSON an app attaches to a conversation or message. */
export type Metadata = { readonly [key: string]: JsonValue }
/** Any JSON value. */
export type JsonValue =
  | string
  | number
  | boolean
  | null
  | readonly JsonValue[]
  | { readonly [key: string]: JsonValue }

/** Value in the `participants` map. Replaced whole on a role change. */
export interface ParticipantRecord {
  readonly role: Role
  readonly addedBy: UserId
  readonly addedAt: number
}

/** A thumbnail the relay made for an uploaded image, so a list can lay out before the image loads. */
export interface AttachmentThumbnail {
  readonly url: string
  readonly width: number
  readonly height: number
}

/**
 * A file: either uploaded through the relay (`id` is the relay's attachment id,
 * `url` is `/v1/attachments/{id}`) or hosted elsewhere (`url` absolute, no `id`).
 * `kind` is optional so records written before attachment kinds existed stay valid.
 */
export interface FileAttachment {
  readonly kind?: "file"
  readonly id?: string
  readonly url: string
  readonly name?: string
  readonly mimeType?: string
  readonly size?: number
  readonly width?: number
  readonly height?: number
  readonly thumbnail?: AttachmentThumbnail
}

/** A link; `title` and `description` come from the relay's link preview when it is enabled. */
export interface LinkAttachment {
  readonly kind: "link"
  readonly url: string
  readonly title?: string
  readonly description?: string
}

/** A reference to a record of the app's own (an order, a ticket): its type and id, never fetched. */
export interface ObjectAttachment {
  readonly kind: "object"
  readonly objectType: string
  readonly objectId: string
  readonly title?: string
}

/** What a message carries besides its body: a file, a link or an object reference. */
export type Attachment = FileAttachment | LinkAttachment | ObjectAttachment

/** Prefix of the relay's attachment ids (`att_` + 26 base32 characters). */
export const ATTACHMENT_ID_PREFIX = "att_"

const ATTACHMENT_ID = /^att_[0-9a-hjkmnp-tv-z]{26}$/

/** True for an id the relay gives an uploaded attachment. */
export const isAttachmentId = (value: unknown): value is string =>
  typeof value === "string" && ATTACHMENT_ID.test(value)

const BASE32 = "0123456789abcdefghjkmnpqrstvwxyz"

/** A new attachment id: `att_` and 26 lowercase Crockford base32 characters (130 random bits). */
export function newAttachmentId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(26))
  let id = ATTACHMENT_ID_PREFIX
  for (const byte of bytes) id += BASE32[byte & 31]
  return id
}

/** Ids of the relay-uploaded attachments a message record references (to delete their blobs). */
export function uploadedAttachmentIds(attachments: readonly unknown[] | undefined): string[] {
  const ids: string[] = []
  for (const a of attachments ?? []) {
    if (typeof a !== "object" || a === null) continue
    const { kind, id } = a as { kind?: unknown; id?: unknown }
    if ((kind === undefined || kind === "file") && isAttachmentId(id)) ids.push(id)
  }
  return ids
}

/**
 * An element of the `messages` array. Immutable once written; optional fields
 * are omitted when they hold their default (`type` "text", `priority` "normal")
 * to keep the record small.
 */
export interface MessageRecord {
  readonly id: MessageId
  readonly author: UserId
  readonly body: string
  readonly createdAt: number
  readonly type?: string
  readonly replyTo?: MessageId
  readonly attachments?: readonly Attachment[]
  readonly metadata?: Metadata
  readonly priority?: Exclude<Priority, "normal">
}

/**
 * What replaces a message record when it is deleted: the original record is
 * removed from the array (so its content is garbage-collected by Yjs) and this
 * placeholder is inserted in its place.
 */
export interface DeletedMessageRecord {
  readonly id: MessageId
  readonly author: UserId
  readonly createdAt: number
  readonly deletedAt: number
  readonly deletedBy: UserId
  /**
   * Present when the relay removed a fleeting message at its expiry: readers
   * hide the placeholder as they hid the message (`isExpired`), rather than
   * show "deleted". Written by the relay only.
   */
  readonly priority?: "fleeting"
}

/** Value in the `edits` map: the latest body of a message. */
export interface EditRecord {
  readonly body: string
  readonly editedAt: number
}

/**
 * Value in the `profiles` map: how a user wants to be shown. Written by that
 * user only. `edited` marks a profile the user chose (as opposed to the default
 * taken from their token's `name` / `picture` claims): an edited profile wins
 * over a default one, and between two of a kind the later `updatedAt` wins
 * (see `preferredProfile`), so a user's devices converge on their latest edit.
 */
export interface ProfileRecord {
  /** Display name, ≤ {@link Limits.profileNameLength} characters; "" = show the user id. */
  readonly name: string
  /** An `https:` URL of a picture, ≤ {@link Limits.profilePictureLength} characters; "" = none. */
  readonly picture: string
  /** When the user set it (ms since the epoch). */
  readonly updatedAt: number
  /** Present (true) when the user chose it; absent for the default from token claims. */
  readonly edited?: true
}

/** An element of the `order` array, decoded: messages `ids[i]` have sequence number `from + i`. */
export interface SequenceRecord {
  readonly from: number
  readonly ids: readonly MessageId[]
}

/** Encodes a sequence record as stored in `order`. */
export const encodeSequenceRecord = (record: SequenceRecord): string =>
  `${record.from}:${record.ids.join(",")}`

/**
 * Long records decoded lately, by their text, the most recently used last. One
 * large change's record (up to 2,000 ids, about 44 KB) is decoded by its
 * validation, the message index, the hook events, and again by every seal that
 * follows (each plans over every record and each removal is decoded by the
 * index): some thirty decodes of the same few strings, each splitting it into
 * thousands of strings, were 15–25 ms of CPU per such frame in a relay. The
 * records are immutable (frozen), so one decode can be shared.
 */
const decodedRecords = new Map<string, SequenceRecord>()
const DECODED_RECORDS = 16
/** Records shorter than this (about 10 ids) are decoded each time: cheap, and not worth a cache entry. */
const CACHED_RECORD_LENGTH = 256

/**
 * Decodes an element of `order`; undefined when it is malformed. The record
 * and its `ids` are frozen: a long record's decoding is shared by its callers.
 */
export function decodeSequenceRecord(value: unknown): SequenceRecord | undefined {
  if (typeof value !== "string") return undefined
  if (value.length < CACHED_RECORD_LENGTH) return parseSequenceRecord(value)
  let record = decodedRecords.get(value)
  if (record !== undefined) {
    decodedRecords.delete(value)
    decodedRecords.set(value, record)
    return record
  }
  record = parseSequenceRecord(value)
  if (record === undefined) return undefined
  if (decodedRecords.size >= DECODED_RECORDS)
    decodedRecords.delete(decodedRecords.keys().next().value as string)
  decodedRecords.set(value, record)
  return record
}

/**
 * A record's text is `/^([1-9][0-9]{0,15}):([A-Za-z0-9_-]{8,64}(?:,[A-Za-z0-9_-]{8,64})*)$/`,
 * checked by a loop rather than that regular expression: V8 drops a regular expression's compiled code when it
 * collects garbage, and interpreting it over a 2,000-id record (44 KB) cost
 * several ms after every major collection.
 */
function parseSequenceRecord(value: string): SequenceRecord | undefined {
  const colon = value.indexOf(":")
  if (colon < 1 || colon > 16) return undefined
  for (let i = 0; i < colon; i++) {
    const c = value.charCodeAt(i)
    if (c > 0x39 || c < (i === 0 ? 0x31 : 0x30)) return undefined
  }
  const ids: MessageId[] = []
  let start = colon + 1
  for (let i = start; i <= value.length; i++) {
    const c = i < value.length ? value.charCodeAt(i) : 0x2c
    if (c === 0x2c) {
      if (i - start < 8 || i - start > 64) return undefined
      ids.push(value.slice(start, i) as MessageId)
      start = i + 1
    } else if (!isIdCharCode(c)) return undefined
  }
  return Object.freeze({ from: Number(value.slice(0, colon)), ids: Object.freeze(ids) })
}

/** A character of `[A-Za-z0-9_-]`. */
const isIdCharCode = (c: number): boolean =>
  (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x5f || c === 0x2d

/** Size limits every writer respects and the relay enforces. */
export const Limits = {
  bodyLength: 16_000,
  titleLength: 200,
  typeLength: 32,
  metadataBytes: 4_096,
  /** Most levels of objects and arrays in a metadata value (the object itself is the first). */
  metadataDepth: 16,
  attachments: 10,
  urlLength: 2_048,
  attachmentNameLength: 255,
  attachmentTitleLength: 300,
  attachmentDescriptionLength: 1_000,
  objectReferenceLength: 128,
  emojiLength: 32,
  /** Different emoji one message shows (reactions of any number of users with each). */
  reactionEmojiPerMessage: 20,
  /** Reactions one user holds in one conversation, on live and sealed messages. */
  reactionsPerUser: 10_000,
  participants: 1_000,
  /**
   * Sealed sticky messages the live document keeps a copy of (`pins`): past
   * it, sealing copies no more, so that sending sticky messages cannot undo
   * what sealing saves.
   */
  sealedPins: 100,
  /** Longest `fleetingSeconds`: one year. */
  fleetingSeconds: 31_536_000,
  /** Display name, in characters. */
  profileNameLength: 64,
  /** Profile picture URL (https), in characters. */
  profilePictureLength: 512,
} as const

/** Separator inside reaction keys; not allowed in ids or emoji. */
export const REACTION_KEY_SEPARATOR = "\u001f"

/**
 * Whether `emoji` may name a reaction: 1–{@link Limits.emojiLength} characters,
 * without the key separator, and not `__proto__` (reactions are a JSON object
 * by emoji, where that key vanishes).
 */
export const isReactionEmoji = (emoji: string): boolean =>
  emoji.length > 0 &&
  emoji.length <= Limits.emojiLength &&
  !emoji.includes(REACTION_KEY_SEPARATOR) &&
  emoji !== "__proto__"

/**
 * Whether a value of the `reactions` map removes a folded reaction (a sealed
 * message's reaction kept in its segment, see history's `SealedOverlays`):
 * minus the time of the removal. Any other value is the time of a reaction.
 */
export const isReactionRemoval = (value: unknown): value is number =>
  typeof value === "number" && Number.isFinite(value) && value < 0

/** Key of the `reactions` map: one entry per message, user and emoji. */
export const reactionKey = (message: MessageId, user: UserId, emoji: string): string =>
  `${message}${REACTION_KEY_SEPARATOR}${user}${REACTION_KEY_SEPARATOR}${emoji}`

/** Splits a reaction key; undefined when it is not one. */
export function parseReactionKey(
  key: string,
): { message: MessageId; user: UserId; emoji: string } | undefined {
  const parts = key.split(REACTION_KEY_SEPARATOR)
  if (parts.length !== 3) return undefined
  const [message, user, emoji] = parts as [string, string, string]
  return { message: message as MessageId, user: user as UserId, emoji }
}

/** True when a message record is a deletion placeholder. */
export const isDeletedRecord = (
  record: MessageRecord | DeletedMessageRecord,
): record is DeletedMessageRecord => "deletedAt" in record

/** What {@link recordChars} counts for a record's id, author, times and field names. */
const RECORD_OVERHEAD_CHARS = 64

/**
 * How large a message record is, in characters (UTF-16 code units, as
 * `String.length` counts; up to three bytes each once encoded): its body, its
 * attachments and metadata as JSON, and a fixed part for the rest. An
 * estimate for bounding what the live document holds (see
 * `HistoryDefaults.segmentChars`), cheap enough to keep per message: the
 * body's length is read, the rarer fields are serialized.
 */
export function recordChars(record: MessageRecord | DeletedMessageRecord): number {
  if (isDeletedRecord(record)) return RECORD_OVERHEAD_CHARS
  let chars = RECORD_OVERHEAD_CHARS + (typeof record.body === "string" ? record.body.length : 0)
  if (record.attachments !== undefined || record.metadata !== undefined)
    chars += JSON.stringify([record.attachments, record.metadata]).length
  return chars
}

/**
 * A message record as stored in the `messages` array. Every message in a
 * conversation pays for its field names, and Yjs stores them verbatim, so
 * they are one letter: `i` id, `a` author, `b` body, `t` createdAt, `y` type,
 * `r` replyTo, `f` attachments, `m` metadata, `p` priority. This saves 17 bytes
 * a message, more than the relay's sequence record costs. Nothing outside this
 * module sees the stored form: {@link encodeStoredRecord} and
 * {@link decodeStoredRecord} convert.
 */
export interface StoredMessage {
  readonly i: string
  readonly a: string
  readonly b: string
  readonly t: number
  readonly y?: string
  readonly r?: string
  readonly f?: readonly Attachment[]
  readonly m?: Metadata
  readonly p?: string
}

/** A deletion placeholder as stored: `i`, `a`, `t` as a message, `x` deletedAt, `d` deletedBy, `p` an expiry. */
export interface StoredPlaceholder {
  readonly i: string
  readonly a: string
  readonly t: number
  readonly x: number
  readonly d: string
  readonly p?: "fleeting"
}

/** Stored field name of each message field. */
export const StoredKey = {
  id: "i",
  author: "a",
  body: "b",
  createdAt: "t",
  type: "y",
  replyTo: "r",
  attachments: "f",
  metadata: "m",
  priority: "p",
  deletedAt: "x",
  deletedBy: "d",
} as const satisfies Record<keyof MessageRecord | keyof DeletedMessageRecord, string>

/** The stored form of a record (see {@link StoredMessage}); optional fields left out when absent. */
export function encodeStoredRecord(
  record: MessageRecord | DeletedMessageRecord,
): StoredMessage | StoredPlaceholder {
  const stored: Record<string, unknown> = {}
  for (const [field, value] of Object.entries(record)) {
    if (value !== undefined) stored[StoredKey[field as keyof typeof StoredKey]] = value
  }
  return stored as unknown as StoredMessage | StoredPlaceholder
}

/**
 * The record an element of the `messages` array holds, with its field names;
 * undefined when the element is not an object. Reads version 1 elements (full
 * field names) as they are. Does not validate: untrusted elements go through
 * `checkStoredRecord` first.
 */
export function decodeStoredRecord(value: unknown): MessageRecord | DeletedMessageRecord | undefined {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined
  const v = value as Record<string, unknown>
  if (!("i" in v)) return "id" in v ? (v as unknown as MessageRecord | DeletedMessageRecord) : undefined
  if ("x" in v) {
    const placeholder = { id: v.i, author: v.a, createdAt: v.t, deletedAt: v.x, deletedBy: v.d }
    return (v.p !== undefined ? { ...placeholder, priority: v.p } : placeholder) as DeletedMessageRecord
  }
  const record: Record<string, unknown> = { id: v.i, author: v.a, body: v.b, createdAt: v.t }
  if (v.y !== undefined) record.type = v.y
  if (v.r !== undefined) record.replyTo = v.r
  if (v.f !== undefined) record.attachments = v.f
  if (v.m !== undefined) record.metadata = v.m
  if (v.p !== undefined) record.priority = v.p
  return record as unknown as MessageRecord
}

/** The message id of a stored element without decoding the rest; undefined when it has none. */
export function storedRecordId(value: unknown): MessageId | undefined {
  if (typeof value !== "object" || value === null) return undefined
  const v = value as { i?: unknown; id?: unknown }
  const id = v.i ?? v.id
  return typeof id === "string" ? (id as MessageId) : undefined
}

/** Conversation fields as read from `meta`. */
export interface ConversationInfo {
  readonly id: ConversationId
  readonly schemaVersion: number
  readonly kind: ConversationKind
  readonly title: string
  readonly createdBy: UserId
  readonly createdAt: number
  readonly distinctKey?: string
  readonly metadata: Metadata
  readonly deletedAt?: number
  readonly deletedBy?: UserId
  /** When and by whom a deleted direct conversation was last reopened (see {@link MetaKey.reopenedAt}). */
  readonly reopenedAt?: number
  readonly reopenedBy?: UserId
  /** Seconds after which `fleeting` messages disappear, when set (see {@link MetaKey.fleetingSeconds}). */
  readonly fleetingSeconds?: number
}

/** A participant with their role. */
export interface Participant extends ParticipantRecord {
  readonly user: UserId
}
