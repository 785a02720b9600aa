import {
  encodeAwareness,
  encodeSyncStep1,
  encodeSyncStep2,
  encodeSyncUpdate,
  encodeView,
  MessageType,
  type ParleyFrame,
  readFrame,
  SyncMessage,
  splitUpdate,
  splitUpdateParts,
  type UpdatePartLimits,
} from "@parley/shared"
import {
  type Awareness,
  applyAwarenessUpdate,
  encodeAwarenessUpdate,
  removeAwarenessStates,
} from "y-protocols/awareness"
import * as Y from "yjs"
import { type DocumentSocket, SocketState } from "./document-socket.js"

/** Transaction and awareness origin of what arrived from the relay (never sent back to it). */
export const RELAY_ORIGIN: unique symbol = Symbol("parley-relay")

/** A socket that heard nothing (not even the relay's keepalive) for this long is taken for dead. */
export const SILENCE_TIMEOUT_MS = 30_000

/** Close code of a socket that dropped without a close frame (the browser's 1006). */
export const ABNORMAL_CLOSE = 1006

/** What a {@link SyncSession} reports to its connection. */
export interface SessionHandlers {
  /** The socket opened; sync step 1 went out. */
  opened(): void
  /** The relay's sync step 1: the state it holds of this document. */
  relayState(stateVector: Uint8Array): void
  /** The relay's sync step 2 arrived: this replica holds everything the relay has. */
  synced(): void
  /** A Parley extension frame (saved, error, tokenAccepted, historyPage). */
  parley(frame: ParleyFrame): void
  /** A live update of the relay (not its sync answer), applied. */
  relayUpdate?(update: Uint8Array): void
  /** The relay's sync frames do not fit this replica (someone else wrote under its client id). */
  diverged(cause: unknown): void
  /**
   * The session ended: `local` when this side closed it, else with the relay's (or the network's)
   * code and reason (the reason names a per-user limit on a 4429).
   */
  closed(code: number, local: boolean, reason: string): void
}

/**
 * One socket's worth of a document's sync with the relay: the y-protocols
 * handshake (sync step 1 and 2 both ways), live updates, the user's own
 * awareness, and Parley's extension frames, all on the shared codec. The
 * connection makes a new session for every socket it opens.
 *
 * Live updates written before the relay's step 1 was answered are held: sent
 * at once, one could reach the relay before the state it builds on (what the
 * replica wrote while the socket opened travels in the step 2 answering the
 * relay) and be refused as depending on changes the relay does not have.
 *
 * A long offline backlog goes out one part per turn of the event loop (the
 * parts are worked out as they go), so the page's own work runs between
 * them; live updates are held until the backlog is out, for the same reason.
 */
export class SyncSession {
  private state: "connecting" | "open" | "ended" = "connecting"
  private isSynced = false
  /** Set once the relay's step 1 was answered: from then on live updates go out (see the class comment). */
  private answered = false
  private held: Uint8Array[] = []
  /** Set once the relay refused the pending work for good: see {@link holdPendingWork}. */
  private workRefused = false
  /** Parts of large updates still to go out, in order (see {@link sendInParts}). */
  private outgoing: Iterator<Uint8Array>[] = []
  private pumpTimer: ReturnType<typeof setTimeout> | undefined
  private lastHeard = 0
  private watchdog: ReturnType<typeof setInterval> | undefined

  /** Whether a live update went out in this turn of the event loop: the ones after it wait for its end. */
  private batching = false
  /** Live updates written after the first in this turn, sent together at its end (see {@link sendLive}). */
  private live: Uint8Array[] = []

  private readonly onUpdate = (update: Uint8Array, origin: unknown) => {
    if (origin === RELAY_ORIGIN || this.state !== "open") return
    // What the user wrote, and what another tab of theirs handed over (forwarded: that tab may be offline).
    // The first of a turn goes at once; the rest of the turn's, together at its end.
    if (this.batching) {
      this.live.push(update)
      return
    }
    this.batching = true
    queueMicrotask(this.sendLive)
    this.sendUpdate(update)
  }

