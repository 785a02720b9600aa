import type { PresenceStatus, UserPresence } from "@parley/client"
import { useProfile } from "@parley/react"
import { formatTime } from "./format.js"
import { initials } from "./titles.js"

/** A user's display name from their profile (their id when they set none). */
export function useName(user: string): string {
  return useProfile(user).name
}

/** A user's display name, kept current as their profile changes. */
export function UserName({ user, me }: { user: string; me?: string }) {
  const name = useName(user)
  return <>{user === me ? `${name} (you)` : name}</>
}

/** A stable colour per name, so that people are told apart at a glance. */
function hue(name: string): number {
  let hash = 0
  for (let i = 0; i < name.length; i++) hash = (Math.imul(hash, 31) + name.charCodeAt(i)) >>> 0
  return hash % 360
}

/**
 * A round avatar: the picture when there is one (initials if it fails to
 * load), else initials on a colour of the name; a presence dot when known.
 */
export function Avatar({
  name,
  picture,
  presence,
}: {
  name: string
  picture?: string | undefined
  presence?: PresenceStatus | undefined
}) {
  return (
    <span className="avatar" aria-hidden="true" style={{ background: `hsl(${hue(name)} 55% 45%)` }}>
      <span className="initials">{initials(name)}</span>
      {picture && (
        <img
          src={picture}
          alt=""
          referrerPolicy="no-referrer"
          onError={(event) => {
            event.currentTarget.hidden = true
          }}
        />
      )}
      {presence !== undefined && (
        <span
          className={`presence-dot ${presence}`}
          data-presence={presence}
          data-online={String(presence !== "offline")}
        />
      )}
    </span>
  )
}

/** A user's avatar from their profile. */
export function UserAvatar({ user, presence }: { user: string; presence?: PresenceStatus | undefined }) {
  const profile = useProfile(user)
  return <Avatar name={profile.name} picture={profile.picture} presence={presence} />
}

/** "online", "away", "last seen 14:02", or "offline" (never seen). */
export function presenceText(presence: UserPresence | undefined): string {
  if (!presence || presence.status === "offline")
    return presence?.lastSeen !== undefined ? `last seen ${formatTime(presence.lastSeen)}` : "offline"
  return presence.status
}
