import { useChatClient, useProfile } from "@parley/react"
import { useEffect, useRef, useState } from "react"
import { explain } from "./errors.js"
import { Avatar } from "./people.js"

/**
 * Edits the user's profile (display name and picture URL) and their presence
 * switch. A profile goes into every conversation the user takes part in:
 * those open now at once, the others when they next open.
 */
export function ProfileEditor({ close }: { close: () => void }) {
  const client = useChatClient()
  const profile = useProfile(client.user)
  const [name, setName] = useState(profile.named ? profile.name : "")
  const [picture, setPicture] = useState(profile.picture ?? "")
  const [visible, setVisible] = useState(client.presenceVisible)
  const [problem, setProblem] = useState<string>()
  const [saving, setSaving] = useState(false)
  const first = useRef<HTMLInputElement>(null)
  useEffect(() => first.current?.focus(), [])
  const shownName = name.trim() || client.user
  return (
    <form
      className="profile-editor"
      data-testid="profile-editor"
      noValidate
      onSubmit={(event) => {
        event.preventDefault()
        setSaving(true)
        client.setPresenceVisible(visible)
        client.setProfile({ name, picture: picture.trim() }).then(
          () => close(),
          (error: unknown) => {
            setProblem(explain(error))
            setSaving(false)
          },
        )
      }}
      onKeyDown={(event) => {
        if (event.key === "Escape") close()
      }}
    >
      <div className="preview-row">
        <Avatar
          name={shownName}
          picture={picture.trim().startsWith("https://") ? picture.trim() : undefined}
        />
        <strong>{shownName}</strong>
      </div>
      <label className="field">
        Display name
        <input
          ref={first}
          data-testid="profile-name"
          value={name}
          maxLength={64}
          placeholder={client.user}
          onChange={(event) => setName(event.target.value)}
        />
      </label>
      <label className="field">
        Picture URL
        <input
          data-testid="profile-picture"
          type="url"
          inputMode="url"
          value={picture}
          maxLength={512}
          placeholder="https://…"
          onChange={(event) => setPicture(event.target.value)}
        />
      </label>
      <label className="check">
        <input
          type="checkbox"
          data-testid="presence-visible"
          checked={visible}
          onChange={(event) => setVisible(event.target.checked)}
        />{" "}
        Show others when I am online
      </label>
      <p className="hint">People you share a conversation with see your name and picture.</p>
      {problem && (
        <p className="error" role="alert" data-testid="profile-error">
          {problem}
        </p>
      )}
      <div className="buttons">
        <button type="button" className="small" onClick={close}>
          Cancel
        </button>
        <button type="submit" className="small primary" data-testid="profile-save" disabled={saving}>
          Save
        </button>
      </div>
    </form>
  )
}
