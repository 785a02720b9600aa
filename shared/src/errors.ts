/**
 * Every error code Parley reports, on the wire, to the SDK's callers and in hook
 * logs. One union so that a client written against it can switch exhaustively.
 */
export const ErrorCode = {
  UNAUTHORIZED: "UNAUTHORIZED",
  FORBIDDEN: "FORBIDDEN",
  NOT_FOUND: "NOT_FOUND",
  /** The request conflicts with what is there (e.g. an idempotency key reused with another request). */
  CONFLICT: "CONFLICT",
  INVALID_UPDATE: "INVALID_UPDATE",
  INVALID_ARGUMENT: "INVALID_ARGUMENT",
  MALFORMED_FRAME: "MALFORMED_FRAME",
  TOO_LARGE: "TOO_LARGE",
  RATE_LIMITED: "RATE_LIMITED",
  UNAVAILABLE: "UNAVAILABLE",
  TIMEOUT: "TIMEOUT",
  INTERNAL: "INTERNAL",
  /** The relay's storage (database, disk) is failing; nothing was stored. Retry with backoff. */
  STORAGE_UNAVAILABLE: "STORAGE_UNAVAILABLE",
  /** The document's stored state cannot be loaded; it is refused to everyone until an operator restores it. */
  DAMAGED: "DAMAGED",
  /** A read of the relay's event log asked for events after a point it no longer keeps: some were missed. */
  EVENTS_EXPIRED: "EVENTS_EXPIRED",
} as const
/** One of {@link ErrorCode}'s values. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode]

const codes = new Set<string>(Object.values(ErrorCode))

/** True when `value` is a known {@link ErrorCode}. */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && codes.has(value)
}

const retryable = new Set<ErrorCode>([
  ErrorCode.STORAGE_UNAVAILABLE,
  ErrorCode.UNAVAILABLE,
  ErrorCode.TIMEOUT,
  ErrorCode.RATE_LIMITED,
])

/**
 * True when an operation refused with `code` may succeed if sent again later
 * unchanged (with backoff): the refusal says something about the relay's
 * state, not about the operation. A client keeps such work pending instead of
 * marking it failed.
 */
export function isRetryable(code: ErrorCode): boolean {
  return retryable.has(code)
}

/**
 * The one error class of Parley. `rule` names the document rule that refused an
 * operation (see `rules.ts`), so that a UI can say precisely why.
 */
export class ParleyError extends Error {
  override readonly name = "ParleyError"
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown; rule?: string },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause })
    if (options?.rule !== undefined) this.rule = options.rule
  }
  /** The rule that refused the operation, when a rule did. */
  readonly rule?: string
}

/** Turns any thrown value into a {@link ParleyError}, keeping the original as `cause`. */
export function toParleyError(error: unknown, fallback: ErrorCode = ErrorCode.INTERNAL): ParleyError {
  if (error instanceof ParleyError) return error
  const message = error instanceof Error ? error.message : String(error)
  return new ParleyError(fallback, message, { cause: error })
}

/**
 * WebSocket close codes the relay uses. 4000–4999 is the application range;
 * the HTTP-like numbers make them easy to remember.
 */
export const CloseCode = {
  /** Normal end, e.g. the client closed. */
  Normal: { code: 1000, reason: "Normal" },
  /** The relay is shutting down; reconnect later. */
  GoingAway: { code: 1001, reason: "Going away" },
  /** A frame could not be decoded or used an unknown message type. */
  MalformedFrame: { code: 4400, reason: "Malformed frame" },
  /** Missing, invalid or expired token. Refresh the token, then reconnect. */
  Unauthorized: { code: 4401, reason: "Unauthorized" },
  /** The connection's token expired and was not refreshed over it (4401). Reconnect with a fresh token. */
  TokenExpired: { code: 4401, reason: "Token expired" },
  /** A token refresh was refused (invalid, or for another user or role) (4401). */
  TokenRefused: { code: 4401, reason: "Token refresh refused" },
  /** Valid user, but not allowed to open this conversation. */
  Forbidden: { code: 4403, reason: "Forbidden" },
  /** The document name is not a valid conversation or inbox id. */
  NotFound: { code: 4404, reason: "Not found" },
  /** A frame exceeded the relay's maximum frame size. */
  TooLarge: { code: 4413, reason: "Frame too large" },
  /** Too many frames, or the connection read too slowly and its send queue overflowed. */
  RateLimited: { code: 4429, reason: "Rate limited" },
  /**
   * A limit closed a stock y-websocket client (one without `parley=1`): what
   * a Parley client gets as 4429, with the limit's name as the reason.
   * y-websocket stops reconnecting for good on any 4400-4499 close, and a
   * limit (a send queue a slow link let fill, the user's sockets, a burst of
   * frames) is a passing state: 1013 (Try Again Later) has it reconnect.
   */
  TryAgainLater: { code: 1013, reason: "Try again later" },
  /** The relay failed internally; the frame was not stored. */
  Internal: { code: 4500, reason: "Internal error" },
  /** The relay cannot take more documents or connections right now. */
  Unavailable: { code: 4503, reason: "Unavailable" },
  /**
   * The document's stored state is damaged (an undecodable snapshot, a lost
   * log entry): it is refused to everyone until an operator restores it.
   * Reconnecting does not help.
   */
  Damaged: { code: 4510, reason: "Document damaged" },
  /** The user already has `--max-sockets-per-user` connections open (a 4429: reconnect with backoff). */
  TooManySockets: { code: 4429, reason: "sockets-per-user" },
  /** The relay's connection slots are taken: this socket made room for a user with fewer (a 4429; see `UserLimit.relayFull`). */
  RelayFull: { code: 4429, reason: "relay-full" },
  /** A multiplexed socket held no channel for the relay's `--mux-idle-ms` (a normal close: open a channel on a new one). */
  NoChannel: { code: 1000, reason: "no channel" },
  /** The user already has `--max-documents-per-user` documents open (a 4429). */
  TooManyDocuments: { code: 4429, reason: "documents-per-user" },
  /** The user's updates, across all their connections, exceeded `--user-updates-per-second` (a 4429). */
  TooManyUpdates: { code: 4429, reason: "updates-per-user" },
  /** The user's updates waiting to be stored exceeded `--max-pending-bytes-per-user` (a 4429). */
  TooManyPendingBytes: { code: 4429, reason: "pending-bytes-per-user" },
  /** Bytes queued to the user's connections (unread) exceeded `--max-queued-bytes-per-user` (a 4429). */
  TooManyQueuedBytes: { code: 4429, reason: "queued-bytes-per-user" },
  /**
   * The user opened connections faster than `--user-connection-attempts-per-minute`
   * allows, across all their sockets (a 4429: reconnect with backoff).
   */
  TooManyConnectionAttempts: { code: 4429, reason: "connection-attempts-per-user" },
} as const satisfies Record<string, { code: number; reason: string }>
/** Name of a {@link CloseCode}. */
export type CloseCodeName = keyof typeof CloseCode

