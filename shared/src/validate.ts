import { ErrorCode, ParleyError } from "./errors.js"
import { isMessageId, isUserId } from "./ids.js"
import { decodeSequenceRecord, decodeStoredRecord, isAttachmentId, Limits, StoredKey } from "./schema.js"
import { assertWellFormed } from "./well-formed.js"

/**
 * Validators for everything a writer puts into a conversation document. They
 * return a reason string when the value is malformed, or undefined when it is
 * fine: the relay uses them on untrusted updates, the operations on their input.
 */
type Check = (value: unknown) => string | undefined

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v)
const isTime = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v) && v >= 0
const isRole = (v: unknown) => v === "owner" || v === "admin" || v === "member"

function onlyKeys(value: Record<string, unknown>, allowed: readonly string[]): string | undefined {
  for (const key of Object.keys(value)) if (!allowed.includes(key)) return `unknown field "${key}"`
  return undefined
}

/** Checks free-form metadata: a JSON object within {@link Limits.metadataBytes}, without the keys `__proto__` and `constructor`. */
export const checkMetadata: Check = (v) => {
  if (!isRecord(v)) return "metadata must be an object"
  // Before anything walks it recursively (the relay's checks, its purges, JSON.stringify): a value nested
  // thousands deep within the byte limit overflowed the stack of whatever walked it later.
  if (!withinDepth(v, Limits.metadataDepth))
    return `metadata nests objects and arrays at most ${Limits.metadataDepth} deep`
  let bytes: number
  let reserved: string | undefined
  try {
    // JavaScript's object internals as keys: Yjs cannot store a top-level "constructor" (it throws
    // mid-transaction), and a "__proto__" key vanishes when a replica decodes it. Refused anywhere.
    bytes = new TextEncoder().encode(
      JSON.stringify(v, (key, value: unknown) => {
        if (key === "__proto__" || key === "constructor") reserved ??= key
        return value
      }),
    ).length
  } catch (error) {
    // A bigint (JSON cannot say it) or a cycle: not JSON, whatever its size.
    if (error instanceof TypeError) return "metadata holds plain JSON only"
    // JSON.stringify throws RangeError on a value nested beyond the stack (a body of `[[[[...`
    // within the request size limit): too large by any measure, and a refusal, not a crash.
    return `metadata exceeds ${Limits.metadataBytes} bytes`
  }
  if (bytes > Limits.metadataBytes) return `metadata exceeds ${Limits.metadataBytes} bytes`
  if (reserved !== undefined) return `metadata key "${reserved}" is reserved`
  return undefined
}

/** Whether `value` nests objects and arrays at most `most` deep (counting itself), walked without recursion. */
function withinDepth(value: unknown, most: number): boolean {
  const stack: [unknown, number][] = [[value, 1]]
  for (let next = stack.pop(); next !== undefined; next = stack.pop()) {
    const [v, depth] = next
    if (typeof v !== "object" || v === null) continue
    if (depth > most) return false
    for (const child of Object.values(v)) stack.push([child, depth + 1])
  }
  return true
}

const isSize = (v: unknown) => Number.isInteger(v) && (v as number) >= 0
/**
 * An absolute http(s) URL, without controls or bidirectional overrides: a
 * link shown as "https://bank.example/\u202Emoc.live" reads as another site.
 */
const isHttpUrl = (v: string) => /^https?:\/\/[^\s]+$/i.test(v) && !holdsNameControls(v)
/**
 * A file's (or thumbnail's) URL: an absolute http(s) one, or the relay's path
 * of an upload. Not `javascript:`, `data:` or `file:`: apps put it in an
 * `href` or `src` on every participant's page.
 */
const isFileUrl = (v: string) => isHttpUrl(v) || /^\/v1\/attachments\/[A-Za-z0-9_\-/]+$/.test(v)
const optionalText = (v: unknown, max: number) =>
  v === undefined || (typeof v === "string" && v.length <= max)

