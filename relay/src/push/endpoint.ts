import { lookup } from "node:dns/promises"
import { BlockList, isIP } from "node:net"
import { ErrorCode, ParleyError } from "@parley/shared"

/** Which push endpoints the relay will send to (they are URLs chosen by whoever registers). */
export interface EndpointPolicy {
  /** Accept `http:` endpoints (tests and local development only). Default false. */
  readonly allowHttp?: boolean
  /** Accept endpoints on loopback, private, link-local and other non-public addresses. Default false. */
  readonly allowPrivate?: boolean
}

/** Longest endpoint URL accepted (real push services use well under 1 KB). */
export const MAX_ENDPOINT_LENGTH = 2048

// Addresses a relay must not be made to POST to on a stranger's behalf: its own host, the private
// network, cloud metadata services (169.254.169.254), and the reserved ranges.
const NON_PUBLIC = new BlockList()
for (const [network, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  // Documentation ranges (TEST-NET-1..3) and the old 6to4 relay anycast.
  ["192.0.2.0", 24],
  ["192.88.99.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["198.51.100.0", 24],
  ["203.0.113.0", 24],
  ["224.0.0.0", 3],
] as const)
  NON_PUBLIC.addSubnet(network, prefix, "ipv4")
// Forms of IPv6 that carry an IPv4 address are refused whole, whatever address they carry: the
// deprecated IPv4-compatible ::/96 ([::127.0.0.1]), 6to4 (2002::/16: [2002:7f00:1::] is 127.0.0.1),
// Teredo (2001::/32) and the NAT64 prefixes (an outside probe passed the first two through).
for (const [network, prefix] of [
  ["::", 96],
  ["::1", 128],
  // IPv4-translated (SIIT): [::ffff:0:7f00:1] is 127.0.0.1.
  ["::ffff:0:0:0", 96],
  ["64:ff9b::", 96],
  ["64:ff9b:1::", 48],
  // Discard-only, documentation (old and RFC 9637's), site-local (deprecated, still routed by some).
  ["100::", 64],
  ["2001::", 32],
  ["2001:db8::", 32],
  ["2002::", 16],
  ["3fff::", 20],
  ["fc00::", 7],
  ["fe80::", 10],
  ["fec0::", 10],
  ["ff00::", 8],
] as const)
  NON_PUBLIC.addSubnet(network, prefix, "ipv6")

/** True when `address` (an IP literal) is loopback, private, link-local or reserved. */
export function isNonPublicAddress(address: string): boolean {
  const family = isIP(address)
  if (family === 0) return false
  if (family === 6) {
    // An IPv4-mapped address is judged as the IPv4 address it carries (a ::ffff:0:0/96 rule would
    // also catch every plain IPv4 address: BlockList maps them into it).
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1]
    if (mapped) return NON_PUBLIC.check(mapped, "ipv4")
  }
  return NON_PUBLIC.check(address, family === 4 ? "ipv4" : "ipv6")
}

/** The error of an endpoint (or, with `what` "link", a URL to preview) that the policy refuses. */
export const refuse = (why: string, what = "push endpoint") =>
  new ParleyError(ErrorCode.INVALID_ARGUMENT, `${what} refused: ${why}`)

/**
 * Checks an endpoint's form: an absolute `https:` URL (or `http:` when
 * allowed), without credentials, whose host is not a non-public IP literal
 * or `localhost` (unless allowed). Returns the parsed URL; throws
 * INVALID_ARGUMENT otherwise.
 */
export function checkEndpointUrl(endpoint: string, policy: EndpointPolicy, what = "push endpoint"): URL {
  if (endpoint.length > MAX_ENDPOINT_LENGTH)
    throw refuse(`longer than ${MAX_ENDPOINT_LENGTH} characters`, what)
  let url: URL
  try {
    url = new URL(endpoint)
  } catch {
    throw refuse("not a URL", what)
  }
  if (url.protocol !== "https:" && !(policy.allowHttp && url.protocol === "http:"))
    throw refuse(policy.allowHttp ? "not an http(s) URL" : "not an https URL", what)
  if (url.username || url.password) throw refuse("credentials in the URL", what)
  const host = url.hostname.replace(/^\[|\]$/g, "")
  if (
    !policy.allowPrivate &&
    (isNonPublicAddress(host) || /^localhost\.?$/i.test(host) || /\.localhost\.?$/i.test(host))
  )
    throw refuse("a loopback or private address", what)
  return url
}

/**
 * Checks an endpoint before sending to it: its form, then (unless private
 * addresses are allowed) that its host name resolves to public addresses
 * only. Throws INVALID_ARGUMENT for an endpoint to refuse; a name that does
 * not resolve throws the lookup's own error (it may resolve later).
 */
export async function checkEndpointBeforeSend(
  endpoint: string,
  policy: EndpointPolicy,
  what = "push endpoint",
): Promise<URL> {
  const url = checkEndpointUrl(endpoint, policy, what)
  if (policy.allowPrivate) return url
  const host = url.hostname.replace(/^\[|\]$/g, "")
  if (isIP(host) !== 0) return url
  const addresses = await lookup(host, { all: true })
  if (addresses.some(({ address }) => isNonPublicAddress(address)))
    throw refuse(`${host} resolves to a loopback or private address`, what)
  return url
}
