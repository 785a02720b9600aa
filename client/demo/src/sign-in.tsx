import { useEffect, useRef, useState } from "react"

/** Why `name` cannot be a user id, in words (undefined when it can): the relay's rule, explained. */
export function nameProblem(name: string): string | undefined {
  if (name.length === 0) return "Enter a user name."
  if (name.length > 64) return "A user name has at most 64 characters."
  // The relay keeps these for services acting in conversations (its tokens for them are not users').
  if (name.startsWith("service."))
    return "User names may not start with “service.”: the relay keeps those for services."
  const bad = [...new Set(name.replace(/[A-Za-z0-9_.@-]/g, ""))]
  if (bad.length === 0) return undefined
  const shown = bad.map((c) => (c === " " ? "spaces" : `“${c}”`)).join(", ")
  return `User names use letters, digits and _ . @ - only (no ${shown}).`
}

/** The sign-in screen: a user name is all the relay's dev mode needs. */
export function SignIn({
  error,
  onSubmit,
}: {
  error: string | undefined
  onSubmit: (user: string, displayName: string) => void
}) {
  const [name, setName] = useState("")
  const [displayName, setDisplayName] = useState("")
  const [problem, setProblem] = useState<string>()
  const input = useRef<HTMLInputElement>(null)
  useEffect(() => input.current?.focus(), [])
  const shown = problem ?? error
  return (
    <form
      className="sign-in"
      data-testid="sign-in-form"
      noValidate
      onSubmit={(event) => {
        event.preventDefault()
        const user = name.trim()
        const why = nameProblem(user)
        setProblem(why)
        if (!why) onSubmit(user, displayName.trim())
      }}
    >
      <h1>Parley</h1>
      <p className="hint">Offline-first chat on Yjs. Pick any user name (dev mode).</p>
      <p className="hint" data-testid="sign-in-storage">
        Your messages are kept in this browser so that the app works offline; signing out removes them.
      </p>
      <label className="field">
        User name
        <input
          name="user"
          autoComplete="username"
          autoCapitalize="off"
          placeholder="alice"
          data-testid="sign-in-user"
          aria-label="User name"
          aria-invalid={problem !== undefined}
          aria-describedby="sign-in-help"
          ref={input}
          value={name}
          onChange={(event) => {
            setName(event.target.value)
            if (problem) setProblem(nameProblem(event.target.value.trim()))
          }}
        />
      </label>
      <p className="hint" id="sign-in-help">
        Letters, digits and _ . @ - (up to 64).
      </p>
      <label className="field">
        Display name (optional)
        <input
          name="display-name"
          autoComplete="name"
          placeholder="Alice Liddell"
          maxLength={64}
          data-testid="sign-in-display-name"
          aria-label="Display name"
          value={displayName}
          onChange={(event) => setDisplayName(event.target.value)}
        />
      </label>
      {shown && (
        <p className="error" role="alert" data-testid="sign-in-error">
          {shown}
        </p>
      )}
      <button type="submit" className="primary wide" data-testid="sign-in-submit">
        Sign in
      </button>
    </form>
  )
}
