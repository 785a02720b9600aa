import {
  type ChatMessage,
  DEFAULT_FLEETING_SECONDS,
  type Priority,
  typingText,
  type UserPresence,
} from "@parley/client"
import {
  useChatClient,
  useConnectionStatus,
  useConversation,
  useInbox,
  useMessages,
  usePinned,
  usePresence,
  useProfile,
  useTyping,
  useTypingNames,
} from "@parley/react"
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from "react"
import { go } from "./app.js"
import { ComposerFiles, type FileRecord, ImageViewer } from "./attachments.js"
import { detail, explain } from "./errors.js"
import { type MessageActions, MessageItem } from "./message-item.js"
import { ParticipantsPanel } from "./participants-panel.js"
import { Avatar, presenceText } from "./people.js"
import { mayRename } from "./permissions.js"
import { EmergencyBanner, FleetingSetting, PinnedBar, PriorityPicker } from "./priorities.js"
import { displayTitle, otherOf } from "./titles.js"

/** Messages per page: the latest page first, older ones as the user scrolls up. */
const PAGE = 50

type Mode = { kind: "new" } | { kind: "reply" | "edit"; message: ChatMessage }

/** One open conversation: header, messages, typing indicator, composer, participants panel. */
export function ConversationView({
  id,
  failed,
  left,
}: {
  id: string
  failed: (error: unknown) => void
  left: () => void
}) {
  const client = useChatClient()
  const me = client.user
  const { conversation, state, info, participants, role, unreadCount, unreadEmergency } = useConversation(id)
  const { messages, hasOlder, loadingOlder, loadOlder } = useMessages(conversation, PAGE)
  const typing = useTyping(conversation)
  const pinned = usePinned(conversation)
  const pinnedIds = useMemo(() => new Set<string>(pinned.map((m) => m.id)), [pinned])
  const typingNames = useTypingNames(conversation)
  // A direct conversation is known by the other person's profile (its id names them before it loads).
  const directOther = otherOf(id, me)
  const otherProfile = useProfile(directOther ?? me)
  const present = usePresence(conversation)
  const connection = useConnectionStatus()
  const muted = useInbox().items.some((item) => item.conversationId === id && item.muted)
  const [mode, setMode] = useState<Mode>({ kind: "new" })
  const [text, setText] = useState("")
  const [priority, setPriority] = useState<Priority>("normal")
  const [panel, setPanel] = useState(false)
  const [renaming, setRenaming] = useState<string>()
  /** Files picked, pasted or dropped, sent with the next message. */
  const [files, setFiles] = useState<readonly File[]>([])
  const [viewing, setViewing] = useState<FileRecord>()
  const [dragging, setDragging] = useState(false)
  const picker = useRef<HTMLInputElement>(null)
  const addFiles = useCallback((list: FileList | readonly File[] | null | undefined) => {
    const added = [...(list ?? [])]
    if (added.length > 0) setFiles((current) => [...current, ...added])
  }, [])
  const scroller = useRef<HTMLDivElement>(null)
  const input = useRef<HTMLTextAreaElement>(null)
  /** Scroll height before older messages were added above: keeps what the user looks at in place. */
  const anchor = useRef<number | undefined>(undefined)
  const atBottom = useRef(true)
  useEffect(() => input.current?.focus(), [])

  const presence = useMemo(() => {
    const users = new Map<string, UserPresence>(present.map((p) => [p.user, p]))
    // The SDK reports others; the user is online while connected and showing their presence.
    if (connection === "online" && client.presenceVisible)
      users.set(me, { user: me as never, status: "online" })
    return users
  }, [present, connection, me, client])

  useEffect(() => {
    if (!conversation) return
    conversation.ready().catch(() => {}) // the state says why; shown below
    return conversation.on("error", ({ error }) => failed(error))
  }, [conversation, failed])

  // Reading happens when the conversation is on screen: move the read marker.
  useEffect(() => {
    if (!conversation) return
    const read = () => {
      if (document.visibilityState !== "visible" || conversation.state.state !== "ready") return
      if (!conversation.role || conversation.unreadCount === 0) return
      try {
        conversation.markRead()
      } catch (error) {
        failed(error)
      }
    }
    read()
    document.addEventListener("visibilitychange", read)
    window.addEventListener("focus", read)
    return () => {
      document.removeEventListener("visibilitychange", read)
      window.removeEventListener("focus", read)
    }
  }, [conversation, unreadCount, failed])

  useLayoutEffect(() => {
    const element = scroller.current
    if (!element) return
    if (anchor.current !== undefined) {
      element.scrollTop += element.scrollHeight - anchor.current
      anchor.current = undefined
    } else if (atBottom.current || messages.at(-1)?.author === me) {
      element.scrollTop = element.scrollHeight
    }
  }, [messages, me])

  const older = useCallback(() => {
    if (!hasOlder || loadingOlder) return
    anchor.current = scroller.current?.scrollHeight
    loadOlder().catch((error: unknown) => {
      anchor.current = undefined
      failed(error)
    })
  }, [hasOlder, loadingOlder, loadOlder, failed])

  const attempt = useCallback(
    (operation: () => void): boolean => {
      try {
        operation()
        return true
      } catch (error) {
        failed(error)
        return false
      }
    },
    [failed],
  )

  const actions = useMemo<MessageActions | undefined>(
    () =>
      conversation && {
        reply: (message) => {
          setMode({ kind: "reply", message })
          input.current?.focus()
        },
        edit: (message) => {
          setMode({ kind: "edit", message })
          setText(message.body)
          input.current?.focus()
        },
        remove: (message) => attempt(() => conversation.deleteMessage(message.id)),
        toggleReaction: (message, emoji) =>
          attempt(() => {
            if (message.reactions[emoji]?.includes(me as never)) conversation.unreact(message.id, emoji)
            else conversation.react(message.id, emoji)
          }),
        jumpTo: (target) => {
          const element = scroller.current?.querySelector(`[data-message-id="${CSS.escape(target)}"]`)
          element?.scrollIntoView({ block: "center", behavior: "smooth" })
          element?.classList.add("flash")
          setTimeout(() => element?.classList.remove("flash"), 1200)
        },
        viewImage: (attachment) => setViewing(attachment),
        retry: (message) => attempt(() => conversation.retry(message.id)),
        discard: (message) => attempt(() => conversation.discard(message.id)),
      },
    [conversation, attempt, me],
  )
  const byId = useMemo(() => new Map(messages.map((m) => [m.id, m])), [messages])

  if (!conversation || !actions) return null
  const group = info?.kind === "group"
  const others = participants.filter((p) => p.user !== me)
  const title = info
    ? displayTitle(
        {
          conversationId: info.id,
          title: info.title,
          participants: {
            first: participants.map((p) => p.user),
            names: Object.fromEntries(participants.map((p) => [p.user, client.profileOf(p.user).name])),
          },
        },
        me,
      )
    : displayTitle({ conversationId: id, title: "" }, me)
  const shownTitle = directOther && !info?.title ? otherProfile.name : title
  const other = !group && others.length === 1 ? others[0]!.user : undefined
  const around = (user: string) => (presence.get(user)?.status ?? "offline") !== "offline"
  const subtitle = !info
    ? "Loading…"
    : other
      ? `Direct conversation · ${presenceText(presence.get(other))}`
      : `${participants.length} participants · ${others.filter((p) => around(p.user)).length} online`
  const unavailable = state.state === "unavailable" ? state.error : undefined
  // Not on this device yet (never opened here) and no relay to load it from: nothing can be written to it
  // until it loads (the SDK refuses a send before `ready()`), so the composer waits too.
  const loading = state.state === "loading"

  const submit = () => {
    const body = text.trim()
    const withFiles = mode.kind !== "edit" && files.length > 0
    // Kept in the box until the conversation loads (see `loading`): before, it was sent into an error.
    if ((!body && !withFiles) || loading) return
    const ok = attempt(() => {
      if (mode.kind === "edit") conversation.edit(mode.message.id, body)
      else
        conversation.send({
          body,
          ...(withFiles ? { files } : {}),
          ...(mode.kind === "reply" ? { replyTo: mode.message.id } : {}),
          ...(priority !== "normal" ? { priority } : {}),
        })
    })
    if (!ok) return
    atBottom.current = true
    setText("")
    if (withFiles) setFiles([])
    setPriority("normal")
    setMode({ kind: "new" })
  }

  return (
    // biome-ignore lint/a11y/noStaticElementInteractions: dropping files anywhere on the conversation attaches them; the attach button is the accessible way.
    <section
      className={`conversation${panel ? " with-panel" : ""}${dragging ? " dragging" : ""}`}
      data-testid="conversation-view"
      data-conversation-id={id}
      onDragOver={(event) => {
        if (!event.dataTransfer.types.includes("Files") || unavailable) return
        event.preventDefault()
        event.dataTransfer.dropEffect = "copy"
        setDragging(true)
      }}
      onDragLeave={(event) => {
        if (!event.currentTarget.contains(event.relatedTarget as Node | null)) setDragging(false)
      }}
      onDrop={(event) => {
        setDragging(false)
        if (event.dataTransfer.files.length === 0 || unavailable) return
        event.preventDefault()
        addFiles(event.dataTransfer.files)
        input.current?.focus()
      }}
    >
      <header className="conversation-header">
        <button
          type="button"
          className="icon back"
          data-testid="back"
          aria-label="Back"
          onClick={() => go(undefined)}
        >
          ‹
        </button>
        <Avatar
          name={shownTitle}
          picture={other ? otherProfile.picture : undefined}
          presence={other ? (presence.get(other)?.status ?? "offline") : undefined}
        />
        {renaming !== undefined ? (
          <form
            className="heading rename"
            data-testid="rename-form"
            onSubmit={(event) => {
              event.preventDefault()
              const next = renaming.trim()
              if (next && next !== info?.title) attempt(() => conversation.rename(next))
              setRenaming(undefined)
            }}
          >
            <input
              aria-label="Conversation title"
              data-testid="rename-input"
              ref={(element) => element?.focus()}
              value={renaming}
              maxLength={200}
              onChange={(event) => setRenaming(event.target.value)}
              onKeyDown={(event) => {
                if (event.key === "Escape") setRenaming(undefined)
              }}
            />
            <button type="submit" className="small primary" data-testid="rename-save">
              Save
            </button>
          </form>
        ) : (
          <div className="heading">
            <h2 data-testid="conversation-title">{shownTitle}</h2>
            <p className="subtitle" data-testid="conversation-subtitle">
              {subtitle}
            </p>
          </div>
        )}
        {info && mayRename(info.kind, role) && renaming === undefined && (
          <button
            type="button"
            className="small"
            data-testid="rename"
            onClick={() => setRenaming(info.title)}
          >
            Rename
          </button>
        )}
        <button
          type="button"
          className="small"
          data-testid="mute-toggle"
          data-muted={String(muted)}
          onClick={() => attempt(() => client.inbox.mute(id, !muted))}
        >
          {muted ? "Unmute" : "Mute"}
        </button>
        <button
          type="button"
          className="small"
          data-testid="participants-toggle"
          aria-expanded={panel}
          onClick={() => setPanel(!panel)}
        >
          {panel ? "Close" : "People"}
        </button>
      </header>
      <div className="conversation-body">
        <div className="chat-column">
          {panel && info && (
            <FleetingSetting conversation={conversation} info={info} role={role} failed={failed} />
          )}
          <PinnedBar
            conversation={conversation}
            me={me}
            role={role}
            jumpTo={actions.jumpTo}
            failed={failed}
          />
          <EmergencyBanner
            ids={unreadEmergency}
            jumpTo={actions.jumpTo}
            read={(upTo) => attempt(() => conversation.markRead(upTo))}
          />
          <div
            className="scroller"
            ref={scroller}
            onScroll={(event) => {
              const element = event.currentTarget
              atBottom.current = element.scrollHeight - element.scrollTop - element.clientHeight < 40
              if (element.scrollTop < 80) older()
            }}
          >
            {hasOlder && (
              <button
                type="button"
                className="link older"
                data-testid="load-older"
                disabled={loadingOlder}
                onClick={older}
              >
                {loadingOlder ? "Loading older messages…" : "Older messages"}
              </button>
            )}
            <ol className="messages" data-testid="message-list" aria-live="polite">
              {messages.length === 0 ? (
                <li className="notice" data-testid="no-messages">
                  No messages yet. Say hello!
                </li>
              ) : (
                messages.map((message) => (
                  <MessageItem
                    key={message.id}
                    message={message}
                    quoted={
                      message.replyTo
                        ? (byId.get(message.replyTo) ?? conversation.message(message.replyTo))
                        : undefined
                    }
                    me={me}
                    role={role}
                    group={group}
                    actions={actions}
                    fleetingSeconds={info?.fleetingSeconds ?? DEFAULT_FLEETING_SECONDS}
                    pinned={pinnedIds.has(message.id)}
                  />
                ))
              )}
            </ol>
          </div>
          {loading && typeof navigator !== "undefined" && !navigator.onLine && (
            <p className="banner" data-testid="conversation-not-here">
              This conversation is not on this device yet: it opens once you are back online.
            </p>
          )}
          {unavailable && (
            <p className="banner" data-testid="conversation-unavailable" title={detail(unavailable)}>
              This conversation is unavailable: {explain(unavailable)}.
            </p>
          )}
          <div className="typing" data-testid="typing-indicator" data-users={typing.join(",")}>
            {typingNames.length === 0 ? "" : `${typingText(typingNames)}…`}
          </div>
          <footer className="composer">
            {mode.kind !== "new" && (
              <div className="composer-context" data-testid="composer-context" data-mode={mode.kind}>
                <span className="context-text">
                  {mode.kind === "edit"
                    ? "Editing"
                    : `Replying to ${mode.message.authorName ?? mode.message.author}: `}
                  {mode.kind === "reply" && <em>{mode.message.body.slice(0, 80)}</em>}
                </span>
                <button
                  type="button"
                  className="link"
                  data-testid="composer-cancel"
                  onClick={() => {
                    if (mode.kind === "edit") setText("")
                    setMode({ kind: "new" })
                  }}
                >
                  Cancel
                </button>
              </div>
            )}
            <ComposerFiles files={files} remove={(index) => setFiles(files.filter((_, i) => i !== index))} />
            <form
              className="composer-form"
              onSubmit={(event) => {
                event.preventDefault()
                submit()
              }}
            >
              <input
                ref={picker}
                type="file"
                multiple
                hidden
                data-testid="composer-file-input"
                onChange={(event) => {
                  addFiles(event.target.files)
                  event.target.value = ""
                }}
              />
              <button
                type="button"
                className="icon attach"
                data-testid="composer-attach"
                aria-label="Attach files"
                title="Attach files"
                disabled={unavailable !== undefined || mode.kind === "edit"}
                onClick={() => picker.current?.click()}
              >
                📎
              </button>
              {mode.kind !== "edit" && (
                <PriorityPicker
                  value={priority}
                  onChange={setPriority}
                  disabled={unavailable !== undefined}
                />
              )}
              <textarea
                ref={input}
                onPaste={(event) => {
                  if (event.clipboardData.files.length === 0 || mode.kind === "edit") return
                  event.preventDefault()
                  addFiles(event.clipboardData.files)
                }}
                rows={1}
                placeholder="Message"
                data-testid="composer-input"
                aria-label="Message"
                disabled={unavailable !== undefined}
                value={text}
                onChange={(event) => {
                  setText(event.target.value)
                  if (event.target.value.trim() && mode.kind !== "edit") conversation.typing()
                  event.target.style.height = "auto"
                  event.target.style.height = `${Math.min(event.target.scrollHeight, 140)}px`
                }}
                onKeyDown={(event) => {
                  if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
                    event.preventDefault()
                    submit()
                  } else if (event.key === "Escape") setMode({ kind: "new" })
                }}
              />
              <button
                type="submit"
                className="primary"
                data-testid="composer-send"
                disabled={unavailable !== undefined || loading}
              >
                {mode.kind === "edit" ? "Save" : "Send"}
              </button>
            </form>
          </footer>
        </div>
        {viewing && <ImageViewer attachment={viewing} close={() => setViewing(undefined)} />}
        {panel && info && (
          <ParticipantsPanel
            conversation={conversation}
            info={info}
            participants={participants}
            role={role}
            me={me}
            presence={presence}
            failed={failed}
            left={left}
          />
        )}
      </div>
    </section>
  )
}
