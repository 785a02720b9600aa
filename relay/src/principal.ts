import type { UserId } from "@parley/shared"

/**
 * Who is acting on a document: a user (token subject), a read-only service
 * (token with `role: "service"`, for admin tools), or the relay itself (its own
 * writes, e.g. sequence numbers).
 */
export type Principal =
  | { readonly kind: "user"; readonly user: UserId }
  | { readonly kind: "service"; readonly subject: string }
  | { readonly kind: "relay" }

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
