import { type ConversationInfo, ErrorCode, ParleyError } from "@parley/shared"

/** Where an open conversation stands. */
export type ConversationState =
  | { readonly state: "loading" }
  | { readonly state: "ready"; readonly conversation: ConversationInfo }
  | { readonly state: "unavailable"; readonly reason: ErrorCode; readonly error: ParleyError }

/** What can move a conversation's state. */
export type LoadingEvent =
  /** The replica changed or the relay answered: `info` is what the replica holds now. */
  | {
      readonly type: "settled"
      readonly info: ConversationInfo | undefined
      /** The relay's state arrived on the current connection. */
      readonly relaySynced: boolean
      /** The client is about to create this conversation: "not found" is expected. */
      readonly creating: boolean
    }
  /** The relay will not serve it (or the handle closed before it was ready). */
  | { readonly type: "unavailable"; readonly error: ParleyError }
  /**
   * The id holds another conversation than the one created on this device
   * (rule `conversation-id-taken`): unavailable for good, whatever the state
   * was (a refusal as not a participant of the other one, say, which this
   * explains).
   */
  | { readonly type: "taken"; readonly error: ParleyError }
  /**
   * The user is a participant again (the relay's inbox lists the conversation
   * after a removal refused them): `info` is what the replica holds.
   */
  | { readonly type: "readmitted"; readonly info: ConversationInfo | undefined }

/**
 * The state after `event`, `current` itself when nothing changes. Derived
 * from what the replica holds and what the relay said: ready as soon as the
 * replica holds the conversation's fields; unavailable (not found) when the
 * relay's state arrived without them. Unavailable is final, except "not
 * found" (the conversation may still be created, or arrive, later),
 * "unauthorized" (a later connect with a working token brings it back once
 * its connection is online: `relayOnline`) and "rate limited" (too many
 * conversations open: back once another closes and the connection gets in).
 */
export function nextState(
  current: ConversationState,
  event: LoadingEvent,
  id: string,
  relayOnline: boolean,
): ConversationState {
  const canLeave = (next?: ConversationState): boolean => {
    if (current.state !== "unavailable" || current.reason === ErrorCode.NOT_FOUND) return true
    if (current.reason === ErrorCode.UNAUTHORIZED || current.reason === ErrorCode.RATE_LIMITED)
      return next?.state === "unavailable" || relayOnline
    return false
  }
  if (event.type === "taken")
    return current.state === "unavailable" && current.error === event.error
      ? current
      : { state: "unavailable", reason: event.error.code, error: event.error }
  if (event.type === "unavailable") {
    const next: ConversationState = { state: "unavailable", reason: event.error.code, error: event.error }
    return canLeave(next) ? next : current
  }
  // Removed, then added again: the replica is the conversation's, and the connection catches it up.
  if (event.type === "readmitted")
    return current.state === "unavailable" && current.reason === ErrorCode.FORBIDDEN && event.info
      ? { state: "ready", conversation: event.info }
      : current
  if (!canLeave()) return current
  if (event.info) {
    if (current.state === "ready" && sameInfo(current.conversation, event.info)) return current
    return { state: "ready", conversation: event.info }
  }
  if (event.relaySynced && current.state === "loading" && !event.creating) {
    const error = new ParleyError(ErrorCode.NOT_FOUND, `no conversation ${id}`)
    return { state: "unavailable", reason: error.code, error }
  }
  return current
}

const sameInfo = (a: ConversationInfo, b: ConversationInfo): boolean =>
  JSON.stringify(a) === JSON.stringify(b)

/**
 * A conversation's loading state machine (see {@link nextState}): holds the
 * state, reports each change, settles `ready()` waiters, and guards writes.
 */
export class LoadingState {
  private current: ConversationState = { state: "loading" }
  private frozen = false
  private settleReady: (() => void) | undefined
  private failReady: ((error: ParleyError) => void) | undefined
  /** Resolves once ready; rejects with the reason when unavailable first. */
  readonly whenReady: Promise<void>

  constructor(
    private readonly id: string,
    private readonly relayOnline: () => boolean,
    private readonly changed: (state: ConversationState, previous: ConversationState) => void,
  ) {
    this.whenReady = new Promise<void>((resolve, reject) => {
      this.settleReady = resolve
      this.failReady = reject
    })
    // Callers who never await ready() must not see an unhandled rejection.
    this.whenReady.catch(() => {})
  }

  get state(): ConversationState {
    return this.current
  }

  /** Applies `event`; reports the new state when it changed. */
  apply(event: LoadingEvent): void {
    if (this.frozen) return
    const previous = this.current
    const next = nextState(previous, event, this.id, this.relayOnline())
    if (next === previous) return
    this.current = next
    if (next.state === "ready") this.settleReady?.()
    else if (next.state === "unavailable") this.failReady?.(next.error)
    if (next.state !== "loading") this.settleReady = this.failReady = undefined
    this.changed(next, previous)
  }

  /** The handle closed: a loading conversation becomes unavailable, then nothing changes any more. */
  close(): void {
    if (this.current.state === "loading")
      // Whoever awaits ready() learns that it will not be.
      this.apply({
        type: "unavailable",
        error: new ParleyError(ErrorCode.UNAVAILABLE, "the conversation was closed before it was ready"),
      })
    this.frozen = true
  }

  /** Throws unless the conversation can be written: open, loaded, and not unavailable. */
  assertWritable(): void {
    if (this.frozen) throw new ParleyError(ErrorCode.UNAVAILABLE, "this conversation handle is closed")
    if (this.current.state === "unavailable") throw this.current.error
    if (this.current.state === "loading")
      throw new ParleyError(ErrorCode.UNAVAILABLE, "the conversation is still loading; await ready() first")
  }
}
