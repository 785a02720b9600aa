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

/** How long sign-out waits for messages not yet on the relay before asking whether to drop them. */
const SIGN_OUT_FLUSH_MS = 3_000

/**
 * Whether to go on with a sign-out: messages not on the relay yet are
 * waited for a few seconds, since signing out deletes this browser's copy
 * (see {@link signOut}); if some are still unsent (offline), `confirmLoss` asks.
 */
export async function readyToSignOut(client: ChatClient, confirmLoss: () => boolean): Promise<boolean> {
  const saved = await client.flush({ timeoutMs: SIGN_OUT_FLUSH_MS }).then(
    () => true,
    () => false,
  )
  return saved || confirmLoss()
}

/**
 * Signs out on this browser and removes the user's data from it: a browser
 * may be shared, and whoever signs in next must not find the previous user's
 * messages in its storage (the SDK keeps them in IndexedDB so that the app
 * works offline). The user's other tabs sign out too. The browser's push
 * subscription goes, or the next user of this browser would be shown the
 * previous one's notifications, and so do the notifications shown.
 */
export async function signOut(client: ChatClient): Promise<void> {
  forgetSession()
  if (pushSupported() && Notification.permission === "granted") {
    await disableNotifications(client).catch((error: unknown) =>
      console.warn("could not unregister this browser's notifications", error),
    )
    // They show message text: the next user of this browser must not read them either.
    const registration = await navigator.serviceWorker.getRegistration()
    for (const notification of (await registration?.getNotifications()) ?? []) notification.close()
  }
  // The service worker caches only the app shell (nobody's messages): nothing of the user's there.
  // readyToSignOut waited for unsent work already.
  await client
    .destroy({ deleteLocalData: true, timeoutMs: 0 })
    .catch((error: unknown) => console.warn("could not delete this browser's copy of the messages", error))
}

/**
 * Signed out in another tab (its data deleted there): this tab's client has
 * stopped; the user must sign in again.
 */
export function forgetSession(): void {
  localStorage.removeItem(USER_KEY)
  localStorage.removeItem(NAME_KEY)
}