/**
 * Names of the relay's per-user limits. A refusal by one carries the name as
 * the typed error's `rule` (code `RATE_LIMITED`) and, when the connection is
 * closed for it, as the close reason (code 4429), so that a client or an
 * operator can tell which limit it met.
 */
export const UserLimit = {
  sockets: "sockets-per-user",
  documents: "documents-per-user",
  connections: "connections-per-user",
  updates: "updates-per-user",
  pendingBytes: "pending-bytes-per-user",
  queuedBytes: "queued-bytes-per-user",
  conversations: "conversations-per-minute",
  participants: "participants-per-minute",
  connectionAttempts: "connection-attempts-per-user",
  answers: "answer-bytes-per-user",
  /** HTTP requests with the user's token or signed URLs (`--user-http-requests-per-second`): 429. */
  httpRequests: "http-requests-per-user",
  /**
   * Sealed history segments the relay reads for the user's changes per minute
   * (`--user-sealed-reads-per-minute`): an edit, reaction or deletion of a
   * sealed message, or a new id a sealed segment may hold, needs the segment.
   */
  sealedReads: "sealed-reads-per-user",
  /** Link previews the relay fetches for the user per minute (`--link-previews-per-user-per-minute`): 429. */
  linkPreviews: "link-previews-per-user",
  /** Link previews fetched for the user at once (`--link-previews-per-user-at-once`): 429. */
  linkPreviewsAtOnce: "link-previews-at-once-per-user",
  /** Attachment downloads being sent to the user at once, all their connections (`--attachment-downloads-per-user`): 429. */
  downloadsAtOnce: "downloads-at-once-per-user",
  /**
   * Bytes of the user's changes the relay stores per day, across connections,
   * documents and the HTTP API (`--user-update-bytes-per-day`): the change is
   * refused, retryably, until the budget has refilled enough.
   */
  updateBytesPerDay: "update-bytes-per-day",
  /**
   * Bytes of frames the relay reads from the user's connections per second,
   * across connections (`--user-receive-bytes-per-second`): beyond, the
   * relay stops reading the connection that went over until the budget has
   * refilled (nothing is refused or closed).
   */
  receivedBytes: "received-bytes-per-user",
  /**
   * The relay holds as many users' connections as its connection cap leaves
   * room for (`--max-connections` less a reserve for requests and sign-ins):
   * a new connection gets in by closing one of the user who holds the most
   * (more than a few, and more than the newcomer), else it is refused. Either
   * side's close is 4429 (1013 for a stock client): try again later.
   */
  relayFull: "relay-full",
} as const
/** One of {@link UserLimit}'s values. */
export type UserLimit = (typeof UserLimit)[keyof typeof UserLimit]

/**
 * Names of the relay's limits per client address, applied before the user is
 * known. A refused WebSocket upgrade is answered with HTTP 429, a
 * `Retry-After` header and the name as its body.
 */
export const AddressLimit = {
  /** Connection attempts whose token failed verification, per address (`--address-auth-failures-per-minute`). */
  authFailures: "auth-failures-per-address",
  /**
   * Connections open at once from one address that are not (yet) a user's
   * WebSocket: requests, idle keep-alives, upgrades whose token is being
   * checked (`--connections-per-address`).
   */
  connections: "connections-per-address",
  /** HTTP requests without credentials per address (`--address-requests-per-second`). */
  requests: "requests-per-address",
} as const
/** One of {@link AddressLimit}'s values. */
export type AddressLimit = (typeof AddressLimit)[keyof typeof AddressLimit]