  /**
   * Sends the live updates written after the first in one turn as one: a
   * bot sending a hundred messages in a loop sent a hundred frames, and the
   * relay closed its channel for too many frames (an outside probe); every
   * frame also costs the relay a check and a commit.
   */
  private readonly sendLive = (): void => {
    this.batching = false
    const updates = this.live
    this.live = []
    if (updates.length === 0 || this.state !== "open") return
    this.sendUpdate(updates.length === 1 ? updates[0]! : Y.mergeUpdates(updates))
  }

  /** One transaction (or a merge) may hold more than the relay takes in one update (an import, a large paste): in parts. */
  private sendUpdate(update: Uint8Array): void {
    for (const part of splitUpdate(update, this.parts(), this.doc)) this.send(encodeSyncUpdate(part))
  }

  private readonly onAwareness = (
    { added, updated, removed }: { added: number[]; updated: number[]; removed: number[] },
    origin: unknown,
  ) => {
    if (this.state !== "open") return
    const own = this.awareness.clientID
    if (origin === RELAY_ORIGIN) {
      // The relay "removed" our entry: it does so when the entry appears (a connection, or coming
      // back), to move our clock above the one it gave the entry, which peers that saw us leave
      // take. y-protocols kept our state and moved our clock past it; what we announced before this
      // arrived was at a clock the relay had passed, so announce what we hold now.
      if (removed.includes(own) && this.awareness.getLocalState() !== null) this.sendOwnAwareness()
      return
    }
    // Only the user's own entry: the relay owns awareness, and nobody speaks for another.
    if (added.includes(own) || updated.includes(own) || removed.includes(own)) this.sendOwnAwareness()
  }

  constructor(
    private readonly socket: DocumentSocket,
    private readonly doc: Y.Doc,
    private readonly awareness: Awareness,
    /** How large each part of an update sent to the relay may be. */
    private readonly parts: () => UpdatePartLimits,
    private readonly handlers: SessionHandlers,
  ) {
    socket.binaryType = "arraybuffer"
    socket.onopen = () => this.opened()
    socket.onmessage = (event) => this.received(event.data)
    socket.onclose = (event) => this.end(event.code, false, event.reason)
    // A failed connect is followed by its close event, which says all there is to say.
    socket.onerror = () => {}
    doc.on("update", this.onUpdate)
    awareness.on("update", this.onAwareness)
  }

  /** True while the socket is open. */
  get open(): boolean {
    return this.state === "open"
  }

  /** True once the relay's sync step 2 arrived on this socket. */
  get synced(): boolean {
    return this.isSynced
  }

  /**
   * True when everything written to the document so far went out on this
   * socket (see `DocumentConnection.hasUnsaved`): the handshake is done and
   * nothing is held or outgoing.
   */
  get sentAll(): boolean {
    return (
      this.state === "open" &&
      this.answered &&
      this.outgoing.length === 0 &&
      this.held.length === 0 &&
      this.live.length === 0
    )
  }

  /** Sends a frame if the socket is open; live updates wait for the handshake (see the class comment). */
  send(frame: Uint8Array): void {
    if (this.state !== "open") return
    if (this.holding && isSyncUpdateFrame(frame)) this.held.push(frame)
    else if (this.socket.readyState === SocketState.open) this.socket.send(frame)
  }

  /**
   * Sends `update` in parts the relay takes, after the parts still going out;
   * from the second part on, one per turn of the event loop.
   */
  sendInParts(update: Uint8Array): void {
    if (this.state !== "open") return
    this.outgoing.push(splitUpdateParts(update, this.parts(), this.doc))
    if (this.pumpTimer === undefined) this.pump()
  }

  /**
   * The relay refused this replica's pending work for good: what is still
   * outgoing of it is dropped, and the relay's later sync requests on this
   * socket are not answered with it again. The relay asks again (a sync step
   * 1) after each retryable refusal, and the parts after a refused one are
   * refused retryably (`missing-changes`): answered, the refused part went
   * out again and again, a few times a second (an outside tester's group
   * creation). The next socket's handshake sends it once more.
   */
  holdPendingWork(): void {
    this.workRefused = true
    this.outgoing = []
    clearTimeout(this.pumpTimer)
    this.pumpTimer = undefined
    this.pump()
  }

