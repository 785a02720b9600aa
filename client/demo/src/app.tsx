import type { Conversation } from "@parley/client"
import { useChatClient, useConnectionStatus, useInbox } from "@parley/react"
import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from "react"
import { ConversationList } from "./conversation-list.js"
import { ConversationView } from "./conversation-view.js"
import { explain } from "./errors.js"
import { NewConversation } from "./new-conversation.js"
import { disableNotifications, enableNotifications, pushSupported } from "./notifications.js"
import { UserAvatar, UserName } from "./people.js"
import { ProfileEditor } from "./profile-editor.js"

/** `#c=<id>` names the open conversation, so a reload comes back to it. */
const openFromHash = () => new URLSearchParams(location.hash.slice(1)).get("c") ?? undefined
const subscribeHash = (changed: () => void) => {
  window.addEventListener("hashchange", changed)
  return () => window.removeEventListener("hashchange", changed)
}
const subscribeNetwork = (changed: () => void) => {
  window.addEventListener("online", changed)
  window.addEventListener("offline", changed)
  return () => {
    window.removeEventListener("online", changed)
    window.removeEventListener("offline", changed)
  }
}

/** Opens conversation `id` (or the list, without one). */
export function go(id: string | undefined): void {
  location.hash = id ? `c=${encodeURIComponent(id)}` : ""
}

/**
 * The signed-in app: top bar (user, connection), conversation list, the open
 * conversation. One column on a phone (list or conversation), two on a wide screen.
 */
export function App({ onSignOut }: { onSignOut: () => void | Promise<void> }) {
  const client = useChatClient()
  const openId = useSyncExternalStore(subscribeHash, openFromHash)
  const [composing, setComposing] = useState(false)
  const [editingProfile, setEditingProfile] = useState(false)
  const [toast, setToast] = useState<string>()
  const timer = useRef<ReturnType<typeof setTimeout>>(undefined)
  const { totalUnreadUnmuted, emergency } = useInbox()

  const notify = useCallback((text: string) => {
    setToast(text)
    clearTimeout(timer.current)
    timer.current = setTimeout(() => setToast(undefined), 4000)
  }, [])
  const failed = useCallback((error: unknown) => notify(explain(error)), [notify])

  useEffect(() => {
    document.title = totalUnreadUnmuted > 0 ? `(${totalUnreadUnmuted}) Parley` : "Parley"
  }, [totalUnreadUnmuted])
  useEffect(
    () => client.on("error", ({ error }) => console.warn("parley:", error.code, error.message)),
    [client],
  )

  return (
    <div className="app" data-view={openId ? "conversation" : "list"}>
      <header className="topbar">
        <span className="brand">Parley</span>
        <ConnectionPill />
        <button
          type="button"
          className="user"
          data-testid="current-user"
          title="Edit your profile"
          aria-expanded={editingProfile}
          onClick={() => setEditingProfile(!editingProfile)}
        >
          <UserAvatar user={client.user} />
          <UserName user={client.user} />
        </button>
        {emergency > 0 && (
          <span
            className="sos-pill"
            role="status"
            data-testid="emergency-total"
            title="Unread emergency messages"
          >
            🚨 {emergency}
          </span>
        )}
        <NotificationsToggle failed={failed} notify={notify} />
        <button
          type="button"
          className="link"
          data-testid="sign-out"
          title="Sign out and remove your messages from this browser"
          onClick={() => void onSignOut()}
        >
          Sign out
        </button>
        {editingProfile && <ProfileEditor close={() => setEditingProfile(false)} />}
      </header>
      <main className="layout">
        <aside className="sidebar">
          <div className="sidebar-head">
            <h1>Conversations</h1>
            <button
              type="button"
              className="primary small"
              data-testid="new-conversation"
              onClick={() => setComposing(!composing)}
            >
              New
            </button>
          </div>
          {composing && (
            <NewConversation
              created={(conversation: Conversation) => {
                setComposing(false)
                go(conversation.id)
              }}
              failed={failed}
              cancel={() => setComposing(false)}
            />
          )}
          <ConversationList openId={openId} />
        </aside>
        <section className="pane">
          {openId ? (
            <ConversationView
              key={openId}
              id={openId}
              failed={failed}
              left={() => {
                go(undefined)
                notify("You left the conversation.")
              }}
            />
          ) : (
            <div className="placeholder">
              <p>Pick a conversation, or start a new one.</p>
              <p className="hint">Everything works offline; changes sync when the relay is reachable.</p>
            </div>
          )}
        </section>
      </main>
      <div className="toast" role="status" data-testid="toast" hidden={toast === undefined}>
        {toast}
      </div>
    </div>
  )
}

/** Online / connecting / offline, as the SDK and the browser see it. */
function ConnectionPill() {
  const status = useConnectionStatus()
  const browserOnline = useSyncExternalStore(subscribeNetwork, () => navigator.onLine)
  const shown = browserOnline ? status : "offline"
  return (
    <span
      className="status"
      role="status"
      data-testid="connection-status"
      data-status={shown}
      title={
        shown === "online"
          ? "Connected to the relay"
          : "Not connected: you can keep chatting, messages go out when back online"
      }
    >
      {shown === "online" ? "Online" : shown === "connecting" ? "Connecting…" : "Offline"}
    </span>
  )
}

/** Opt in to (or out of) push notifications on this browser, shown when the browser can have them. */
function NotificationsToggle({
  failed,
  notify,
}: {
  failed: (error: unknown) => void
  notify: (text: string) => void
}) {
  const client = useChatClient()
  const [on, setOn] = useState(() => pushSupported() && Notification.permission === "granted")
  const [busy, setBusy] = useState(false)
  if (!pushSupported()) return null
  return (
    <button
      type="button"
      className="link"
      data-testid="notifications-toggle"
      aria-label={on ? "Turn notifications off" : "Turn notifications on"}
      aria-pressed={on}
      disabled={busy}
      onClick={() => {
        setBusy(true)
        const change = on ? disableNotifications(client) : enableNotifications(client)
        change
          .then(() => {
            setOn(!on)
            notify(
              on ? "Notifications off on this browser." : "Notifications on: you hear of messages when away.",
            )
          })
          .catch(failed)
          .finally(() => setBusy(false))
      }}
    >
      {on ? "🔔" : "🔕"}
      <span className="notify-label">{on ? " Notifications on" : " Notify me"}</span>
    </button>
  )
}
