import { createHmac, randomBytes, timingSafeEqual } from "node:crypto"
import { ErrorCode, ParleyError } from "@parley/shared"
import type { BlobStore } from "./blob-store.js"

/** Where the URL-signing secret is kept: in the blob store, so that every relay sharing it verifies alike. */
const SECRET_KEY = "keys/url-signing"

/**
 * The secret signed download URLs are made with: 32 random bytes created once
 * per store (the data directory, or the PostgreSQL database a cluster
 * shares). Created with an append at offset 0, which only one relay can win:
 * the others read the winner's.
 */
export async function urlSigningSecret(store: BlobStore): Promise<Buffer> {
  try {
    await store.append(SECRET_KEY, 0, randomBytes(32))
  } catch (error) {
    if (!(error instanceof ParleyError && error.code === ErrorCode.CONFLICT)) throw error
  }
  const parts: Uint8Array[] = []
  for await (const part of store.read(SECRET_KEY)) parts.push(part)
  return Buffer.concat(parts)
}

/**
 * What a signature covers: the attachment, which of its blobs, until when,
 * and for whom. The user is in it so that a download checks that user's
 * membership again: a URL stops working when its user leaves or is removed,
 * not only when it expires.
 */
const payload = (id: string, variant: "file" | "thumbnail", exp: number, user: string) =>
  `${id}\n${variant}\n${exp}\n${user}`

/** The signature of a download URL (`sig`) for `user`, base64url HMAC-SHA256. */
export const signUrl = (
  secret: Buffer,
  id: string,
  variant: "file" | "thumbnail",
  exp: number,
  user: string,
): string =>
  createHmac("sha256", secret)
    .update(payload(id, variant, exp, user))
    .digest("base64url")

/**
 * Whether `sig` signs this download for `user` until `exp` (unix seconds),
 * and `exp` is still ahead of `nowMs`. The caller still checks that `user`
 * may read the attachment now.
 */
export function verifyUrl(
  secret: Buffer,
  id: string,
  variant: "file" | "thumbnail",
  exp: string | undefined,
  user: string | undefined,
  sig: string | undefined,
  nowMs: number,
): boolean {
  if (!exp || !sig || !user || !/^\d{1,12}$/.test(exp)) return false
  const expires = Number(exp)
  if (expires * 1000 <= nowMs) return false
  const expected = Buffer.from(signUrl(secret, id, variant, expires, user))
  const given = Buffer.from(sig)
  return given.length === expected.length && timingSafeEqual(given, expected)
}
