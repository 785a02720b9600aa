import { CloseCode, ErrorCode, encodeError, MessageType, ParleyError, toParleyError } from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import * as authProtocol from "y-protocols/auth"
import * as awarenessProtocol from "y-protocols/awareness"
import * as syncProtocol from "y-protocols/sync"
import * as Y from "yjs"
import type { Access } from "./access.js"
import type { DocumentHost } from "./document-host.js"
import { closeOf } from "./errors.js"
import type { Principal } from "./principal.js"
import { savedFrame } from "./update-path.js"

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
  send(frame: Uint8Array, options?: { readonly initialSync?: boolean }): void
  close(code: number, reason: string): void
}

const INITIAL_SYNC = { initialSync: true } as const

/** What a connection asks of the core. */
export interface ConnectionOwner {
  /** Most update bytes one connection may have waiting in the document's queue (then 4429). */
  readonly maxPendingBytes: number
  submit(connection: Connection, update: Uint8Array): Promise<unknown>
  detach(connection: Connection): void
  refused(connection: Connection, error: ParleyError): void
}

/**
 * One session attached to one loaded document: speaks the y-websocket protocol
 * (sync, awareness, auth, query awareness) and Parley's extension frames.
 */
export class Connection {
  /** Awareness client ids this connection set, removed when it closes. */
  readonly awarenessIds = new Set<number>()
  closed = false
  private pendingBytes = 0

  constructor(
    readonly host: DocumentHost,
    readonly session: Session,
    public access: Access,
    private readonly owner: ConnectionOwner,
  ) {}

  get principal(): Principal {
    return this.session.principal
  }

  send(frame: Uint8Array, options?: { readonly initialSync?: boolean }): void {
    if (!this.closed) this.session.send(frame, options)
  }

  close(code: number, reason: string): void {
    if (this.closed) return
    this.closed = true
    this.owner.detach(this)
    this.session.close(code, reason)
  }

  /** Sends the opening messages: the relay's sync step 1 and the current awareness. */
  start(): void {
    // The state vector too describes only what is durable (the client leaves out what it thinks we have).
    if (this.host.hasUnsaved) void this.host.settled().then(() => this.sendSyncStep1())
    else this.sendSyncStep1()
    const states = this.host.awareness.getStates()
    if (states.size > 0) this.send(awarenessFrame(this.host.awareness, [...states.keys()]))
  }

  /**
   * The "saved" acknowledgement, for connections that asked for it: the whole
   * durable state vector, or only the entries of `clientIds` (see `savedFrame`).
   */
  saved(clientIds?: Iterable<number>): void {
    if (this.session.wantsParley) this.send(savedFrame(this.host, clientIds))
  }

  /**
   * A refused frame: connections speaking Parley's extension get a typed error
   * and stay open; stock clients cannot read one, so they are closed with the
   * error's close code.
   */
  refuse(error: ParleyError): void {
    if (this.session.wantsParley) {
      this.send(
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
      this.dispatch(decoding.createDecoder(frame))
    } catch (error) {
      this.owner.refused(this, toParleyError(error, ErrorCode.MALFORMED_FRAME))
      this.close(CloseCode.MalformedFrame.code, CloseCode.MalformedFrame.reason)
    }
  }

  private dispatch(decoder: decoding.Decoder): void {
    const type = decoding.readVarUint(decoder)
    switch (type) {
      case MessageType.sync:
        this.receiveSync(decoder)
        return
      case MessageType.awareness: {
        const update = decoding.readVarUint8Array(decoder)
        // Services watch; they have no presence of their own.
        if (this.principal.kind === "service") return
        checkAwarenessUpdate(update)
        awarenessProtocol.applyAwarenessUpdate(this.host.awareness, update, this)
        return
      }
      case MessageType.auth:
        // Clients have nothing to say in the auth sub-protocol; read it to check it is well-formed.
        decoding.readVarUint(decoder)
        decoding.readVarString(decoder)
        return
      case MessageType.queryAwareness: {
        const states = this.host.awareness.getStates()
        this.send(awarenessFrame(this.host.awareness, [...states.keys()]))
        return
      }
      default:
        throw new Error(`unknown message type ${type}`)
    }
  }

  private sendSyncStep1(): void {
    if (this.host.destroyed) return
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MessageType.sync)
    syncProtocol.writeSyncStep1(encoder, this.host.doc)
    this.send(encoding.toUint8Array(encoder))
  }

  private sendSyncStep2(stateVector: Uint8Array): void {
    if (this.host.destroyed) return
    if (Y.decodeStateVector(stateVector).size === 0) {
      this.send(this.host.coldJoinFrame(), INITIAL_SYNC)
      return
    }
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MessageType.sync)
    syncProtocol.writeSyncStep2(encoder, this.host.doc, stateVector)
    this.send(encoding.toUint8Array(encoder), INITIAL_SYNC)
  }

  private receiveSync(decoder: decoding.Decoder): void {
    const type = decoding.readVarUint(decoder)
    if (type === syncProtocol.messageYjsSyncStep1) {
      const stateVector = decoding.readVarUint8Array(decoder)
      // Never answer from a change that is applied but not yet durable.
      if (this.host.hasUnsaved) void this.host.settled().then(() => this.sendSyncStep2(stateVector))
      else this.sendSyncStep2(stateVector)
      return
    }
    if (type === syncProtocol.messageYjsSyncStep2 || type === syncProtocol.messageYjsUpdate) {
      const update = decoding.readVarUint8Array(decoder)
      // Updates wait in the document's queue; a client must not park unbounded bytes there.
      if (this.pendingBytes + update.length > this.owner.maxPendingBytes) {
        this.owner.refused(this, new ParleyError(ErrorCode.RATE_LIMITED, "too many update bytes waiting"))
        this.close(CloseCode.RateLimited.code, CloseCode.RateLimited.reason)
        return
      }
      this.pendingBytes += update.length
      this.owner
        .submit(this, update)
        .catch((error: unknown) => {
          const refusal = toParleyError(error)
          this.owner.refused(this, refusal)
          this.refuse(refusal)
        })
        .finally(() => {
          this.pendingBytes -= update.length
        })
      return
    }
    throw new Error(`unknown sync message type ${type}`)
  }

  /** Tells a stock client why it is being closed (y-websocket logs auth messages). */
  permissionDenied(reason: string): void {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MessageType.auth)
    authProtocol.writePermissionDenied(encoder, reason)
    this.send(encoding.toUint8Array(encoder))
  }
}

/** Encodes an awareness frame for `clients`. */
export function awarenessFrame(awareness: awarenessProtocol.Awareness, clients: number[]): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.awareness)
  encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(awareness, clients))
  return encoding.toUint8Array(encoder)
}

/**
 * Reads an awareness update through without applying it, so that a malformed
 * one is refused whole instead of half-applied and half-broadcast.
 */
function checkAwarenessUpdate(update: Uint8Array): void {
  const decoder = decoding.createDecoder(update)
  const count = decoding.readVarUint(decoder)
  for (let i = 0; i < count; i++) {
    decoding.readVarUint(decoder)
    decoding.readVarUint(decoder)
    JSON.parse(decoding.readVarString(decoder))
  }
}
