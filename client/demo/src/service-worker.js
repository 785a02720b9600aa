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