function checkThumbnail(v: unknown): string | undefined {
  if (!isRecord(v)) return "attachment thumbnail must be an object"
  const extra = onlyKeys(v, ["url", "width", "height"])
  if (extra) return `attachment thumbnail: ${extra}`
  if (typeof v.url !== "string" || v.url.length > Limits.urlLength || !isFileUrl(v.url))
    return "attachment thumbnail url must be an http(s) URL or the relay's /v1/attachments/ path"
  if (!isSize(v.width) || !isSize(v.height)) return "attachment thumbnail size invalid"
  return undefined
}

function checkFileAttachment(v: Record<string, unknown>): string | undefined {
  const extra = onlyKeys(v, ["kind", "id", "url", "name", "mimeType", "size", "width", "height", "thumbnail"])
  if (extra) return extra
  if (typeof v.url !== "string" || v.url.length > Limits.urlLength || !isFileUrl(v.url))
    return "attachment url must be an http(s) URL or the relay's /v1/attachments/ path"
  if (v.id !== undefined && !isAttachmentId(v.id)) return "attachment id invalid"
  if (!optionalText(v.name, Limits.attachmentNameLength)) return "attachment name invalid"
  if (typeof v.name === "string" && holdsNameControls(v.name))
    return "attachment name holds control characters"
  if (!optionalText(v.mimeType, 255)) return "attachment mimeType invalid"
  for (const k of ["size", "width", "height"] as const) {
    if (v[k] !== undefined && !isSize(v[k])) return `attachment ${k} invalid`
  }
  return v.thumbnail === undefined ? undefined : checkThumbnail(v.thumbnail)
}

function checkLinkAttachment(v: Record<string, unknown>): string | undefined {
  const extra = onlyKeys(v, ["kind", "url", "title", "description"])
  if (extra) return extra
  if (typeof v.url !== "string" || v.url.length > Limits.urlLength || !isHttpUrl(v.url))
    return "link url must be an http(s) URL"
  if (!optionalText(v.title, Limits.attachmentTitleLength)) return "link title invalid"
  if (!optionalText(v.description, Limits.attachmentDescriptionLength)) return "link description invalid"
  return undefined
}

function checkObjectAttachment(v: Record<string, unknown>): string | undefined {
  const extra = onlyKeys(v, ["kind", "objectType", "objectId", "title"])
  if (extra) return extra
  for (const k of ["objectType", "objectId"] as const) {
    const value = v[k]
    if (typeof value !== "string" || value.length === 0 || value.length > Limits.objectReferenceLength)
      return `object ${k} invalid`
  }
  if (!optionalText(v.title, Limits.attachmentTitleLength)) return "object title invalid"
  return undefined
}

/**
 * Checks an attachment: a file (no `kind` or `"file"`, as records written before
 * kinds existed), a link or an object reference, each with exactly its own keys.
 */
export const checkAttachment: Check = (v) => {
  if (!isRecord(v)) return "attachment must be an object"
  switch (v.kind) {
    case undefined:
    case "file":
      return checkFileAttachment(v)
    case "link":
      return checkLinkAttachment(v)
    case "object":
      return checkObjectAttachment(v)
    default:
      return "attachment kind invalid"
  }
}

const STORED_MESSAGE_KEYS: readonly string[] = [
  StoredKey.id,
  StoredKey.author,
  StoredKey.body,
  StoredKey.createdAt,
  StoredKey.type,
  StoredKey.replyTo,
  StoredKey.attachments,
  StoredKey.metadata,
  StoredKey.priority,
]
const STORED_PLACEHOLDER_KEYS: readonly string[] = [
  StoredKey.id,
  StoredKey.author,
  StoredKey.createdAt,
  StoredKey.deletedAt,
  StoredKey.deletedBy,
  StoredKey.priority,
]