  /** True once {@link holdPendingWork} was called on this socket. */
  get holdsPendingWork(): boolean {
    return this.workRefused
  }

  /** Live updates wait for the handshake and for the parts of a backlog still going out. */
  private get holding(): boolean {
    return !this.answered || this.outgoing.length > 0
  }

  /**
   * Sends the next part of what is outgoing and comes back for the one after
   * on a later turn of the event loop: splitting and sending 3,000 long
   * offline messages in one go blocked a page for seconds (an outside
   * tester's profile), every other conversation's send waiting behind it.
   * Once nothing is outgoing, the held live updates follow.
   */
  private readonly pump = (): void => {
    this.pumpTimer = undefined
    while (this.state === "open" && this.outgoing.length > 0) {
      let next: IteratorResult<Uint8Array>
      try {
        next = this.outgoing[0]!.next()
      } catch (cause) {
        this.outgoing = []
        this.handlers.diverged(cause)
        return
      }
      if (next.done) {
        this.outgoing.shift()
        continue
      }
      this.sendRaw(encodeSyncUpdate(next.value))
      this.pumpTimer = setTimeout(this.pump, 0)
      return
    }
    if (this.state !== "open" || this.holding) return
    const held = this.held
    this.held = []
    for (const frame of held) this.sendRaw(frame)
  }

  /** Ends the session from this side: tells the relay the user left (awareness), then closes the socket. */
  close(): void {
    if (this.state === "ended") return
    if (this.state === "open" && this.awareness.getLocalState() !== null)
      this.sendRaw(
        encodeAwareness(encodeAwarenessUpdate(this.awareness, [this.awareness.clientID], new Map())),
      )
    this.end(ABNORMAL_CLOSE, true)
  }

  private opened(): void {
    if (this.state !== "connecting") return
    this.state = "open"
    this.lastHeard = Date.now()
    // A relay's keepalive reaches every socket well within the timeout; silence means a dead link.
    this.watchdog = setInterval(() => {
      if (Date.now() - this.lastHeard > SILENCE_TIMEOUT_MS) this.end(ABNORMAL_CLOSE, false)
      else this.keepPeers()
    }, SILENCE_TIMEOUT_MS / 10)
    this.sendRaw(encodeSyncStep1(Y.encodeStateVector(this.doc)))
    // At our current clock, though peers that saw our last connection end hold our entry one above
    // it: the relay relays an appearing entry above that and tells us to move on (`onAwareness`).
    if (this.awareness.getLocalState() !== null) this.sendOwnAwareness()
    this.handlers.opened()
  }

  /**
   * Keeps the others' presence entries while this socket is open. The relay
   * owns them: it removes a connection's entries when it closes (its keepalive
   * finds the dead ones), and in a large room it does not pass renewals on.
   * y-protocols drops a remote entry not renewed for 30 s, so there a
   * connected, idle member showed `offline` after 30 s; an entry now leaves
   * when the relay says it left, or with this socket.
   */
  private keepPeers(): void {
    const now = Date.now()
    for (const [id, meta] of this.awareness.meta)
      if (id !== this.awareness.clientID && this.awareness.states.has(id)) meta.lastUpdated = now
  }

