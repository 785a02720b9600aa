import type { Attachment, ChatMessage, LocalFile } from "@parley/client"
import { useAttachmentUrl } from "@parley/react"
import { useEffect, useState } from "react"
import { detail, explain } from "./errors.js"

/** The box a thumbnail is fitted into, in CSS pixels. */
const THUMB_BOX = 240

/** How many times a thumbnail that failed to load is tried again. */
const THUMB_RETRIES = 3

/** "1.2 MB", "340 KB", "12 B". */
export function formatBytes(size: number): string {
  if (size < 1024) return `${size} B`
  if (size < 1024 * 1024) return `${Math.round(size / 1024)} KB`
  return `${(size / (1024 * 1024)).toFixed(1)} MB`
}

/** A file attachment (uploaded to the relay or hosted elsewhere). */
export type FileRecord = Extract<Attachment, { url: string; kind?: "file" }>

const isFile = (a: Attachment): a is FileRecord => a.kind === undefined || a.kind === "file"
const isImage = (a: FileRecord) => a.mimeType?.startsWith("image/") === true && (a.width ?? 0) > 0

/** Width and height that fit `width`×`height` in the thumbnail box, keeping the ratio. */
function fit(width: number, height: number): { width: number; height: number } {
  const scale = Math.min(1, THUMB_BOX / width, THUMB_BOX / height)
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) }
}

/** A message's attachments: images inline (thumbnail first), other files as download links, links, references. */
export function MessageAttachments({
  message,
  view,
}: {
  message: ChatMessage
  view: (attachment: FileRecord) => void
}) {
  if (message.upload) return <PendingFiles message={message} />
  if (message.attachments.length === 0) return null
  return (
    <div className="attachments" data-testid="attachments">
      {message.attachments.map((attachment, i) => {
        const key = `${i}`
        if (attachment.kind === "link")
          return (
            <a
              key={key}
              className="attachment-link"
              href={attachment.url}
              target="_blank"
              rel="noreferrer noopener"
            >
              {attachment.title ?? attachment.url}
            </a>
          )
        if (attachment.kind === "object")
          return (
            <span key={key} className="attachment-object" data-testid="attachment-object">
              {attachment.title ?? `${attachment.objectType} ${attachment.objectId}`}
            </span>
          )
        if (isFile(attachment) && isImage(attachment))
          return <ImageThumbnail key={key} attachment={attachment} open={() => view(attachment)} />
        return <FileLink key={key} attachment={attachment as FileRecord} />
      })}
    </div>
  )
}

/**
 * An image: its box is sized from the dimensions the relay measured before
 * any byte loads, so the list does not jump; the thumbnail fills it, the full
 * image opens on click.
 */
function ImageThumbnail({ attachment, open }: { attachment: FileRecord; open: () => void }) {
  const thumbnail = useAttachmentUrl(attachment, attachment.thumbnail ? "thumbnail" : "file")
  const size = fit(attachment.width ?? THUMB_BOX, attachment.height ?? THUMB_BOX)
  const [loaded, setLoaded] = useState(false)
  // A thumbnail that failed to load (the relay busy, a blip) is asked for again a few times, later each time.
  const [attempt, setAttempt] = useState(0)
  const retry = () => {
    if (attempt < THUMB_RETRIES) setTimeout(() => setAttempt((n) => n + 1), 1_000 * 2 ** attempt)
  }
  return (
    <button
      type="button"
      className="thumbnail"
      data-testid="attachment-image"
      data-loaded={String(loaded)}
      style={{ width: size.width, height: size.height }}
      aria-label={`Open ${attachment.name ?? "image"}`}
      title={thumbnail.error ? detail(thumbnail.error) : attachment.name}
      onClick={open}
    >
      {thumbnail.url && (
        <img
          key={attempt}
          src={thumbnail.url}
          alt={attachment.name ?? "image"}
          width={size.width}
          height={size.height}
          onLoad={() => setLoaded(true)}
          onError={retry}
        />
      )}
      {thumbnail.error && <span className="thumbnail-error">{explain(thumbnail.error)}</span>}
    </button>
  )
}

