import { type ChatClient, createChatClient } from "@parley/client"
import { disableNotifications, pushSupported } from "./notifications.js"

const USER_KEY = "parley-demo:user"
const NAME_KEY = "parley-demo:display-name"

/** The user signed in on this browser, if any (kept so that a reload, even offline, signs in again). */
export function savedUser(): string | undefined {
  return localStorage.getItem(USER_KEY) ?? undefined
}

/**
 * A dev token for `user` from the relay that serves this page (`--dev` mode).
 * A real app would ask its own backend, which signs tokens with the relay's key.
 */
async function devToken(user: string, displayName: string | undefined): Promise<string> {
  // The display name goes in the token's `name` claim, as an identity provider would put it:
  // the SDK makes it the user's profile until they edit it.
  const params = new URLSearchParams({ user, ...(displayName ? { name: displayName } : {}) })
  const response = await fetch(`/dev/token?${params}`, { cache: "no-store" })
  const body = (await response.json().catch(() => ({}))) as { token?: string; error?: string }
  if (!response.ok || !body.token)
    throw new Error(body.error ?? `the relay gave no token (HTTP ${response.status})`)
  return body.token
}

/** The relay's WebSocket URL: the host that served this page. */
const relayUrl = () => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`

/**
 * Signs `user` in. Giving the SDK the user id lets it start from the local
 * replicas at once (a reload works offline); tokens are fetched when connecting.
 * Rejects with a `ParleyError` when the name is not a valid user id.
 * `displayName` (optional) is the token's `name` claim: the default profile.
 */
export async function signIn(user: string, displayName?: string): Promise<ChatClient> {
  const name = user.trim()
  const shown = displayName?.trim() || (localStorage.getItem(NAME_KEY) ?? undefined)
  const client = await createChatClient({
    url: relayUrl(),
    user: name,
    token: () => devToken(name, shown),
  })
  localStorage.setItem(USER_KEY, name)
  if (shown) localStorage.setItem(NAME_KEY, shown)
  else localStorage.removeItem(NAME_KEY)
  return client
}

/**
 * Signs out on this browser: local replicas stay (per user) for the next
 * sign-in; the browser's push subscription goes, or the next user of this
 * browser would be shown the previous one's notifications.
 */
export async function signOut(client: ChatClient): Promise<void> {
  localStorage.removeItem(USER_KEY)
  localStorage.removeItem(NAME_KEY)
  if (pushSupported() && Notification.permission === "granted")
    await disableNotifications(client).catch((error: unknown) =>
      console.warn("could not unregister this browser's notifications", error),
    )
  await client.destroy()
}