  private received(data: unknown): void {
    if (this.state !== "open") return
    this.lastHeard = Date.now()
    const bytes = new Uint8Array(data as ArrayBuffer)
    let frame: ReturnType<typeof readFrame>
    try {
      frame = readFrame(bytes)
    } catch (cause) {
      // A sync frame this replica cannot even read cannot be applied either.
      if (bytes[0] === MessageType.sync) this.handlers.diverged(cause)
      return
    }
    switch (frame.type) {
      case "sync": {
        const message = frame.message
        if (message.type === "syncStep1") {
          this.handlers.relayState(message.stateVector)
          if (this.workRefused && this.answered) return
          let parts: Iterator<Uint8Array>
          try {
            // A long offline period leaves more than the relay takes in one update: the rest follows in parts.
            parts = splitUpdateParts(
              Y.encodeStateAsUpdate(this.doc, message.stateVector),
              this.parts(),
              this.doc,
            )
            const first = parts.next()
            // They carry the replica's whole delete set: what it had seen when it made them goes first (what
            // another tab handed over since the sync request counts), for the relay to tell a removal it
            // re-sends from one of a record it never saw replaced (rule `concurrent-change`).
            this.sendRaw(encodeView(Y.encodeStateVector(this.doc)))
            this.sendRaw(encodeSyncStep2(first.value!))
          } catch (cause) {
            this.handlers.diverged(cause)
            return
          }
          // The rest goes out part by part; held live updates follow once the relay has what it lacked.
          // (The step 2 answers everything before it: what was still outgoing is in it.)
          this.answered = true
          this.outgoing = [parts]
          clearTimeout(this.pumpTimer)
          this.pump()
          return
        }
        this.apply(message.update)
        if (message.type === "syncUpdate") this.handlers.relayUpdate?.(message.update)
        if (message.type === "syncStep2" && !this.isSynced && this.state === "open") {
          this.isSynced = true
          this.handlers.synced()
        }
        return
      }
      case "awareness":
        try {
          applyAwarenessUpdate(this.awareness, frame.update, RELAY_ORIGIN)
        } catch (error) {
          console.error("parley: the relay's awareness update could not be applied", error)
        }
        return
      case "queryAwareness":
        if (this.awareness.getLocalState() !== null) this.sendOwnAwareness()
        return
      case "parley":
        if (frame.message) this.handlers.parley(frame.message)
        return
      case "auth":
        // The relay's close code follows and says the same (see PROTOCOL.md).
        return
    }
  }

  private apply(update: Uint8Array): void {
    try {
      Y.applyUpdate(this.doc, update, RELAY_ORIGIN)
    } catch (error) {
      // Thrown by an observer of the document (the update itself is integrated): report, keep syncing.
      console.error("parley: handling the relay's update failed", error)
    }
  }

  private sendOwnAwareness(): void {
    this.sendRaw(encodeAwareness(encodeAwarenessUpdate(this.awareness, [this.awareness.clientID])))
  }

  private sendRaw(frame: Uint8Array): void {
    if (this.state === "open" && this.socket.readyState === SocketState.open) this.socket.send(frame)
  }

  private end(code: number, local: boolean, reason = ""): void {
    if (this.state === "ended") return
    const wasOpen = this.state === "open"
    this.state = "ended"
    this.isSynced = false
    this.held = []
    this.outgoing = []
    clearTimeout(this.pumpTimer)
    this.pumpTimer = undefined
    clearInterval(this.watchdog)
    this.doc.off("update", this.onUpdate)
    this.awareness.off("update", this.onAwareness)
    const socket = this.socket
    socket.onopen = null
    socket.onmessage = null
    socket.onclose = null
    if (socket.readyState === SocketState.open || socket.readyState === SocketState.connecting)
      socket.close(1000)
    if (wasOpen) {
      // Whoever was seen over this socket is no longer known to be there.
      const others = [...this.awareness.getStates().keys()].filter((id) => id !== this.awareness.clientID)
      removeAwarenessStates(this.awareness, others, RELAY_ORIGIN)
      // And their clocks: removing bumped each one above what the relay will send again on the next
      // connection, which would then be ignored until each peer's next renewal (15 s).
      for (const id of this.awareness.meta.keys())
        if (id !== this.awareness.clientID && !this.awareness.states.has(id)) this.awareness.meta.delete(id)
    }
    this.handlers.closed(code, local, reason)
  }
}

/** True for a live update frame (not part of the handshake). */
const isSyncUpdateFrame = (frame: Uint8Array): boolean =>
  frame[0] === MessageType.sync && frame[1] === SyncMessage.update
