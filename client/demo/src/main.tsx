import "./style.css"
import type { ChatClient } from "@parley/client"
import { ParleyProvider } from "@parley/react"
import { useEffect, useState } from "react"
import { createRoot } from "react-dom/client"
import { App } from "./app.js"
import { forgetSession, readyToSignOut, savedUser, signIn, signOut } from "./session.js"
import { SignIn } from "./sign-in.js"

/** The demo: the sign-in screen, or the app of the signed-in user. */
function Root() {
  const [client, setClient] = useState<ChatClient>()
  const [error, setError] = useState<string>()
  const [starting, setStarting] = useState(() => savedUser() !== undefined)

  const start = async (user: string, displayName?: string) => {
    setStarting(true)
    try {
      setClient(await signIn(user, displayName))
      setError(undefined)
    } catch (failure) {
      setError(failure instanceof Error ? failure.message : String(failure))
    } finally {
      setStarting(false)
    }
  }

  useEffect(() => {
    const user = savedUser()
    if (user) void start(user)
  }, [])

  // Signed out in another tab: that tab deleted this user's data, and this tab's client stopped.
  useEffect(
    () =>
      client?.on("localDataDeleted", () => {
        forgetSession()
        location.hash = ""
        setClient(undefined)
      }),
    [client],
  )

  if (!client)
    return starting ? null : (
      <SignIn error={error} onSubmit={(user, displayName) => void start(user, displayName)} />
    )
  return (
    <ParleyProvider client={client}>
      <App
        onSignOut={async () => {
          const go = await readyToSignOut(client, () =>
            window.confirm(
              "Some of your messages have not reached the server yet (offline?). Signing out removes them from this browser with the rest of your data, so they will never be sent. Sign out anyway?",
            ),
          )
          if (!go) return
          location.hash = ""
          setClient(undefined)
          await signOut(client)
        }}
      />
    </ParleyProvider>
  )
}

// The service worker caches the app shell so that the app loads offline (built app only:
// the dev server has no sw.js; `import.meta.hot` exists only there).
if ("serviceWorker" in navigator && !import.meta.hot) {
  navigator.serviceWorker
    .register("/sw.js")
    .catch((error: unknown) => console.warn("no service worker:", error))
}

createRoot(document.getElementById("app")!).render(<Root />)
