import { initials } from "./titles.js"

/**
 * How the demo names a user. The SDK has no profiles yet (display names and
 * avatars from the token's `name` / `picture` claims are planned): until then
 * a user is shown by id, and this is the one place to change when they land.
 */
export function displayName(user: string): string {
  return user
}

/** A user's picture URL, when their profile has one (none before the SDK has profiles). */
export function pictureOf(_user: string): string | undefined {
  return undefined
}

/** A stable colour per name, so that people are told apart at a glance. */
function hue(name: string): number {
  let hash = 0
  for (let i = 0; i < name.length; i++) hash = (Math.imul(hash, 31) + name.charCodeAt(i)) >>> 0
  return hash % 360
}

/** A round avatar: the picture when there is one, else initials on a colour of the name; a presence dot when known. */
export function Avatar({ name, picture, online }: { name: string; picture?: string; online?: boolean }) {
  return (
    <span className="avatar" aria-hidden="true" style={{ background: `hsl(${hue(name)} 55% 45%)` }}>
      {picture ? <img src={picture} alt="" /> : initials(name)}
      {online !== undefined && (
        <span className={`presence-dot ${online ? "online" : "offline"}`} data-online={String(online)} />
      )}
    </span>
  )
}
