import type { ChatClient } from "@parley/client"

/** Where this browser's push device name is kept: one per installation, stable across sign-ins. */
const DEVICE_KEY = "parley-demo-push-device"

/** Whether this browser can receive Web Push at all (a secure context with a service worker). */
export const pushSupported = (): boolean =>
  typeof window !== "undefined" &&
  window.isSecureContext &&
  "serviceWorker" in navigator &&
  "PushManager" in window &&
  "Notification" in window

function deviceName(): string {
  let name = localStorage.getItem(DEVICE_KEY)
  if (!name) {
    name = `browser-${crypto.randomUUID().slice(0, 8)}`
    localStorage.setItem(DEVICE_KEY, name)
  }
  return name
}

/** A VAPID key in base64url as `PushManager.subscribe` takes it. */
function keyBytes(base64url: string): Uint8Array<ArrayBuffer> {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/")
  const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4))
  const bytes = new Uint8Array(new ArrayBuffer(binary.length))
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i)
  return bytes
}

/**
 * The user opted in: asks the browser's permission, subscribes this browser
 * with the relay's VAPID key through the demo's service worker (`sw.js`,
 * which shows what arrives), and registers the subscription with the relay
 * through the SDK. Throws with the reason when any step is refused.
 */
export async function enableNotifications(client: ChatClient): Promise<void> {
  if (!pushSupported()) throw new Error("this browser cannot receive push notifications here (HTTPS needed)")
  if ((await Notification.requestPermission()) !== "granted")
    throw new Error("notifications are blocked for this site")
  const registration = await navigator.serviceWorker.ready
  const subscription =
    (await registration.pushManager.getSubscription()) ??
    (await registration.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey: keyBytes(await client.push.publicKey()),
    }))
  await client.registerPush(deviceName(), subscription)
}

/** The user opted out: the relay forgets this browser, and the browser its subscription. */
export async function disableNotifications(client: ChatClient): Promise<void> {
  await client.unregisterPush(deviceName())
  const registration = await navigator.serviceWorker.ready
  await (await registration.pushManager.getSubscription())?.unsubscribe()
}
