import {
  type ChatMessage,
  type Conversation,
  type ConversationInfo,
  canUnpinMessage,
  canUpdateConversation,
  DEFAULT_FLEETING_SECONDS,
  type Priority,
  type Role,
  type UserId,
} from "@parley/client"
import { usePinned } from "@parley/react"
import { useEffect, useState } from "react"

// What message priorities look like in the demo: the pinned bar, the emergency
// banner, the composer's priority picker, fleeting countdowns and the
// conversation's fleeting setting.

/** The composer's choices, with what each does. */
const CHOICES: { value: Priority; label: string; hint: string }[] = [
  { value: "normal", label: "Normal", hint: "An ordinary message" },
  { value: "sticky", label: "📌 Pin", hint: "Pinned for everyone until unpinned" },
  { value: "emergency", label: "🚨 Emergency", hint: "Bypasses mutes; flagged until read" },
  { value: "fleeting", label: "⏳ Fleeting", hint: "Disappears for everyone after a while" },
]

/** The composer's priority picker. */
export function PriorityPicker({
  value,
  onChange,
  disabled,
}: {
  value: Priority
  onChange: (priority: Priority) => void
  disabled: boolean
}) {
  return (
    <select
      className={`priority-picker ${value}`}
      data-testid="priority-picker"
      aria-label="Priority"
      title={CHOICES.find((c) => c.value === value)?.hint}
      value={value}
      disabled={disabled}
      onChange={(event) => onChange(event.target.value as Priority)}
    >
      {CHOICES.map((choice) => (
        <option key={choice.value} value={choice.value} title={choice.hint}>
          {choice.label}
        </option>
      ))}
    </select>
  )
}

/** The pinned messages above the list: tap one to see it; unpin for its author, owners and admins. */
export function PinnedBar({
  conversation,
  me,
  role,
  jumpTo,
  failed,
}: {
  conversation: Conversation
  me: string
  role: Role | undefined
  jumpTo: (id: string) => void
  failed: (error: unknown) => void
}) {
  const pinned = usePinned(conversation)
  if (pinned.length === 0) return null
  return (
    <ul className="pinned-bar" data-testid="pinned-bar" aria-label="Pinned messages">
      {pinned.map((message) => (
        <li key={message.id} data-testid="pinned" data-message-id={message.id}>
          <button type="button" className="link pinned-text" onClick={() => jumpTo(message.id)}>
            📌 <strong>{message.authorName ?? message.author}</strong>: {message.body}
          </button>
          {canUnpinMessage(me as UserId, role, message.author).allowed && (
            <button
              type="button"
              className="small"
              data-testid="unpin"
              onClick={() => {
                try {
                  conversation.unpin(message.id)
                } catch (error) {
                  failed(error)
                }
              }}
            >
              Unpin
            </button>
          )}
        </li>
      ))}
    </ul>
  )
}

/** A red banner while emergency messages are unread; "Show" goes to the first and reads up to it. */
export function EmergencyBanner({
  ids,
  jumpTo,
  read,
}: {
  ids: readonly string[]
  jumpTo: (id: string) => void
  read: (id: string) => void
}) {
  if (ids.length === 0) return null
  return (
    <p className="emergency-banner" role="alert" data-testid="emergency-banner">
      🚨 {ids.length === 1 ? "An emergency message is" : `${ids.length} emergency messages are`} unread
      <button
        type="button"
        className="small"
        data-testid="emergency-show"
        onClick={() => {
          jumpTo(ids[0]!)
          read(ids.at(-1)!)
        }}
      >
        Show
      </button>
    </p>
  )
}

/** Time left before a fleeting message disappears, updated every second. */
export function FleetingCountdown({ message, seconds }: { message: ChatMessage; seconds: number }) {
  const [now, setNow] = useState(Date.now)
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 1000)
    return () => clearInterval(timer)
  }, [])
  const left = Math.max(0, Math.ceil((message.createdAt + seconds * 1000 - now) / 1000))
  return (
    <span className="fleeting" data-testid="fleeting-countdown" title="Disappears for everyone">
      ⏳ {formatDuration(left)}
    </span>
  )
}

/** `90` → "1m 30s", `7200` → "2h". */
export function formatDuration(seconds: number): string {
  if (seconds < 60) return `${seconds}s`
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${seconds % 60 ? ` ${seconds % 60}s` : ""}`
  if (seconds < 86_400)
    return `${Math.floor(seconds / 3600)}h${seconds % 3600 >= 60 ? ` ${Math.floor((seconds % 3600) / 60)}m` : ""}`
  return `${Math.floor(seconds / 86_400)}d`
}

// 10 s: long enough to read a short note, short enough to watch one vanish (the end-to-end test
// waits for that, a 30 s shortest kept it waiting 25 s).
const LIFETIMES = [10, 30, 300, 3600, DEFAULT_FLEETING_SECONDS]

/** The conversation's fleeting lifetime: shown to everyone, changed by owners and admins. */
export function FleetingSetting({
  conversation,
  info,
  role,
  failed,
}: {
  conversation: Conversation
  info: ConversationInfo
  role: Role | undefined
  failed: (error: unknown) => void
}) {
  const current = info.fleetingSeconds ?? DEFAULT_FLEETING_SECONDS
  const options = LIFETIMES.includes(current) ? LIFETIMES : [...LIFETIMES, current].sort((a, b) => a - b)
  return (
    <label className="fleeting-setting">
      Fleeting messages last{" "}
      <select
        data-testid="fleeting-setting"
        value={current}
        disabled={!canUpdateConversation(role).allowed}
        onChange={(event) => {
          const seconds = Number(event.target.value)
          try {
            conversation.setFleetingSeconds(seconds === DEFAULT_FLEETING_SECONDS ? undefined : seconds)
          } catch (error) {
            failed(error)
          }
        }}
      >
        {options.map((seconds) => (
          <option key={seconds} value={seconds}>
            {formatDuration(seconds)}
          </option>
        ))}
      </select>
    </label>
  )
}
