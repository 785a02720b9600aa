import { ErrorCode, ParleyError } from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import type { Principal } from "../principal.js"
import type { PurgedContent } from "../purge/redact.js"
import type { ReplicaView } from "../replica-view.js"

/** A stored log entry as relays pass it to each other. */
export interface WireEntry {
  readonly position: number
  readonly update: Uint8Array
}

/**
 * What relays say to each other over Redis, one binary message each (lib0
 * encoding: no JSON for update bytes). `stored` and `awareness` go to a
 * document's channel, `request` and `reply` to one relay's own channel.
 */
export type ClusterMessage =
  | {
      /** The owner stored these entries (committed, fenced). */
      readonly type: "stored"
      readonly from: string
      readonly name: string
      readonly entries: readonly WireEntry[]
    }
  | {
      /** An awareness update of one relay's connections. */
      readonly type: "awareness"
      readonly from: string
      readonly name: string
      readonly update: Uint8Array
    }
  | {
      /** A change for the owner to check and store: a client's update, or a server-side write. */
      readonly type: "request"
      readonly id: string
      readonly replyTo: string
      readonly name: string
      readonly kind: "client" | "server"
      readonly principal: Principal
      readonly update: Uint8Array
      /**
       * A server-side write's: the state vector of the copy it was made on.
       * The owner refuses it (`stale-copy`) when its document holds more:
       * the write's checks read a copy older than the document.
       */
      readonly base?: Uint8Array
      /** A client's update's: what its replica had seen (see `ReplicaView`). */
      readonly seen?: ReplicaView
    }
  | {
      /** A purge ran on relay `from` (which orders the document): what other relays hold of it goes too. */
      readonly type: "purged"
      readonly from: string
      readonly purge: PurgedContent
    }
  | {
      /**
       * Relay `from` (which orders the document) started a fresh epoch of it
       * (see `startNewEpoch`): what other relays hold of the old epoch is
       * dropped and their connections rejoin the new one.
       */
      readonly type: "epoch"
      readonly from: string
      readonly name: string
    }
  | {
      /**
       * A stock y-websocket provider is (or just was) connected to the
       * document through relay `from`: the relay that orders it holds its
       * epochs back (a stock provider cannot follow one).
       */
      readonly type: "stock"
      readonly from: string
      readonly name: string
    }
  | {
      /** The owner's answer: stored through `through` (its last position then), or refused. */
      readonly type: "reply"
      readonly id: string
      readonly through?: number
      readonly error?: { readonly code: ErrorCode; readonly message: string; readonly rule?: string }
    }

/** The count of ids that says a `purged` message is about a whole conversation. */
const CONVERSATION_PURGE = -1
/** The count of ids that says a `purged` message is about one user, whose id follows. */
const USER_PURGE = -2

const TYPES = ["stored", "awareness", "request", "reply", "purged", "epoch", "stock"] as const

/** Encodes one message for Redis. */
export function encodeClusterMessage(message: ClusterMessage): Uint8Array {
  const e = encoding.createEncoder()
  encoding.writeUint8(e, TYPES.indexOf(message.type))
  switch (message.type) {
    case "stored":
      encoding.writeVarString(e, message.from)
      encoding.writeVarString(e, message.name)
      encoding.writeVarUint(e, message.entries.length)
      for (const entry of message.entries) {
        encoding.writeVarUint(e, entry.position)
        encoding.writeVarUint8Array(e, entry.update)
      }
      break
    case "awareness":
      encoding.writeVarString(e, message.from)
      encoding.writeVarString(e, message.name)
      encoding.writeVarUint8Array(e, message.update)
      break
    case "request":
      encoding.writeVarString(e, message.id)
      encoding.writeVarString(e, message.replyTo)
      encoding.writeVarString(e, message.name)
      encoding.writeVarString(e, message.kind)
      encoding.writeVarString(e, JSON.stringify(message.principal))
      encoding.writeVarUint8Array(e, message.update)
      if (message.base) encoding.writeVarUint8Array(e, message.base)
      else if (message.seen) writeReplicaView(e, message.seen)
      break
    case "purged": {
      const { name, conversationId, scope } = message.purge
      encoding.writeVarString(e, message.from)
      encoding.writeVarString(e, name)
      encoding.writeVarString(e, conversationId)
      // A conversation's whole purge is the empty list's absence: -1 ids; a user's erasure -2, then the user.
      if (scope.kind === "user") {
        encoding.writeVarInt(e, USER_PURGE)
        encoding.writeVarString(e, scope.user)
        break
      }
      const ids = scope.kind === "messages" ? [...scope.ids] : undefined
      encoding.writeVarInt(e, ids ? ids.length : CONVERSATION_PURGE)
      for (const id of ids ?? []) encoding.writeVarString(e, id)
      // Last, so that a relay of a version before it reads the rest as before (and purges every event).
      if (scope.kind === "conversation" && scope.through !== undefined)
        encoding.writeVarUint(e, scope.through)
      break
    }
    case "reply":
      encoding.writeVarString(e, message.id)
      encoding.writeVarString(e, JSON.stringify({ through: message.through, error: message.error }))
      break
    case "epoch":
    case "stock":
      encoding.writeVarString(e, message.from)
      encoding.writeVarString(e, message.name)
      break
  }
  return encoding.toUint8Array(e)
}

