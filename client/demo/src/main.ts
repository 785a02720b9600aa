import "./style.css"
import type { ChatClient } from "@parley/client"
import { App } from "./app.js"
import { h, replaceChildren } from "./dom.js"
import { savedUser, signIn, signOut } from "./session.js"

const root = document.getElementById("app")!

/** The sign-in screen: a user name is all the relay's dev mode needs. */
function showSignIn(error?: string): void {
  const input = h("input", {
    name: "user",
    required: true,
    autocomplete: "username",
    autocapitalize: "off",
    placeholder: "alice",
    pattern: "[A-Za-z0-9_.@\\-]{1,64}",
    "data-testid": "sign-in-user",
    "aria-label": "User name",
  })
  const form = h(
    "form",
    {
      class: "sign-in",
      "data-testid": "sign-in-form",
      onsubmit: (event: Event) => {
        event.preventDefault()
        void start(input.value)
      },
    },
    h("h1", {}, "Parley"),
    h("p", { class: "hint" }, "Offline-first chat on Yjs. Pick any user name (dev mode)."),
    h("label", { class: "field" }, "User name", input),
    error ? h("p", { class: "error", "data-testid": "sign-in-error" }, error) : null,
    h("button", { type: "submit", class: "primary wide", "data-testid": "sign-in-submit" }, "Sign in"),
  )
  replaceChildren(root, form)
  input.focus()
}

async function start(user: string): Promise<void> {
  let client: ChatClient
  try {
    client = await signIn(user)
  } catch (error) {
    showSignIn(error instanceof Error ? error.message : String(error))
    return
  }
  const app: App = new App(client, () => {
    app.destroy()
    location.hash = ""
    void signOut(client).then(() => showSignIn())
  })
  replaceChildren(root, app.element)
}

// The service worker caches the app shell so that the app loads offline (built app only:
// the dev server has no sw.js; `import.meta.hot` exists only there).
if ("serviceWorker" in navigator && !import.meta.hot) {
  navigator.serviceWorker
    .register("/sw.js")
    .catch((error: unknown) => console.warn("no service worker:", error))
}

const user = savedUser()
if (user) void start(user)
else showSignIn()
