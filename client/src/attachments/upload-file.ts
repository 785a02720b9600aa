import { type Attachment, ErrorCode } from "@parley/shared"
import { HttpRefusal, type RelayHttp, uploads } from "./http.js"

/** Chunk size when the relay does not say (its default is 1 MiB). */
export const DEFAULT_CHUNK_BYTES = 1024 * 1024

/** What {@link uploadFile} needs to know and to tell about one file. */
export interface FileUpload {
  readonly conversationId: string
  readonly name: string
  readonly mimeType: string
  readonly bytes: Blob
  /** The session of an earlier attempt (after a reload), resumed from where the relay stands. */
  readonly uploadId?: string
  /** The chunk size the relay gave that session (`HEAD` does not say it again). */
  readonly chunkBytes?: number
  /** Called with a new session before any byte is sent to it: store it to resume after a reload. */
  readonly started: (session: { uploadId: string; chunkBytes: number }) => Promise<void> | void
  /** Bytes of this file the relay has, after each chunk. */
  readonly progress: (loaded: number) => void
  /** Stops between chunks (close, discard). */
  readonly signal?: AbortSignal
}

/**
 * Uploads one file in chunks: a new session (`POST`), or the earlier one
 * resumed at the offset the relay reports (`HEAD`); then `PATCH` chunk after
 * chunk. A 409 says where the relay stands: continue from there. A session
 * the relay no longer knows (404: expired) starts over once. Anything else
 * is thrown for the caller to retry or fail on.
 */
export async function uploadFile(http: RelayHttp, file: FileUpload): Promise<Attachment> {
  const size = file.bytes.size
  let uploadId = file.uploadId
  let chunkBytes = file.chunkBytes && file.chunkBytes > 0 ? file.chunkBytes : DEFAULT_CHUNK_BYTES
  let offset = 0
  let restarted = false
  const start = async () => {
    const session = await uploads.create(http, file.conversationId, {
      name: file.name,
      size,
      ...(file.mimeType ? { mimeType: file.mimeType } : {}),
    })
    uploadId = session.uploadId
    chunkBytes = session.chunkBytes > 0 ? session.chunkBytes : DEFAULT_CHUNK_BYTES
    offset = session.offset
    await file.started({ uploadId: session.uploadId, chunkBytes })
  }
  const gone = (error: unknown) => error instanceof HttpRefusal && error.status === 404 && !restarted
  if (uploadId === undefined) await start()
  else {
    try {
      offset = await uploads.offset(http, uploadId)
    } catch (error) {
      if (!gone(error)) throw error
      restarted = true
      await start()
    }
  }
  file.progress(offset)
  let conflicts = 0
  for (;;) {
    if (file.signal?.aborted) throw new HttpRefusal(ErrorCode.UNAVAILABLE, "the upload was stopped", 0)
    const end = Math.min(size, offset + chunkBytes)
    try {
      const result = await uploads.append(http, uploadId!, offset, file.bytes.slice(offset, end))
      if ("attachment" in result) {
        file.progress(size)
        return result.attachment
      }
      // The relay took fewer bytes than sent, or the offset did not move: never loop on one offset.
      if (result.offset <= offset)
        throw new HttpRefusal(ErrorCode.UNAVAILABLE, "the relay did not take the chunk", 502)
      offset = result.offset
      conflicts = 0
    } catch (error) {
      if (error instanceof HttpRefusal && error.status === 408 && error.uploadOffset !== undefined) {
        // The chunk came too slowly (a slow link): the relay kept what arrived. Resume from there,
        // as long as that moves the upload on.
        if (error.uploadOffset <= offset && ++conflicts > 3) throw error
        offset = error.uploadOffset
      } else if (error instanceof HttpRefusal && error.status === 409 && error.uploadOffset !== undefined) {
        // Another tab may be sending the same file: follow it a few times, then leave it to a later retry.
        if (++conflicts > 3) throw new HttpRefusal(ErrorCode.UNAVAILABLE, "the upload keeps moving", 503)
        offset = error.uploadOffset
      } else if (gone(error)) {
        restarted = true
        await start()
      } else throw error
    }
    file.progress(offset)
  }
}
