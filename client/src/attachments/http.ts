import { type Attachment, ErrorCode, ParleyError } from "@parley/shared"

/** How the SDK reaches the relay's HTTP API: its origin, the user's token, and `fetch` (injectable for tests). */
export interface RelayHttp {
  readonly origin: string
  readonly token: () => Promise<string>
  readonly fetch: typeof fetch
}

/** A refusal of an attachments request: the typed error plus the HTTP status that decides what to do next. */
export class HttpRefusal extends ParleyError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly status: number,
    /** The relay's `Upload-Offset`, when it said where an upload stands (409). */
    readonly uploadOffset?: number,
    /** How long the relay asked to wait (`Retry-After`, 429 and 503), in ms. */
    readonly retryAfterMs?: number,
  ) {
    super(code, message)
  }
}

/** The code for a status the relay answered without a problem document (or with an unknown code). */
function codeOf(status: number): ErrorCode {
  if (status === 401) return ErrorCode.UNAUTHORIZED
  if (status === 403) return ErrorCode.FORBIDDEN
  if (status === 404) return ErrorCode.NOT_FOUND
  if (status === 408) return ErrorCode.TIMEOUT
  if (status === 409) return ErrorCode.CONFLICT
  if (status === 413) return ErrorCode.TOO_LARGE
  if (status === 400 || status === 415 || status === 422) return ErrorCode.INVALID_ARGUMENT
  if (status === 429) return ErrorCode.RATE_LIMITED
  return ErrorCode.UNAVAILABLE
}

/** The typed error of a refused request (RFC 9457 problem details with Parley's `code`, when the relay sent them). */
export async function refusalOf(response: Response): Promise<HttpRefusal> {
  const problem = (await response.json().catch(() => undefined)) as
    | { code?: string; detail?: string; title?: string }
    | undefined
  const code = (Object.values(ErrorCode) as string[]).includes(problem?.code ?? "")
    ? (problem!.code as ErrorCode)
    : codeOf(response.status)
  const offset = Number(response.headers.get("upload-offset") ?? Number.NaN)
  const retryAfter = Number(response.headers.get("retry-after") ?? Number.NaN)
  return new HttpRefusal(
    code,
    problem?.detail ?? problem?.title ?? `the relay answered ${response.status}`,
    response.status,
    Number.isSafeInteger(offset) && offset >= 0 ? offset : undefined,
    Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter * 1000 : undefined,
  )
}

/** A request that never got an answer (offline, DNS, reset): always worth trying again. */
export function networkFailure(error: unknown): HttpRefusal {
  const message = error instanceof Error ? error.message : String(error)
  return new HttpRefusal(ErrorCode.UNAVAILABLE, `the relay could not be reached: ${message}`, 0)
}

/**
 * Whether trying the same request again later may succeed: no answer, the
 * relay overloaded or failing (5xx, 429), or a token that expired (the next
 * try gets a fresh one). Everything else (403, 413, 415, 400) is the
 * request's own fault and fails for good.
 */
export function isTransient(error: unknown): boolean {
  if (!(error instanceof HttpRefusal)) return false
  const { status } = error
  return status === 0 || status === 401 || status === 408 || status === 429 || status >= 500
}

/** Calls the relay with the user's token; a network failure becomes a retryable {@link HttpRefusal}. */
export async function call(http: RelayHttp, path: string, init: RequestInit = {}): Promise<Response> {
  let token: string
  try {
    token = await http.token()
  } catch (error) {
    // No token now (offline token endpoint): like no network.
    throw networkFailure(error)
  }
  const headers = new Headers(init.headers)
  headers.set("authorization", `Bearer ${token}`)
  try {
    return await http.fetch(`${http.origin}${path}`, { ...init, headers })
  } catch (error) {
    throw networkFailure(error)
  }
}

/** What the relay answers when an upload session starts. */
export interface UploadSession {
  readonly uploadId: string
  readonly offset: number
  readonly size: number
  readonly chunkBytes: number
  readonly expiresAt?: number
}

/** The relay's upload routes (`/v1/conversations/{id}/uploads`, `/v1/uploads/{id}`), one request each. */
export const uploads = {
  /** Starts an upload of `size` bytes into `conversationId`. */
  async create(
    http: RelayHttp,
    conversationId: string,
    file: { name: string; size: number; mimeType?: string },
  ): Promise<UploadSession> {
    const response = await call(http, `/v1/conversations/${encodeURIComponent(conversationId)}/uploads`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        name: file.name,
        size: file.size,
        ...(file.mimeType ? { mimeType: file.mimeType } : {}),
      }),
    })
    if (!response.ok) throw await refusalOf(response)
    return (await response.json()) as UploadSession
  },

  /** Where an upload stands: the bytes the relay holds. */
  async offset(http: RelayHttp, uploadId: string): Promise<number> {
    const response = await call(http, `/v1/uploads/${encodeURIComponent(uploadId)}`, { method: "HEAD" })
    if (!response.ok) throw await refusalOf(response)
    const offset = Number(response.headers.get("upload-offset"))
    if (!Number.isSafeInteger(offset) || offset < 0)
      throw new HttpRefusal(ErrorCode.UNAVAILABLE, "the relay did not say where the upload stands", 502)
    return offset
  },

  /**
   * Sends `chunk` at `offset`: the new offset while the upload is incomplete,
   * or the attachment once the relay has the last byte.
   */
  async append(
    http: RelayHttp,
    uploadId: string,
    offset: number,
    chunk: Blob,
  ): Promise<{ readonly offset: number } | { readonly attachment: Attachment }> {
    const response = await call(http, `/v1/uploads/${encodeURIComponent(uploadId)}`, {
      method: "PATCH",
      headers: { "upload-offset": String(offset), "content-type": "application/offset+octet-stream" },
      body: chunk,
    })
    if (response.status === 201 || response.status === 200) {
      const body = (await response.json()) as { attachment?: Attachment }
      if (!body.attachment)
        throw new HttpRefusal(
          ErrorCode.UNAVAILABLE,
          "the relay finished the upload without an attachment",
          502,
        )
      return { attachment: body.attachment }
    }
    if (!response.ok) throw await refusalOf(response)
    const next = Number(response.headers.get("upload-offset"))
    return { offset: Number.isSafeInteger(next) ? next : offset + chunk.size }
  },
}