/** Decodes a message another relay published; throws a ParleyError on anything else. */
export function decodeClusterMessage(bytes: Uint8Array): ClusterMessage {
  try {
    const d = decoding.createDecoder(bytes)
    const type = TYPES[decoding.readUint8(d)]
    switch (type) {
      case "stored": {
        const from = decoding.readVarString(d)
        const name = decoding.readVarString(d)
        const count = decoding.readVarUint(d)
        const entries: WireEntry[] = []
        for (let i = 0; i < count; i++)
          entries.push({ position: decoding.readVarUint(d), update: decoding.readVarUint8Array(d) })
        return { type, from, name, entries }
      }
      case "awareness":
        return {
          type,
          from: decoding.readVarString(d),
          name: decoding.readVarString(d),
          update: decoding.readVarUint8Array(d),
        }
      case "request": {
        const id = decoding.readVarString(d)
        const replyTo = decoding.readVarString(d)
        const name = decoding.readVarString(d)
        const kind = decoding.readVarString(d) === "server" ? "server" : "client"
        const principal = JSON.parse(decoding.readVarString(d)) as Principal
        const update = decoding.readVarUint8Array(d)
        if (kind === "client") {
          const seen = decoding.hasContent(d) ? readReplicaView(d) : undefined
          return { type, id, replyTo, name, kind, principal, update, ...(seen ? { seen } : {}) }
        }
        const base = decoding.hasContent(d) ? decoding.readVarUint8Array(d) : undefined
        return { type, id, replyTo, name, kind, principal, update, ...(base ? { base } : {}) }
      }
      case "reply": {
        const id = decoding.readVarString(d)
        const body = JSON.parse(decoding.readVarString(d)) as Omit<
          Extract<ClusterMessage, { type: "reply" }>,
          "type" | "id"
        >
        return { type, id, ...body }
      }
      case "purged": {
        const from = decoding.readVarString(d)
        const name = decoding.readVarString(d)
        const conversationId = decoding.readVarString(d)
        const count = decoding.readVarInt(d)
        if (count === USER_PURGE) {
          const user = decoding.readVarString(d)
          return { type, from, purge: { name, conversationId, scope: { kind: "user", user } } }
        }
        if (count < 0) {
          const through = decoding.hasContent(d) ? decoding.readVarUint(d) : undefined
          const scope =
            through === undefined
              ? { kind: "conversation" as const }
              : { kind: "conversation" as const, through }
          return { type, from, purge: { name, conversationId, scope } }
        }
        const ids = new Set<string>()
        for (let i = 0; i < count; i++) ids.add(decoding.readVarString(d))
        return { type, from, purge: { name, conversationId, scope: { kind: "messages", ids } } }
      }
      case "epoch":
      case "stock":
        return { type, from: decoding.readVarString(d), name: decoding.readVarString(d) }
      default:
        throw new Error("unknown message type")
    }
  } catch (cause) {
    throw new ParleyError(ErrorCode.MALFORMED_FRAME, "a cluster message could not be decoded", { cause })
  }
}

/** A replica view's tags on the wire (2: a view of the previous version, with a connection's age, read and ignored). */
const VIEW_STATE_VECTOR = 1
const VIEW_WITH_AGE = 2

function writeReplicaView(e: encoding.Encoder, seen: ReplicaView): void {
  encoding.writeUint8(e, VIEW_STATE_VECTOR)
  encoding.writeVarUint8Array(e, seen.stateVector ?? new Uint8Array())
}

function readReplicaView(d: decoding.Decoder): ReplicaView {
  const tag = decoding.readUint8(d)
  const bytes = decoding.readVarUint8Array(d)
  const stateVector = bytes.length > 0 ? bytes : undefined
  if (tag === VIEW_WITH_AGE) decoding.readVarUint(d)
  else if (tag !== VIEW_STATE_VECTOR) throw new Error(`unknown replica view ${tag}`)
  return { stateVector }
}
