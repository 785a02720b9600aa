import {
  CloseCode,
  type DocumentName,
  EMPTY_STATE_VECTOR,
  EMPTY_UPDATE,
  ErrorCode,
  encodeAwareness,
  encodeDirectoryPageFrame,
  encodeEpochRecordFrame,
  encodeError,
  encodeHistoryPage,
  encodeQueryAwareness,
  encodeSaved,
  encodeSyncStep1,
  encodeSyncStep2,
  epochOf,
  type Frame,
  type HistoryPage,
  ParleyError,
  Rule,
  readFrame,
  type SyncFrame,
  toParleyError,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as awarenessProtocol from "y-protocols/awareness"
import * as Y from "yjs"
import type { Access } from "./access.js"
import { closeOf } from "./errors.js"
import type { Principal } from "./principal.js"
import type { ReplicaView } from "./replica-view.js"
import { ANSWER_BASE_BYTES } from "./user-limits.js"

/**
 * What a transport gives the core for one client: who it is, how to send it
 * bytes and close it, and whether it asked for Parley's extension messages.
 */
export interface Session {
  readonly principal: Principal
  readonly wantsParley: boolean
  /**
   * Queues `frame` to the client. `initialSync` marks the answer to the
   * client's sync step 1 (possibly the whole conversation), which a transport
   * bounding its send queue should not count against the client.
   */
  send(frame: Uint8Array, options?: SendOptions): void
  /**
   * Holds what is sent until the returned function is called, then writes it
   * in one system call (each frame still its own message); the send queue's
   * limits are checked then. Called and released in one synchronous stretch.
   * Without it, every frame is written as it is sent.
   */
  hold?(): () => void
  close(code: number, reason: string): void
}

/** How a frame is sent (see {@link Session.send}). */
export interface SendOptions {
  /** The answer to the client's first sync request (see {@link Session.send}). */
  readonly initialSync?: boolean
  /**
   * For an awareness frame: whether a stock client's echo of it is owed to
   * others' presence (false when it holds only entries this connection set):
   * such echoes are free of the user's receive budget, up to what was sent.
   * Absent: owed.
   */
  readonly echoOwed?: boolean
}

const INITIAL_SYNC = { initialSync: true } as const

const NOTHING_HELD = (): void => {}

/**
 * What a connection reads of its document (a `DocumentHost`; declared here
 * so that this module does not depend on the host's).
 */
export interface ConnectionHost {
  readonly name: DocumentName
  readonly doc: Y.Doc
  /** The document's awareness (created when first read). */
  readonly awareness: awarenessProtocol.Awareness
  /** The awareness if it exists yet: none means nobody is present. */
  readonly awarenessIfAny: awarenessProtocol.Awareness | undefined
  /** Set once the document is dropped from memory. */
  readonly destroyed: boolean
  /** True while a change is applied in memory but not yet durable. */
  readonly hasUnsaved: boolean
  /** Resolves when the document holds nothing unsaved. */
  settled(): Promise<void>
  /** The sync step 2 frame holding the whole document. */
  coldJoinFrame(): Uint8Array
  /** The durable state vector, whole or only the entries of `clientIds`. */
  savedStateVector(clientIds?: Iterable<number>): Uint8Array
}

/** What a connection asks of the core. */
export interface ConnectionOwner<H extends ConnectionHost = ConnectionHost> {
  /** Most update bytes one connection may have waiting in the document's queue (then 4429). */
  readonly maxPendingBytes: number
  /** An update from `connection`, with what its replica had seen (see `ReplicaView`). */
  submit(connection: Connection<H>, update: Uint8Array, seen: ReplicaView): Promise<unknown>
  detach(connection: Connection<H>): void
  /** An awareness update from `connection` (throws when it is malformed). */
  awareness(connection: Connection<H>, update: Uint8Array): void
  refused(connection: Connection<H>, error: ParleyError): void
  /** A request for sealed history segment `segment`, from a connection known to be allowed in. */
  history(connection: Connection<H>, request: number, segment: number): void
  /** A request for directory page `page` of the folded history, from a connection known to be allowed in. */
  directory(connection: Connection<H>, request: number, page: number): void
  /** Serves epoch record `record` of the conversation, to a connection allowed into it. */
  epochRecord(connection: Connection<H>, request: number, record: number): void
  /**
   * Calls `answer` once `connection`'s user may be sent another answer to a
   * request: now (returning undefined), or in turn (returning a function that
   * withdraws it). See `UserLedger.whenAnswerable`.
   */
  whenAnswerable(connection: Connection<H>, answer: () => void): (() => void) | undefined
  /** Counts `bytes` answered to `connection`'s user. */
  answered(connection: Connection<H>, bytes: number): void
}

/**
 * One session attached to one loaded document: speaks the y-websocket protocol
 * (sync, awareness, auth, query awareness) and Parley's extension frames.
 */
export class Connection<H extends ConnectionHost = ConnectionHost> {
  closed = false
  private pendingBytes = 0
  /** The client's replica is of an older epoch of the live document (see `receiveSync`). */
  private staleEpoch = false
  /** The state vector of the last sync request not answered yet (see {@link answerRequests}). */
  private syncRequest: Uint8Array | undefined
  /** A query of the awareness not answered yet. */
  private awarenessQuery = false
  /** Set while the answers wait for the user's answer budget: withdraws them. */
  private answerWait: (() => void) | undefined

  constructor(
    readonly host: H,
    readonly session: Session,
    public access: Access,
    private readonly owner: ConnectionOwner<H>,
  ) {}

  get principal(): Principal {
    return this.session.principal
  }

  /**
   * The state vector this connection last sent in a sync step 1 while
   * {@link pending}: what its catch-up is computed from once it is promoted.
   */
  private reportedStateVector: Uint8Array | undefined

  /**
   * The state vector of this connection's last sync request: what its
   * replica had when it made the sync step 2 answering the relay's (sent
   * first), for the rules to tell a removal from a re-sent delete set.
   */
  private replicaStateVector: Uint8Array | undefined

  /**
   * True while the document holds no conversation yet, so whether this user
   * may read it is not known: the connection is sent nothing derived from the
   * document (no sync content, no state vector, no awareness), only empty sync
   * answers and what concerns its own frames, until an update creates the
   * conversation and the core {@link promote}s or closes it.
   */
  get pending(): boolean {
    return this.access === "pending"
  }

  /** Queues `frame`, unless the connection is {@link pending}: anything derived from the document goes here. */
  send(frame: Uint8Array, options?: SendOptions): void {
    if (!this.pending) this.sendAnyway(frame, options)
  }

  /**
   * Holds what this connection is sent until the returned function is called
   * (see {@link Session.hold}): the frames of one stored change go out in one write.
   */
  hold(): () => void {
    return this.closed ? NOTHING_HELD : (this.session.hold?.() ?? NOTHING_HELD)
  }

  /** Queues a frame that holds nothing of the document (empty sync answers, typed errors, own acks). */
  private sendAnyway(frame: Uint8Array, options?: SendOptions): void {
    if (!this.closed) this.session.send(frame, options)
  }

  /**
   * The conversation now exists and `access` allows this pending connection
   * in: it gets what a connection gets at start — the relay's sync step 1 and
   * the current awareness — plus the answer it was owed: a sync step 2 against
   * the state vector it sent while pending, and a query awareness, since its
   * own presence was dropped while pending. A client that sent no state vector
   * yet is answered when it does; with `created` (the change just created the
   * conversation, so the document is little more than that change) it is sent
   * the whole document now, as it would have been sent the creation itself.
   * Called with the document durable.
   */
  promote(access: Exclude<Access, "pending" | "none">, created: boolean): void {
    if (!this.pending) return
    this.access = access
    const stateVector = this.reportedStateVector ?? (created ? EMPTY_STATE_VECTOR : undefined)
    this.reportedStateVector = undefined
    // The relay's state vector first: the client answers it with what it wrote before it merges the
    // catch-up (a merge deletes the entries of a concurrent creation it beat, which then looks like removal).
    this.sendSyncStep1()
    if (stateVector) this.sendSyncStep2(stateVector)
    this.sendPresent()
    // y-websocket answers this with its awareness.
    this.send(QUERY_AWARENESS)
  }

  close(code: number, reason: string): void {
    if (this.closed) return
    this.closed = true
    this.answerWait?.()
    this.answerWait = undefined
    this.owner.detach(this)
    this.session.close(code, reason)
  }

  /**
   * Runs `work`, which answers this connection outside the handling of its
   * frame (from a timer, or once a change is durable): an error there would
   * escape every handler and end the relay's process, so it ends this
   * connection instead (logged as a refusal; 4500 or the error's own code).
   */
  private guarded(work: () => void): void {
    try {
      work()
    } catch (error) {
      const failure = toParleyError(error)
      this.owner.refused(this, failure)
      const close = closeOf(failure)
      this.close(close.code, close.reason)
    }
  }

  /** {@link guarded} `work` once every change applied so far is durable. */
  private afterSaved(work: () => void): void {
    void this.host.settled().then(() => this.guarded(work))
  }

  /** Sends the opening messages: the relay's sync step 1 and the current awareness. */
  start(): void {
    if (this.pending) {
      // Asks for everything the client has (its creating update, if it created offline), revealing
      // nothing; while a change is being stored, only once access is decided (promoted: the real one).
      const begin = () => {
        if (this.pending) this.sendAnyway(encodeSyncStep1(EMPTY_STATE_VECTOR))
      }
      if (this.host.hasUnsaved) this.afterSaved(begin)
      else begin()
      return
    }
    // The state vector too describes only what is durable (the client leaves out what it thinks we have).
    if (this.host.hasUnsaved) this.afterSaved(() => this.sendSyncStep1())
    else this.sendSyncStep1()
    this.sendPresent()
  }

  /** The awareness states present, if any (an answer like any other: it grows with the room). */
  private sendPresent(): void {
    const awareness = this.host.awarenessIfAny
    const states = awareness?.getStates()
    if (!awareness || !states || states.size === 0) return
    const frame = awarenessFrame(awareness, [...states.keys()])
    this.send(frame)
    this.owner.answered(this, ANSWER_BASE_BYTES + frame.length)
  }

  /**
   * The "saved" acknowledgement, for connections that asked for it: the whole
   * durable state vector, or only the entries of `clientIds` (see `DocumentHost.savedStateVector`).
   */
  saved(clientIds?: Iterable<number>): void {
    if (this.session.wantsParley) this.send(encodeSaved(this.host.savedStateVector(clientIds)))
  }

  /**
   * The "saved" acknowledgement of an update the relay already had, for a
   * {@link pending} connection: it names only what the update itself holds
   * (`ends`: its clients and the clock after their last struct), never the
   * document's state vector.
   */
  savedOwn(ends: ReadonlyMap<number, number>): void {
    if (this.session.wantsParley) this.sendAnyway(encodeSaved(Y.encodeStateVector(new Map(ends))))
  }

  /**
   * A refused frame: connections speaking Parley's extension get a typed error
   * and stay open; stock clients cannot read one, so they are closed with the
   * error's close code.
   */
  refuse(error: ParleyError): void {
    if (this.session.wantsParley) {
      // An error describes the client's own frame; a pending connection gets it too.
      this.sendAnyway(
        encodeError({
          code: error.code,
          message: error.message,
          ...(error.rule ? { rule: error.rule } : {}),
        }),
      )
    } else {
      const close = closeOf(error)
      this.close(close.code, close.reason)
    }
  }

  /** Handles one incoming frame. A frame that cannot be decoded closes the connection with 4400. */
  receive(frame: Uint8Array): void {
    if (this.closed) return
    try {
      this.dispatch(readFrame(frame))
    } catch (error) {
      this.owner.refused(this, toParleyError(error, ErrorCode.MALFORMED_FRAME))
      this.close(CloseCode.MalformedFrame.code, CloseCode.MalformedFrame.reason)
    }
  }

  private dispatch(frame: Frame): void {
    switch (frame.type) {
      case "sync":
        this.receiveSync(frame.message)
        return
      case "awareness": {
        // Nobody may publish to a document they are not yet known to be allowed into (a stranger's
        // presence would reach the members). Otherwise owned entries only, stamped and within the
        // user's limits (see AwarenessGate).
        if (this.pending) return
        this.owner.awareness(this, frame.update)
        return
      }
      case "auth":
        // Clients have nothing to say in the auth sub-protocol; reading it checked it is well-formed.
        return
      case "queryAwareness": {
        if (this.pending) return
        this.awarenessQuery = true
        this.answerRequests()
        return
      }
      case "parley": {
        const message = frame.message
        if (message?.type === "historyRequest") {
          this.pageRequest(message.request, message.segment, encodeHistoryPage, () =>
            this.owner.history(this, message.request, message.segment),
          )
          return
        }
        if (message?.type === "directoryRequest") {
          this.pageRequest(message.request, message.page, encodeDirectoryPageFrame, () =>
            this.owner.directory(this, message.request, message.page),
          )
          return
        }
        if (message?.type === "epochRequest") {
          this.pageRequest(message.request, message.record, encodeEpochRecordFrame, () =>
            this.owner.epochRecord(this, message.request, message.record),
          )
          return
        }
        if (message?.type === "view") {
          // The state vector of the replica that made the update following: what it had seen (see ReplicaView).
          const copy = this.checkedStateVector(message.stateVector)
          if (copy) this.replicaStateVector = copy
          return
        }
        // The transport takes token refreshes; clients send no other subtype.
        throw new ParleyError(ErrorCode.MALFORMED_FRAME, "unexpected Parley message from a client")
      }
    }
  }

  /**
   * A request for a page of the history (a segment, a directory page, an
   * epoch record), numbered `asked`: served by `serve` once access is known.
   * Nothing of the history before that: a pending connection is told no
   * (`FORBIDDEN`, in `encode`'s frame), with no byte of it.
   */
  private pageRequest(
    request: number,
    asked: number,
    encode: (page: HistoryPage) => Uint8Array,
    serve: () => void,
  ): void {
    if (this.pending) this.sendAnyway(encode({ request, segment: asked, error: ErrorCode.FORBIDDEN }))
    else serve()
  }

  private sendSyncStep1(): void {
    if (this.host.destroyed) return
    this.send(encodeSyncStep1(Y.encodeStateVector(this.host.doc)))
  }

  /**
   * Asks the client again for what the relay lacks (a sync step 1, which a
   * client answers with its missing changes at any time): sent once writes
   * are taken again after a retryable refusal, so that its work goes now
   * instead of at the end of its backoff. Not to a pending connection.
   */
  askAgain(): void {
    if (this.closed || this.pending) return
    this.sendSyncStep1()
  }

  /**
   * Answers the requests waiting (the last sync request's state vector, a
   * query of the awareness) now, or once the user's answer budget allows: an
   * answer may cost the relay an encoding of the whole live document (up to a
   * megabyte) for a request of a few bytes, so what a user is answered is
   * held to a rate across their connections. Requests arriving meanwhile fold
   * into the waiting ones; honest clients ask once per connection.
   */
  private answerRequests(): void {
    if (this.answerWait || this.closed) return
    this.answerWait = this.owner.whenAnswerable(this, () => {
      this.answerWait = undefined
      this.guarded(() => this.sendAnswers())
    })
  }

  private sendAnswers(): void {
    if (this.closed) return
    const stateVector = this.syncRequest
    this.syncRequest = undefined
    // Never answer from a change that is applied but not yet durable.
    if (stateVector && this.host.hasUnsaved) this.afterSaved(() => this.sendSyncStep2(stateVector))
    else if (stateVector) this.sendSyncStep2(stateVector)
    if (this.awarenessQuery) {
      this.awarenessQuery = false
      const awareness = this.host.awarenessIfAny
      const frame = awareness ? awarenessFrame(awareness, [...awareness.getStates().keys()]) : NO_AWARENESS
      this.send(frame)
      this.owner.answered(this, ANSWER_BASE_BYTES + frame.length)
    }
  }

  private sendSyncStep2(stateVector: Uint8Array): void {
    if (this.host.destroyed || this.closed) return
    // Decoded here, once per answer, not per request: requests arriving while one waits replace it
    // unread. Sent from a timer or once a change is durable, so a malformed one is handled here.
    let known: Map<number, number>
    try {
      known = Y.decodeStateVector(stateVector)
    } catch {
      this.close(CloseCode.MalformedFrame.code, CloseCode.MalformedFrame.reason)
      return
    }
    // Decoding costs about 30 times what answering a byte does: charged so (with the answer), a flood
    // of requests spends the user's answer budget and then folds into one waiting request (SECURITY.md).
    const decoded = ANSWER_BASE_BYTES + stateVector.length * STATE_VECTOR_BYTE_COST
    // A replica of an older epoch of the live document (it lacks the epoch's own client id) cannot
    // merge into this one: it is told to rebuild (the SDK rebases its pending work), nothing more.
    // Only conversations have epochs; reading one from an inbox would create the conversation types in it.
    const epoch = !this.pending && this.host.name.kind === "conversation" ? epochOf(this.host.doc) : undefined
    if (epoch !== undefined && known.size > 0 && !known.has(epoch)) {
      this.staleEpoch = true
      this.owner.answered(this, decoded)
      this.refuse(
        new ParleyError(ErrorCode.INVALID_UPDATE, "this replica is of an older epoch: rebuild it", {
          rule: Rule.epoch,
        }),
      )
      return
    }
    if (known.size === 0) {
      const frame = this.host.coldJoinFrame()
      this.send(frame, INITIAL_SYNC)
      this.owner.answered(this, decoded + frame.length)
      return
    }
    const frame = encodeSyncStep2(Y.encodeStateAsUpdate(this.host.doc, stateVector))
    this.send(frame, INITIAL_SYNC)
    // Yjs writes the document's whole delete set into every answer, walking every struct: an answer of
    // a few bytes to an up-to-date state vector costs as much as that walk, and is charged so.
    this.owner.answered(
      this,
      decoded + Math.max(frame.length, structsOf(this.host.doc) * WALK_BYTES_PER_STRUCT),
    )
  }

  /**
   * A copy of a state vector a client sent (a sync request, a view), if it
   * may be one of this document's replicas; otherwise the client is told
   * (a malformed frame throws) and undefined.
   */
  private checkedStateVector(stateVector: Uint8Array): Uint8Array | undefined {
    // Decoding a state vector costs about half a microsecond per entry, and a 1 MB frame lists
    // 130,000 of them: 60-110 ms of CPU per frame (it was decoded up to three times), at the socket's
    // frame rate. A replica knows the
    // document's clients and its own sessions the relay has not heard of, no more; one that lists
    // more is of an older epoch (or forged), and is told to rebuild before anything is decoded. A
    // pending connection may be a stranger's: measured against an empty document, so that whether it
    // is refused says nothing of the document's clients (it may list only sessions of its own).
    const clients = this.pending ? 0 : this.host.doc.store.clients.size
    const declared = declaredClients(stateVector)
    // Bytes past what the entries it declares can take are no replica's: a request of 0 clients and
    // 1 MiB was held per connection until answered (an outside probe kept 1 GB of them).
    if (stateVector.length > STATE_VECTOR_HEADER_BYTES + declared * STATE_VECTOR_ENTRY_BYTES)
      throw new ParleyError(
        ErrorCode.MALFORMED_FRAME,
        `a state vector of ${declared} clients takes at most ${STATE_VECTOR_HEADER_BYTES + declared * STATE_VECTOR_ENTRY_BYTES} bytes`,
      )
    if (declared > clients + MAX_UNKNOWN_CLIENTS) {
      this.staleEpoch = true
      this.refuse(
        new ParleyError(
          ErrorCode.INVALID_UPDATE,
          "this replica lists more clients than the document has: rebuild it",
          { rule: Rule.epoch },
        ),
      )
      return undefined
    }
    // A copy: a view would keep the whole frame it came in alive as long as it is held.
    return stateVector.slice()
  }

  private receiveSync(message: SyncFrame): void {
    if (message.type === "syncStep1") {
      const copy = this.checkedStateVector(message.stateVector)
      if (!copy) return
      if (this.pending) {
        // "Synced" with an empty document; the real answer is the catch-up sent on promotion, which
        // decodes the latest request (once).
        const asked = this.reportedStateVector !== undefined
        this.reportedStateVector = copy
        this.replicaStateVector = copy
        // One empty answer makes a client "synced"; more requests meanwhile only replace what it reported.
        if (asked) return
        const answer = () => {
          if (this.pending) this.sendAnyway(encodeSyncStep2(EMPTY_UPDATE), INITIAL_SYNC)
        }
        if (this.host.hasUnsaved) this.afterSaved(answer)
        else answer()
        return
      }
      // A request already waiting for its answer (the user's answer budget spent) is replaced by this
      // one, unread: a flood of requests costs one decoding per answer, not one per frame.
      const waiting = this.syncRequest !== undefined
      this.syncRequest = copy
      this.replicaStateVector = copy
      if (!waiting) this.answerRequests()
      return
    }
    const { update } = message
    // Built on an older epoch: it was told once; what it sends until it rebuilt cannot apply.
    if (this.staleEpoch) return
    // Updates wait in the document's queue; a client must not park unbounded bytes there.
    if (this.pendingBytes + update.length > this.owner.maxPendingBytes) {
      this.owner.refused(this, new ParleyError(ErrorCode.RATE_LIMITED, "too many update bytes waiting"))
      this.close(CloseCode.RateLimited.code, CloseCode.RateLimited.reason)
      return
    }
    this.pendingBytes += update.length
    const seen: ReplicaView = { stateVector: this.replicaStateVector }
    this.owner
      .submit(this, update, seen)
      .catch((error: unknown) => {
        const refusal = toParleyError(error)
        this.owner.refused(this, refusal)
        this.refuse(refusal)
      })
      .finally(() => {
        this.pendingBytes -= update.length
      })
  }
}

/**
 * Clients a replica's state vector may list beyond the document's own: its
 * sessions whose changes have not reached the relay yet (an offline device
 * restarted many times). A legitimate replica never comes near it.
 */
export const MAX_UNKNOWN_CLIENTS = 4096

/**
 * Answer bytes one byte of a sync request's state vector is charged (see `sendSyncStep2`): decoding
 * one costs about 50 ms per MB (4,000 made-up clients in 12 KB: 0.6 ms), answering one about 2.
 */
const STATE_VECTOR_BYTE_COST = 32

/** Most bytes of a state vector's count (a varuint of up to 53 bits). */
const STATE_VECTOR_HEADER_BYTES = 8
/** Most bytes of one state vector entry: a client id (32 bits, 5 bytes as a varuint) and a clock (53 bits, 8). */
const STATE_VECTOR_ENTRY_BYTES = 13

/** The entry count a state vector declares (its first number), read without decoding the entries. */
function declaredClients(stateVector: Uint8Array): number {
  return decoding.readVarUint(decoding.createDecoder(stateVector))
}

/**
 * What walking one struct of a document costs, in answer bytes: a document of
 * 174,000 structs (2.3 MB) encodes whole in 33 ms and answers an up-to-date
 * state vector in 3.1 ms (on this project's 2-core machine), so a struct
 * walked costs about what 1.3 bytes encoded do; rounded up.
 */
const WALK_BYTES_PER_STRUCT = 2

/** Structs in `doc`'s store: what encoding any answer walks (O(clients) to count). */
function structsOf(doc: Y.Doc): number {
  let structs = 0
  for (const list of doc.store.clients.values()) structs += list.length
  return structs
}

/** An awareness frame holding no state: the answer to a query where nobody is present. */
const NO_AWARENESS = encodeAwareness(new Uint8Array([0]))

/** A query-awareness frame: asks the client for its awareness states. */
const QUERY_AWARENESS = encodeQueryAwareness()

/** An awareness frame holding the states of `clients`. */
function awarenessFrame(awareness: awarenessProtocol.Awareness, clients: number[]): Uint8Array {
  return encodeAwareness(awarenessProtocol.encodeAwarenessUpdate(awareness, clients))
}