/**
 * Checks an element of the `messages` array as a writer stored it: the
 * current stored form (one-letter keys, nothing else), holding a valid
 * message record or placeholder.
 */
export const checkStoredRecord: Check = (v) => {
  if (!isRecord(v)) return "message must be an object"
  const placeholder = StoredKey.deletedAt in v
  const extra = onlyKeys(v, placeholder ? STORED_PLACEHOLDER_KEYS : STORED_MESSAGE_KEYS)
  if (extra) return extra
  if (!(StoredKey.id in v)) return "message id invalid"
  return checkMessageRecord(decodeStoredRecord(v))
}

/** Checks a message record or deletion placeholder (field names, as the API gives them). */
export const checkMessageRecord: Check = (v) => {
  if (!isRecord(v)) return "message must be an object"
  if ("deletedAt" in v) return checkDeletedRecord(v)
  const extra = onlyKeys(v, [
    "id",
    "author",
    "body",
    "createdAt",
    "type",
    "replyTo",
    "attachments",
    "metadata",
    "priority",
  ])
  if (extra) return extra
  if (!isMessageId(v.id)) return "message id invalid"
  if (!isUserId(v.author)) return "message author invalid"
  if (typeof v.body !== "string") return "message body must be a string"
  if (v.body.length > Limits.bodyLength) return `message body exceeds ${Limits.bodyLength} characters`
  if (!isTime(v.createdAt)) return "message createdAt invalid"
  if (
    v.type !== undefined &&
    (typeof v.type !== "string" || v.type.length === 0 || v.type.length > Limits.typeLength)
  )
    return "message type invalid"
  // What readers see for a deleted message: a live one under it would pass for a deletion.
  if (v.type === "deleted") return 'message type "deleted" is reserved for deleted messages'
  if (v.replyTo !== undefined && !isMessageId(v.replyTo)) return "message replyTo invalid"
  if (
    v.priority !== undefined &&
    v.priority !== "sticky" &&
    v.priority !== "emergency" &&
    v.priority !== "fleeting"
  )
    return "message priority invalid"
  if (v.metadata !== undefined) {
    const bad = checkMetadata(v.metadata)
    if (bad) return bad
  }
  if (v.attachments !== undefined) {
    if (!Array.isArray(v.attachments) || v.attachments.length > Limits.attachments)
      return "message attachments invalid"
    for (const a of v.attachments) {
      const bad = checkAttachment(a)
      if (bad) return bad
    }
  }
  return undefined
}

/** Checks a deletion placeholder. */
export const checkDeletedRecord: Check = (v) => {
  if (!isRecord(v)) return "placeholder must be an object"
  const extra = onlyKeys(v, ["id", "author", "createdAt", "deletedAt", "deletedBy", "priority"])
  if (extra) return extra
  if (!isMessageId(v.id) || !isUserId(v.author) || !isUserId(v.deletedBy)) return "placeholder ids invalid"
  if (!isTime(v.createdAt) || !isTime(v.deletedAt)) return "placeholder times invalid"
  if (v.priority !== undefined && v.priority !== "fleeting") return "placeholder priority invalid"
  return undefined
}

/** Checks an `edits` value. */
export const checkEditRecord: Check = (v) => {
  if (!isRecord(v)) return "edit must be an object"
  const extra = onlyKeys(v, ["body", "editedAt"])
  if (extra) return extra
  if (typeof v.body !== "string" || v.body.length > Limits.bodyLength) return "edit body invalid"
  if (!isTime(v.editedAt)) return "edit time invalid"
  return undefined
}

/** Checks a `participants` value. */
export const checkParticipantRecord: Check = (v) => {
  if (!isRecord(v)) return "participant must be an object"
  const extra = onlyKeys(v, ["role", "addedBy", "addedAt"])
  if (extra) return extra
  if (!isRole(v.role)) return "participant role invalid"
  if (!isUserId(v.addedBy)) return "participant addedBy invalid"
  if (!isTime(v.addedAt)) return "participant addedAt invalid"
  return undefined
}

