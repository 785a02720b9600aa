import type { UserId } from "@parley/shared"

/**
 * Who is acting on a document: a user (token subject), a service (a token
 * with `role: "service"`, read-only, for admin tools; or an HTTP API key,
 * writing through the relay as `user`: its own participant
 * `service.<subject>`, or the app user it acts for), or the relay itself (its
 * own writes, e.g. sequence numbers).
 */
export type Principal =
  | { readonly kind: "user"; readonly user: UserId }
  | { readonly kind: "service"; readonly subject: string; readonly user?: UserId }
  | { readonly kind: "relay" }

/**
 * Prefix of the participant ids of API keys' services (`service.<name>`):
 * reserved, the relay refuses user tokens whose subject has it.
 */
export const SERVICE_PARTICIPANT_PREFIX = "service."

/** The participant id an API key's service writes as when it acts as itself. */
export const serviceParticipant = (name: string): UserId => `${SERVICE_PARTICIPANT_PREFIX}${name}` as UserId

/** The relay's own principal. */
export const RELAY: Principal = { kind: "relay" }

/**
 * A short label for logs and metrics, and the key a Yjs client id is bound to
 * (`user:<id>`, `service:<subject>`, `relay`): bindings persist it as plain
 * text, so it never changes.
 */
export function describePrincipal(principal: Principal): string {
  switch (principal.kind) {
    case "user":
      return `user:${principal.user}`
    case "service":
      return `service:${principal.subject}`
    case "relay":
      return "relay"
  }
}
