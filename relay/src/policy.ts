import { type Decision, Rule } from "@parley/shared"
import { accessOf } from "./access.js"
import type { RelayExtension } from "./extension.js"
import { checkInboxUpdate } from "./inbox/check-inbox-update.js"

export type { ClientIdOwners, PolicyInput, StoredChange } from "./extension.js"

/**
 * The one choke point deciding whether an update may be stored: an extension
 * with {@link RelayExtension.checkUpdate}. The core always runs
 * {@link membershipPolicy} first; the full per-update checker of the document
 * rules (`AuthorizationPolicy`) is the relay's default policy
 * (`startRelay({ policy })` replaces it).
 */
export type UpdatePolicy = RelayExtension & Required<Pick<RelayExtension, "checkUpdate">>

const ALLOW: Decision = { allowed: true }

/**
 * Membership and read-only access: services and inbox readers may not write,
 * non-participants may not write to an existing conversation. The relay's own
 * writes are always allowed.
 */
export const membershipPolicy: UpdatePolicy = {
  name: "membership",
  checkUpdate({ name, doc, update, principal }) {
    if (principal.kind === "relay") return ALLOW
    if (name.kind === "inbox") return checkInboxUpdate({ doc, update, principal, owner: name.user })
    if (principal.kind === "service")
      return { allowed: false, rule: Rule.readOnly, reason: "service tokens are read-only" }
    const access = accessOf(principal, name, doc)
    // A pending user may send the update that creates the conversation; the rules judge it.
    return access === "write" || access === "pending"
      ? ALLOW
      : { allowed: false, rule: Rule.participantOnly, reason: "only participants may change a conversation" }
  },
}
