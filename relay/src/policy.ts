import { type Decision, type DocumentName, Rule } from "@parley/shared"
import type * as Y from "yjs"
import { accessOf } from "./access.js"
import { checkInboxUpdate } from "./inbox/check-inbox-update.js"
import type { Principal } from "./principal.js"

/** What the update path asks a policy about, before anything is stored. */
export interface PolicyInput {
  /** The document, parsed. */
  readonly name: DocumentName
  /** The document as loaded, before the update. */
  readonly doc: Y.Doc
  /** The update (Yjs v1 encoding); already known to decode. */
  readonly update: Uint8Array
  /** Who sent it. */
  readonly principal: Principal
  /** The Yjs client ids that wrote the structs in the update. */
  readonly clientIds: ReadonlySet<number>
}

/**
 * The one choke point deciding whether an update may be stored. The default
 * checks who may write at all; the full per-update checker of the document
 * rules plugs in here (`startRelay({ policy })`).
 */
export interface UpdatePolicy {
  check(input: PolicyInput): Decision | Promise<Decision>
  /**
   * Told about every change once it is stored: a client's accepted update
   * (with the decision `check` returned), the relay's sequencing, a server-side
   * write. `clientIds` are the Yjs client ids it was written under, e.g. to bind
   * them to `principal`. Awaited inside the document's serial queue.
   */
  stored?(change: StoredChange): void | Promise<void>
  /**
   * The owners of the document's Yjs client ids, as this policy binds them,
   * loaded once with the document. Awareness consults and extends them (an id
   * announced in awareness is claimed for its user), so that presence and
   * writes agree on whose an id is. Without it (or `undefined`), the core
   * keeps awareness owners in memory for the loaded document only.
   */
  clientIdOwners?(name: DocumentName, doc: Y.Doc): Promise<ClientIdOwners | undefined>
}

/** Who owns each Yjs client id of one loaded document (see {@link UpdatePolicy.clientIdOwners}). */
export interface ClientIdOwners {
  /** The principal key (`user:<id>`, `service:<subject>`, `relay`) owning `clientId`, if any. */
  owner(clientId: number): string | undefined
  /**
   * Binds `clientId`, which has no owner, to `key`: at once in memory (so the
   * next update or awareness frame sees it), and durably by the time the
   * promise resolves.
   */
  claim(clientId: number, key: string): Promise<void>
}

/** A change that was stored, as {@link UpdatePolicy.stored} receives it. */
export interface StoredChange {
  readonly name: DocumentName
  readonly doc: Y.Doc
  readonly principal: Principal
  readonly clientIds: ReadonlySet<number>
  /** For a client update: what `check` decided. */
  readonly decision?: Decision
}

const ALLOW: Decision = { allowed: true }

/**
 * Membership and read-only access: services and inbox readers may not write,
 * non-participants may not write to an existing conversation. The relay's own
 * writes are always allowed.
 */
export const membershipPolicy: UpdatePolicy = {
  check({ name, doc, update, principal }) {
    if (principal.kind === "relay") return ALLOW
    if (name.kind === "inbox") return checkInboxUpdate({ doc, update, principal, owner: name.user })
    if (principal.kind === "service")
      return { allowed: false, rule: Rule.participantOnly, reason: "service tokens are read-only" }
    const access = accessOf(principal, name, doc)
    // A pending user may send the update that creates the conversation; the rules judge it.
    return access === "write" || access === "pending"
      ? ALLOW
      : { allowed: false, rule: Rule.participantOnly, reason: "only participants may change a conversation" }
  },
}
