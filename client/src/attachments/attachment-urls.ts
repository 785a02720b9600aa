import { type Attachment, ErrorCode, ParleyError } from "@parley/shared"
import { call, isTransient, type RelayHttp, refusalOf } from "./http.js"

/** Which bytes of an attachment: the file itself, or the relay's thumbnail of an image. */
export type AttachmentVariant = "file" | "thumbnail"

/** A signed URL with when it stops working (ms since epoch). */
interface Signed {
  readonly url: string
  readonly thumbnailUrl?: string
  readonly expiresAt: number
}

/** Renew this long before expiry, so that a URL handed out still works when the browser uses it. */
const RENEW_BEFORE_MS = 2 * 60_000

/** Delays before asking again after a transient failure (5xx, 429, no answer): a view should not show an error for a blip. */
const RETRY_DELAYS_MS = [250, 1_000]

/** The relay's attachment id of an attachment it stores, or undefined for anything hosted elsewhere. */
export function relayAttachmentId(attachment: Attachment | string): string | undefined {
  if (typeof attachment === "string") return attachment
  const record = attachment as { kind?: string; id?: unknown }
  return (record.kind === undefined || record.kind === "file") && typeof record.id === "string"
    ? record.id
    : undefined
}

/**
 * Displayable URLs of attachments (for `<img src>`, download links): the
 * relay's short-lived signed URLs (`POST /v1/attachments/{id}/signed-url`,
 * checked against the user's participation), cached until shortly before
 * they expire, one request per attachment however many views ask at once.
 */
export class AttachmentUrls {
  private readonly cache = new Map<string, Signed>()
  private readonly inFlight = new Map<string, Promise<Signed>>()

  constructor(
    private readonly http: RelayHttp,
    private readonly clock: () => number = Date.now,
  ) {}

  /**
   * A URL for `attachment` (or an attachment id). An attachment hosted
   * elsewhere (an external `url`, a link) is returned as it is; an object
   * reference has none (INVALID_ARGUMENT). Rejects with NOT_FOUND when the
   * relay has no such attachment or the user may not see it.
   */
  async url(attachment: Attachment | string, variant: AttachmentVariant = "file"): Promise<string> {
    const id = relayAttachmentId(attachment)
    if (id === undefined) return external(attachment as Attachment, variant)
    const signed = this.fresh(id) ?? (await this.sign(id))
    return pick(signed, variant, id)
  }

  /** The cached URL, when one is fresh: lets a view render at once, without a request. */
  cached(attachment: Attachment | string, variant: AttachmentVariant = "file"): string | undefined {
    const id = relayAttachmentId(attachment)
    if (id === undefined) {
      try {
        return external(attachment as Attachment, variant)
      } catch {
        return undefined
      }
    }
    const signed = this.fresh(id)
    return signed && pick(signed, variant, id)
  }

  /** When the cached URL of `attachment` should be renewed (ms since epoch), if one is cached. */
  renewAt(attachment: Attachment | string): number | undefined {
    const id = relayAttachmentId(attachment)
    const signed = id === undefined ? undefined : this.cache.get(id)
    return signed && signed.expiresAt - RENEW_BEFORE_MS
  }

  private fresh(id: string): Signed | undefined {
    const signed = this.cache.get(id)
    if (signed && signed.expiresAt - RENEW_BEFORE_MS > this.clock()) return signed
    return undefined
  }

  private sign(id: string): Promise<Signed> {
    let pending = this.inFlight.get(id)
    if (!pending) {
      pending = (async () => {
        const response = await signRequest(this.http, id)
        const body = (await response.json()) as { url: string; thumbnailUrl?: string; expiresAt: number }
        const signed: Signed = {
          url: new URL(body.url, this.http.origin).href,
          ...(body.thumbnailUrl ? { thumbnailUrl: new URL(body.thumbnailUrl, this.http.origin).href } : {}),
          // The relay answers in seconds (like the URL's `exp`); milliseconds are accepted too.
          expiresAt: body.expiresAt < 1e12 ? body.expiresAt * 1000 : body.expiresAt,
        }
        this.cache.set(id, signed)
        return signed
      })().finally(() => this.inFlight.delete(id))
      this.inFlight.set(id, pending)
    }
    return pending
  }
}

/** Asks the relay to sign; tries again after a transient failure, a couple of times. */
async function signRequest(http: RelayHttp, id: string): Promise<Response> {
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await call(http, `/v1/attachments/${encodeURIComponent(id)}/signed-url`, {
        method: "POST",
      })
      if (!response.ok) throw await refusalOf(response)
      return response
    } catch (error) {
      const delay = RETRY_DELAYS_MS[attempt]
      if (delay === undefined || !isTransient(error)) throw error
      await new Promise((resolve) => setTimeout(resolve, delay))
    }
  }
}

function pick(signed: Signed, variant: AttachmentVariant, id: string): string {
  if (variant === "file") return signed.url
  if (!signed.thumbnailUrl) throw new ParleyError(ErrorCode.NOT_FOUND, `attachment ${id} has no thumbnail`)
  return signed.thumbnailUrl
}

function external(attachment: Attachment, variant: AttachmentVariant): string {
  const record = attachment as { kind?: string; url?: unknown; thumbnail?: { url?: unknown } }
  if (record.kind === "object" || typeof record.url !== "string")
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "an object reference has no URL")
  if (variant === "thumbnail") {
    if (typeof record.thumbnail?.url === "string") return record.thumbnail.url
    throw new ParleyError(ErrorCode.NOT_FOUND, "the attachment has no thumbnail")
  }
  return record.url
}
