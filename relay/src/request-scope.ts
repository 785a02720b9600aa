import { AsyncLocalStorage } from "node:async_hooks"

/** What the transport keeps of the HTTP request being handled (see {@link credentialsVerified}). */
interface RequestScope {
  refund: (() => void) | undefined
}

const scope = new AsyncLocalStorage<RequestScope>()

/**
 * Runs `handle`, the handling of one HTTP request that took one of its
 * address's requests (`--address-requests-per-second`); `refund` gives it
 * back.
 */
export function withinRequest<T>(refund: () => void, handle: () => T): T {
  return scope.run({ refund }, handle)
}

/**
 * Tells the transport that the HTTP request being handled carried
 * credentials that verified (a user's or service token, an API key, the
 * metrics token): it is held to its principal's budgets, and its address's
 * request is given back. A header that verifies nothing keeps it charged: an
 * `Authorization` header of any kind once took a request past the address's
 * budget to routes that never read it (an outside probe). Outside an HTTP
 * request (a WebSocket's token), nothing.
 */
export function credentialsVerified(): void {
  const current = scope.getStore()
  if (!current) return
  current.refund?.()
  current.refund = undefined
}
