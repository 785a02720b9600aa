import { type Attachment, type ParleyError, toParleyError } from "@parley/shared"
import type { AttachmentVariant } from "../attachments/attachment-urls.js"
import type { ChatClient } from "../client.js"
import { BaseStore, type SnapshotStore } from "./snapshot-store.js"

/** What {@link attachmentUrlStore} holds: the URL once known, or why there is none. */
export interface AttachmentUrlSnapshot {
  readonly url: string | undefined
  /** Why the URL could not be had (NOT_FOUND: not allowed or gone; UNAVAILABLE: offline, retried when online). */
  readonly error: ParleyError | undefined
}

const NONE: AttachmentUrlSnapshot = { url: undefined, error: undefined }

/**
 * A displayable URL of an attachment as a store (`ChatClient.attachmentUrl`):
 * fetched while someone listens, renewed before it expires, fetched again
 * when the client comes back online after failing offline.
 */
export function attachmentUrlStore(
  client: ChatClient,
  attachment: Attachment | string,
  variant: AttachmentVariant = "file",
): SnapshotStore<AttachmentUrlSnapshot> {
  let error: ParleyError | undefined
  return new (class extends BaseStore<AttachmentUrlSnapshot> {
    protected attach(changed: () => void) {
      let timer: ReturnType<typeof setTimeout> | undefined
      let live = true
      const load = () => {
        clearTimeout(timer)
        client.attachmentUrl(attachment, variant).then(
          () => {
            error = undefined
            if (!live) return
            changed()
            const renewAt = client.attachmentUrlRenewsAt(attachment)
            // Renewed a little before the cached URL would stop being handed out.
            if (renewAt !== undefined) timer = setTimeout(load, Math.max(1_000, renewAt - Date.now() + 1))
          },
          (failure: unknown) => {
            error = toParleyError(failure)
            if (live) changed()
          },
        )
      }
      load()
      const offStatus = client.on("status", ({ status }) => {
        if (status === "online" && error) load()
      })
      return () => {
        live = false
        clearTimeout(timer)
        offStatus()
      }
    }
    protected compute(previous: AttachmentUrlSnapshot | undefined): AttachmentUrlSnapshot {
      const url = client.cachedAttachmentUrl(attachment, variant)
      const next = url === undefined && error === undefined ? NONE : { url, error: url ? undefined : error }
      return previous && previous.url === next.url && previous.error === next.error ? previous : next
    }
  })()
}
