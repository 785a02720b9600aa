import type { Conversation } from "@parley/client"
import { useChatClient } from "@parley/react"
import { useEffect, useRef, useState } from "react"
import { parseUserNames, titleProblem } from "./user-names.js"

/**
 * The "new conversation" form: direct (one other user; found or created, the
 * same on both sides) or group (several users and a title).
 */
export function NewConversation(props: {
  created(conversation: Conversation): void
  failed(error: unknown): void
  cancel(): void
}) {
  const client = useChatClient()
  const [kind, setKind] = useState<"direct" | "group">("direct")
  const [users, setUsers] = useState("")
  const [title, setTitle] = useState("")
  const [problem, setProblem] = useState<string>()
  const [busy, setBusy] = useState(false)
  const first = useRef<HTMLInputElement>(null)
  useEffect(() => first.current?.focus(), [])
  const group = kind === "group"

  const submit = async () => {
    const parsed = parseUserNames(users)
    if ("problem" in parsed) {
      setProblem(parsed.problem)
      return
    }
    const all = parsed.users
    const tooLong = group ? titleProblem(title.trim()) : undefined
    if (tooLong) {
      setProblem(tooLong)
      return
    }
    const names = all.filter((u) => u !== client.user)
    if (names.length === 0) {
      setProblem(
        all.length > 0
          ? "That is you: start a conversation with someone else."
          : `Enter ${group ? "user names" : "a user name"}.`,
      )
      return
    }
    if (!group && names.length > 1) {
      setProblem("A direct conversation is with one person: pick Group for several.")
      return
    }
    setProblem(undefined)
    setBusy(true)
    try {
      const conversation = group
        ? await client.createConversation({
            participants: names,
            ...(title.trim() ? { title: title.trim() } : {}),
          })
        : await client.directConversation(names[0]!)
      props.created(conversation)
    } catch (error) {
      props.failed(error)
    } finally {
      setBusy(false)
    }
  }

  return (
    <form
      className="new-conversation"
      data-testid="new-conversation-form"
      onSubmit={(event) => {
        event.preventDefault()
        void submit()
      }}
    >
      <div className="segments" role="radiogroup">
        {(["direct", "group"] as const).map((value) => (
          <label className="segment" key={value}>
            <input
              type="radio"
              name="kind"
              value={value}
              checked={kind === value}
              data-testid={`new-kind-${value}`}
              onChange={() => setKind(value)}
            />
            <span>{value === "direct" ? "Direct" : "Group"}</span>
          </label>
        ))}
      </div>
      <label className="field">
        <span>{group ? "With (user names, comma-separated)" : "With (user name)"}</span>
        <input
          name="users"
          autoComplete="off"
          autoCapitalize="off"
          ref={first}
          placeholder={group ? "bob, carol" : "bob"}
          data-testid="new-participants"
          value={users}
          onChange={(event) => setUsers(event.target.value)}
        />
      </label>
      {group && (
        <label className="field">
          Title
          <input
            name="title"
            placeholder="Team chat"
            data-testid="new-title"
            value={title}
            onChange={(event) => setTitle(event.target.value)}
          />
        </label>
      )}
      {problem && (
        <p className="error" role="alert" data-testid="new-conversation-error">
          {problem}
        </p>
      )}
      <div className="row">
        <button type="button" className="link" onClick={props.cancel}>
          Cancel
        </button>
        <button type="submit" className="primary" data-testid="new-create" disabled={busy}>
          Start
        </button>
      </div>
    </form>
  )
}
