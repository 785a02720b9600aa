import type { LookupAddress } from "node:dns"
import { lookup } from "node:dns/promises"
import { cappedAgent, fetchThrough, userChosenRequests } from "../outbound.js"
import { type EndpointPolicy, isNonPublicAddress, refuse } from "./endpoint.js"

// Apart from endpoint.ts (the checks, which the HTTP API's routes import in every relay): undici is
// about 3 MB of heap once loaded, and only a relay that sends push notifications or previews links
// loads this module (at start: see relay.ts and AttachmentsExtension).

/** Resolves a host name to its addresses (`dns.lookup` with `all: true`); replaceable in tests. */
export type ResolveHost = (host: string) => Promise<readonly { address: string; family: number }[]>

const resolveWithDns: ResolveHost = (host) => lookup(host, { all: true })

/**
 * A `fetch` for URLs chosen by users (push endpoints, link previews) that
 * connects only to public addresses. `checkEndpointBeforeSend` resolves the
 * name once to refuse it early with a clear error, but the request resolves
 * it again: a name whose DNS answer changes between the two (DNS rebinding)
 * would pass the check and then connect inward. Here the address the socket
 * connects to is the one checked, because the check runs inside the
 * connection's own lookup. With `allowPrivate` any address is reached.
 *
 * Either way it holds at most `CONNECTIONS_PER_ORIGIN` connections per origin,
 * and its calls count against `userChosenRequests`.
 */
export function publicOnlyFetch(policy: EndpointPolicy, resolve: ResolveHost = resolveWithDns): typeof fetch {
  // Both ways, at most a few connections per origin and a few dozen requests in flight in all: a user's
  // endpoints that accept and never answer must not take the relay's file descriptors.
  if (policy.allowPrivate) return userChosenRequests.wrap(fetchThrough(cappedAgent()))
  const agent = cappedAgent({
    connect: {
      lookup(host, options, callback) {
        const done = callback as (
          error: Error | null,
          address: string | LookupAddress[],
          family?: number,
        ) => void
        resolve(host).then(
          (addresses) => {
            const inward = addresses.find(({ address }) => isNonPublicAddress(address))
            if (inward) return done(refuse(`${host} resolves to a loopback or private address`), "")
            if (addresses.length === 0)
              return done(Object.assign(new Error(`${host} has no address`), { code: "ENOTFOUND" }), "")
            if ((options as { all?: boolean }).all)
              return done(
                null,
                addresses.map((a) => ({ ...a })),
              )
            const first = addresses[0]!
            done(null, first.address, first.family)
          },
          (error: Error) => done(error, ""),
        )
      },
    },
  })
  return userChosenRequests.wrap(fetchThrough(agent))
}
