import type { ChatMessage, MessageStatus, Role } from "@parley/client"
import { useChatClient } from "@parley/react"
import { memo, useState } from "react"
import { type FileRecord, MessageAttachments } from "./attachments.js"
import { detail, explain } from "./errors.js"
import { formatTime } from "./format.js"
import { Avatar } from "./people.js"
import { mayDelete, mayEdit } from "./permissions.js"
import { FleetingCountdown } from "./priorities.js"

/** The emoji offered for reactions. */
export const REACTIONS = ["👍", "❤️", "😂", "🎉"] as const

/** Each status with its own glyph AND word, so that they are told apart without relying on colour. */
const STATUS: Record<MessageStatus, { glyph: string; word: string; label: string }> = {
  pending: { glyph: "◷", word: "", label: "Pending: not sent yet" },
  sent: { glyph: "✓", word: "", label: "Sent: saved by the relay" },
  delivered: { glyph: "✓✓", word: "", label: "Delivered" },
  read: { glyph: "✓✓", word: "Read", label: "Read" },
  failed: { glyph: "⚠", word: "", label: "Failed" },
}

/** What a message row does on the user's request; stable functions, so that rows stay memoised. */
export interface MessageActions {
  reply(message: ChatMessage): void
  edit(message: ChatMessage): void
  remove(message: ChatMessage): void
  toggleReaction(message: ChatMessage, emoji: string): void
  jumpTo(id: string): void
  /** Shows an image attachment full size. */
  viewImage(attachment: FileRecord): void
  /** Sends again a message whose upload failed (without the refused files). */
  retry(message: ChatMessage): void
  /** Drops a message whose upload failed or has not finished. */
  discard(message: ChatMessage): void
}

interface MessageItemProps {
  readonly message: ChatMessage
  /** The message this one replies to, when this replica has it. */
  readonly quoted: ChatMessage | undefined
  readonly me: string
  readonly role: Role | undefined
  readonly group: boolean
  readonly actions: MessageActions
  /** The conversation's fleeting lifetime, for the countdown of fleeting messages. */
  readonly fleetingSeconds: number
  /** Whether the message is pinned now (sent sticky and not unpinned). */
  readonly pinned: boolean
}

/**
 * One message: bubble, reply quote, reactions, status ticks and (on tap) its
 * actions. Memoised: it re-renders only when its own message (or the one it
 * quotes) changed, never because another message did.
 */
export const MessageItem = memo(function MessageItem({
  message,
  quoted,
  me,
  role,
  group,
  actions,
  fleetingSeconds,
  pinned,
}: MessageItemProps) {
  const client = useChatClient()
  const [open, setOpen] = useState(false)
  const mine = message.author === me
  const deleted = message.deleted !== undefined
  const reactions = Object.entries(message.reactions).filter(([, users]) => users.length > 0)
  const act = (action: () => void) => () => {
    setOpen(false)
    action()
  }
  const status = message.status && STATUS[message.status]
  return (
    <li
      className={`message${mine ? " mine" : ""}${deleted ? " deleted" : ""}${open ? " open" : ""}${deleted ? "" : ` priority-${message.priority}`}${pinned ? " pinned" : ""}`}
      data-testid="message"
      data-priority={message.priority}
      data-message-id={message.id}
      data-author={message.author}
      data-status={message.status}
    >
      {/* biome-ignore lint/a11y/useSemanticElements: the bubble holds buttons (the quote), which a <button> may not. */}
      <div
        className="bubble"
        role="button"
        tabIndex={0}
        aria-expanded={open}
        onClick={(event) => {
          if (!(event.target as Element).closest("button, a") && !deleted && !message.upload) setOpen(!open)
        }}
        onKeyDown={(event) => {
          if (event.key === "Enter" && !deleted) setOpen(!open)
        }}
      >
        {!mine && group && (
          <span className="author-row">
            <Avatar name={message.authorName ?? message.author} picture={message.authorPicture} />
            <span className="author" data-testid="message-author">
              {message.authorName ?? message.author}
            </span>
          </span>
        )}
        {!deleted && message.priority === "emergency" && <span className="priority-tag">🚨 Emergency</span>}
        {!deleted && pinned && <span className="priority-tag">📌 Pinned</span>}
        {message.replyTo && !deleted && (
          <button
            type="button"
            className="quote"
            data-testid="message-quote"
            onClick={() => actions.jumpTo(message.replyTo!)}
          >
            {quoted && <strong>{quoted.authorName ?? quoted.author}</strong>}
            <span className="quote-text">
              {!quoted ? "Earlier message" : quoted.deleted ? "Message deleted" : quoted.body}
            </span>
          </button>
        )}
        <p className="body" data-testid="message-body">
          {deleted ? <em>Message deleted</em> : message.body}
        </p>
        {!deleted && <MessageAttachments message={message} view={actions.viewImage} />}
        <span className="meta">
          {!deleted && message.priority === "fleeting" && (
            <FleetingCountdown message={message} seconds={fleetingSeconds} />
          )}
          {message.editedAt && !deleted && <span className="edited">edited</span>}
          <time dateTime={new Date(message.createdAt).toISOString()}>{formatTime(message.createdAt)}</time>
          {status && (
            <span
              className={`ticks ${message.status}`}
              role="img"
              data-testid="message-status"
              title={status.label}
              aria-label={status.label}
            >
              <span className="glyph">{status.glyph}</span>
              {status.word && <span className="word">{status.word}</span>}
            </span>
          )}
        </span>
      </div>
      {message.status === "failed" && (
        <p
          className="failure"
          data-testid="message-error"
          title={message.error ? detail(message.error) : undefined}
        >
          Not sent: {message.error ? explain(message.error) : "refused by the relay"}
          {message.upload && (
            <>
              {" "}
              <button
                type="button"
                className="link"
                data-testid="upload-retry"
                title="Send again, without the files the relay refused"
                onClick={() => actions.retry(message)}
              >
                Retry
              </button>{" "}
              <button
                type="button"
                className="link"
                data-testid="upload-discard"
                onClick={() => actions.discard(message)}
              >
                Discard
              </button>
            </>
          )}
        </p>
      )}
      {reactions.length > 0 && !deleted && (
        <div className="reactions">
          {reactions.map(([emoji, users]) => (
            <button
              key={emoji}
              type="button"
              className={`chip${users.includes(me as never) ? " own" : ""}`}
              data-testid="reaction"
              data-emoji={emoji}
              title={users.map((user) => client.profileOf(user).name).join(", ")}
              onClick={() => actions.toggleReaction(message, emoji)}
            >
              {emoji} {users.length}
            </button>
          ))}
        </div>
      )}
      {!deleted && open && (
        <div className="actions">
          {role &&
            REACTIONS.map((emoji) => (
              <button
                key={emoji}
                type="button"
                data-testid="react"
                data-emoji={emoji}
                aria-label={`React ${emoji}`}
                onClick={act(() => actions.toggleReaction(message, emoji))}
              >
                {emoji}
              </button>
            ))}
          {role && (
            <button type="button" data-testid="message-reply" onClick={act(() => actions.reply(message))}>
              Reply
            </button>
          )}
          {mayEdit(me, message.author, role) && (
            <button type="button" data-testid="message-edit" onClick={act(() => actions.edit(message))}>
              Edit
            </button>
          )}
          {mayDelete(me, message.author, role) && (
            <button
              type="button"
              className="danger"
              data-testid="message-delete"
              onClick={act(() => actions.remove(message))}
            >
              Delete
            </button>
          )}
        </div>
      )}
    </li>
  )
})