// C0 and C1 controls, and the bidirectional overrides and isolates that let a name display as another.
const NAME_FORBIDDEN = /[\p{Cc}\u202a-\u202e\u2066-\u2069]/u

/**
 * Whether a name others are shown (a display name, a conversation's title, an
 * attachment's file name) holds a control character (CR, LF, NUL...) or a
 * bidirectional override or isolate (`invoice\u202Efdp.exe` shows as
 * `invoiceexe.pdf`).
 */
export const holdsNameControls = (v: string): boolean => NAME_FORBIDDEN.test(v)

/** Why a title is refused when {@link holdsNameControls}. */
export const TITLE_CONTROLS = "title holds control characters or bidirectional overrides"

/** Checks a display name: a string ≤ {@link Limits.profileNameLength} characters, no control characters. */
export const checkProfileName: Check = (v) => {
  if (typeof v !== "string") return "profile name must be a string"
  if (v.length > Limits.profileNameLength)
    return `profile name exceeds ${Limits.profileNameLength} characters`
  if (NAME_FORBIDDEN.test(v)) return "profile name holds control characters"
  return undefined
}

/** Checks a profile picture: "" or an `https:` URL ≤ {@link Limits.profilePictureLength} characters. */
export const checkProfilePicture: Check = (v) => {
  if (typeof v !== "string") return "profile picture must be a string"
  if (v === "") return undefined
  if (v.length > Limits.profilePictureLength)
    return `profile picture exceeds ${Limits.profilePictureLength} characters`
  let url: URL
  try {
    url = new URL(v)
  } catch {
    return "profile picture must be an https URL"
  }
  // Other schemes (javascript:, data:, http:) would run code, embed content or leak the viewer's address in the clear.
  if (url.protocol !== "https:") return "profile picture must be an https URL"
  return undefined
}

/** Checks a `profiles` value. */
export const checkProfileRecord: Check = (v) => {
  if (!isRecord(v)) return "profile must be an object"
  const extra = onlyKeys(v, ["name", "picture", "updatedAt", "edited"])
  if (extra) return extra
  const bad = checkProfileName(v.name) ?? checkProfilePicture(v.picture)
  if (bad) return bad
  if (!isTime(v.updatedAt)) return "profile updatedAt invalid"
  if (v.edited !== undefined && v.edited !== true) return "profile edited must be true when present"
  return undefined
}

/** Checks an `order` element. */
export const checkSequenceRecord: Check = (v) =>
  decodeSequenceRecord(v) === undefined ? "sequence record malformed" : undefined

/** Checks a read or delivered marker value. */
export const checkMarker: Check = (v) =>
  Number.isInteger(v) && (v as number) >= 0 ? undefined : "marker invalid"

/** Checks an `unpinned` value: `{ by, at }`. */
export const checkUnpinRecord: Check = (v) => {
  if (!isRecord(v)) return "unpin must be an object"
  const extra = onlyKeys(v, ["by", "at"])
  if (extra) return extra
  if (!isUserId(v.by)) return "unpin by invalid"
  if (!isTime(v.at)) return "unpin time invalid"
  return undefined
}

/** Checks a `fleetingSeconds` setting: a whole number of seconds, 1 ..= {@link Limits.fleetingSeconds}. */
export const checkFleetingSeconds: Check = (v) =>
  Number.isInteger(v) && (v as number) >= 1 && (v as number) <= Limits.fleetingSeconds
    ? undefined
    : `fleetingSeconds must be a whole number from 1 to ${Limits.fleetingSeconds}`

/** Throws INVALID_ARGUMENT when `check` finds a problem, or a string in `value` is not well-formed UTF-16. */
export function assertValid<T>(check: Check, value: unknown): asserts value is T {
  assertWellFormed(value)
  const problem = check(value)
  if (problem !== undefined) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, problem)
}
