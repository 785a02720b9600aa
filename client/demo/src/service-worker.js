// The demo's service worker (PRECACHE and VERSION are prepended at build time
// by vite.config.ts). It makes the app shell load without a network, so that a
// reload while offline shows the local replicas (IndexedDB) instead of an
// error page: the point of an offline-first chat.
//
// Navigations: network first (a new build shows at once), the cached shell when
// the network fails. Built files: cache first (their names are content-hashed).
// Everything else (the relay's /dev/token, /healthz, WebSockets) is not touched.

const CACHE = `parley-demo-${VERSION}`
const SHELL = "/"

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(PRECACHE))
      .then(() => self.skipWaiting()),
  )
})

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((keys) => Promise.all(keys.filter((key) => key !== CACHE).map((key) => caches.delete(key))))
      .then(() => self.clients.claim()),
  )
})

self.addEventListener("fetch", (event) => {
  const request = event.request
  const url = new URL(request.url)
  if (request.method !== "GET" || url.origin !== self.location.origin) return
  if (request.mode === "navigate") {
    event.respondWith(
      fetch(request).catch(() => caches.match(SHELL).then((cached) => cached ?? Response.error())),
    )
    return
  }
  if (!PRECACHE.includes(url.pathname)) return
  event.respondWith(caches.match(request).then((cached) => cached ?? fetch(request)))
})

// Push notifications (relay/src/push/notification.ts is the payload: title, body, sender,
// conversationId, messageId, badge, priority, urgency; or only `wake`, see below). One notification per conversation
// (`tag`): a newer message replaces the older one; an emergency asks to stay until seen.
self.addEventListener("push", (event) => {
  let data
  try {
    data = event.data ? event.data.json() : undefined
  } catch {
    data = undefined
  }
  // A content-free wake-up (`{ "wake": true }`): the relay sends it instead of a notification to a
  // device whose registration was not renewed since its token expired. Nothing of a message is in
  // it, so nothing is shown but that there is news; the app fetches it with its own token when opened.
  if (data && data.wake === true) {
    event.waitUntil(self.registration.showNotification("New messages", { tag: "parley-wake" }))
    return
  }
  if (!data || typeof data.title !== "string") return
  const emergency = data.priority === "emergency"
  const shown = self.registration.showNotification(emergency ? `🚨 ${data.title}` : data.title, {
    body: data.sender && data.title !== data.sender.name ? `${data.sender.name}: ${data.body}` : data.body,
    tag: `conversation:${data.conversationId}`,
    renotify: true,
    requireInteraction: emergency,
    data: { conversationId: data.conversationId, messageId: data.messageId },
  })
  // The app icon's badge: the user's unread total when the message went out.
  const badge =
    typeof data.badge === "number" && "setAppBadge" in self.navigator
      ? self.navigator.setAppBadge(data.badge).catch(() => {})
      : Promise.resolve()
  event.waitUntil(Promise.all([shown, badge]))
})

// A tap opens the conversation: in a window of the app already open (focused), or a new one.
self.addEventListener("notificationclick", (event) => {
  event.notification.close()
  const conversation = event.notification.data?.conversationId
  const target = new URL(conversation ? `/#c=${encodeURIComponent(conversation)}` : "/", self.location.origin)
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      const open = windows.find((w) => new URL(w.url).origin === self.location.origin)
      if (!open) return self.clients.openWindow(target.href)
      // navigate() is for windows this worker controls; any other is told by opening a fresh one.
      return open
        .focus()
        .then((focused) => (focused ?? open).navigate(target.href))
        .catch(() => self.clients.openWindow(target.href))
    }),
  )
})