/** A file that is not shown inline: a download link with its name and size. */
function FileLink({ attachment }: { attachment: FileRecord }) {
  const { url, error } = useAttachmentUrl(attachment)
  const name = attachment.name ?? "file"
  return (
    <a
      className="file-link"
      data-testid="attachment-file"
      href={url}
      download={name}
      aria-disabled={url === undefined}
      title={error ? detail(error) : undefined}
      onClick={(event) => {
        if (!url) event.preventDefault()
      }}
    >
      <span className="file-icon" aria-hidden="true">
        📄
      </span>
      <span className="file-name">{name}</span>
      {attachment.size !== undefined && <span className="file-size">{formatBytes(attachment.size)}</span>}
    </a>
  )
}

/** The files of a message still on this device: local previews, progress, or why it failed. */
function PendingFiles({ message }: { message: ChatMessage }) {
  const upload = message.upload!
  const percent = upload.total > 0 ? Math.floor((upload.loaded / upload.total) * 100) : 100
  return (
    <div className="attachments pending" data-testid="pending-files" data-phase={upload.phase}>
      {upload.files.map((file, i) => (
        <LocalPreview key={`${i}`} file={file} />
      ))}
      {upload.phase !== "failed" && (
        <div
          className="progress"
          data-testid="upload-progress"
          data-loaded={upload.loaded}
          data-total={upload.total}
        >
          <progress max={upload.total || 1} value={upload.loaded} aria-label="Upload progress" />
          <span>{upload.phase === "queued" ? "Waiting to upload" : `Uploading… ${percent}%`}</span>
        </div>
      )}
    </div>
  )
}

function LocalPreview({ file }: { file: LocalFile }) {
  const image = file.mimeType.startsWith("image/") && file.url
  return (
    <div
      className={`local-file${file.refused ? " refused" : ""}`}
      data-testid="local-file"
      title={file.refused ? explain(file.refused) : undefined}
    >
      {image ? (
        <img src={file.url} alt={file.name} className="local-preview" />
      ) : (
        <span className="file-icon" aria-hidden="true">
          📄
        </span>
      )}
      <span className="file-name">{file.name}</span>
      <span className="file-size">{formatBytes(file.size)}</span>
      {file.uploaded && <span className="file-done">✓</span>}
    </div>
  )
}

/** The full image over the page; closes on click or Escape. */
export function ImageViewer({ attachment, close }: { attachment: FileRecord; close: () => void }) {
  const { url, error } = useAttachmentUrl(attachment)
  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      if (event.key === "Escape") close()
    }
    window.addEventListener("keydown", onKey)
    return () => window.removeEventListener("keydown", onKey)
  }, [close])
  return (
    <div
      className="viewer"
      data-testid="image-viewer"
      role="dialog"
      aria-label={attachment.name ?? "Image"}
      onClick={close}
      onKeyDown={() => {}}
    >
      {url ? (
        <img src={url} alt={attachment.name ?? "image"} data-testid="image-full" />
      ) : (
        <p>{error ? explain(error) : "Loading…"}</p>
      )}
    </div>
  )
}

/** Files picked, pasted or dropped, waiting in the composer for Send. */
export function ComposerFiles({
  files,
  remove,
}: {
  files: readonly File[]
  remove: (index: number) => void
}) {
  const [urls, setUrls] = useState<string[]>([])
  useEffect(() => {
    const made = files.map((file) => (file.type.startsWith("image/") ? URL.createObjectURL(file) : ""))
    setUrls(made)
    return () => {
      for (const url of made) if (url) URL.revokeObjectURL(url)
    }
  }, [files])
  if (files.length === 0) return null
  return (
    <ul className="composer-files" data-testid="composer-files">
      {files.map((file, i) => (
        <li key={`${file.name}-${i}`} className="composer-file" data-testid="composer-file">
          {urls[i] ? <img src={urls[i]} alt="" /> : <span aria-hidden="true">📄</span>}
          <span className="file-name">{file.name}</span>
          <span className="file-size">{formatBytes(file.size)}</span>
          <button type="button" className="link" aria-label={`Remove ${file.name}`} onClick={() => remove(i)}>
            ×
          </button>
        </li>
      ))}
    </ul>
  )
}
