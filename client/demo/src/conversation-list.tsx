import type { InboxItem } from "@parley/client"
import { useChatClient, useInbox } from "@parley/react"
import { memo } from "react"
import { go } from "./app.js"
import { formatTime } from "./format.js"
import { Avatar, displayName } from "./people.js"
import { displayTitle } from "./titles.js"

/**
 * The user's conversations from the SDK's inbox: relay-maintained (a
 * conversation the user was added to elsewhere appears, with unread counts and
 * previews), a local replica (there offline too), with the user's own pending
 * changes laid over it.
 */
export function ConversationList({ openId }: { openId: string | undefined }) {
  const { items } = useInbox()
  const me = useChatClient().user
  const visible = items.filter((item) => !item.deleted)
  return (
    <ul className="conversation-list" data-testid="conversation-list">
      {visible.length === 0 ? (
        <li className="empty" data-testid="no-conversations">
          No conversations yet.
        </li>
      ) : (
        visible.map((item) => (
          <Row key={item.conversationId} item={item} me={me} active={item.conversationId === openId} />
        ))
      )}
    </ul>
  )
}

/** One row; memoised on its inbox item, which keeps its identity while it does not change. */
const Row = memo(function Row({ item, me, active }: { item: InboxItem; me: string; active: boolean }) {
  const title = displayTitle(item, me)
  const last = item.lastMessage
  const preview = last
    ? `${last.author === me ? "You" : displayName(last.author)}: ${last.deleted ? "message deleted" : last.text}`
    : ""
  return (
    <li>
      <button
        type="button"
        className={`conversation-item${active ? " active" : ""}${item.unread > 0 ? " unread" : ""}${item.emergency ? " emergency" : ""}`}
        data-testid="conversation-item"
        data-conversation-id={item.conversationId}
        aria-current={active ? "true" : undefined}
        onClick={() => go(item.conversationId)}
      >
        <Avatar name={title} />
        <span className="summary">
          <span className="line">
            <span className="title" data-testid="conversation-item-title">
              {title}
            </span>
            {item.muted && (
              <span className="muted-label" data-testid="muted">
                muted
              </span>
            )}
            <time className="when">{last ? formatTime(item.lastActivityAt) : ""}</time>
          </span>
          <span className="line">
            <span className="preview" data-testid="conversation-preview" title={preview}>
              {preview}
            </span>
            {item.emergency && item.emergency.length > 0 && (
              <span
                className="badge emergency"
                data-testid="emergency-badge"
                title={`${item.emergency.length} unread emergency message(s)`}
              >
                🚨 {item.emergency.length}
              </span>
            )}
            {item.unread > 0 && (
              <span className="badge" data-testid="unread-badge" title={`${item.unread} unread`}>
                {item.unread}
              </span>
            )}
          </span>
        </span>
      </button>
    </li>
  )
})
