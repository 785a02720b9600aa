import type { Conversation, ConversationInfo, Participant, Role, UserPresence } from "@parley/client"
import { useState } from "react"
import { presenceText, UserAvatar, UserName } from "./people.js"
import { mayAdd, mayChangeRole, mayLeave, mayMakeOwner, mayRemove } from "./permissions.js"
import { parseUserNames } from "./user-names.js"

/**
 * Participants with their presence and (in groups) roles; add / remove / role
 * buttons only for what the user's role allows; leave (groups only: a direct
 * conversation is between its two people for good).
 */
export function ParticipantsPanel(props: {
  conversation: Conversation
  info: ConversationInfo
  participants: readonly Participant[]
  role: Role | undefined
  me: string
  /** Each user's presence from the SDK (the user's own: shown while connected and visible). */
  presence: ReadonlyMap<string, UserPresence>
  failed(error: unknown): void
  left(): void
}) {
  const { conversation, info, participants, role, me, presence } = props
  const [adding, setAdding] = useState("")
  const direct = info.kind === "direct"
  const attempt = (operation: () => void) => {
    try {
      operation()
    } catch (error) {
      props.failed(error)
    }
  }
  return (
    <aside className="participants" data-testid="participants-panel">
      <h3>
        {participants.length} participant{participants.length === 1 ? "" : "s"}
      </h3>
      <ul data-testid="participant-list">
        {participants.map((p) => {
          const isMe = p.user === me
          const seen = presence.get(p.user)
          const status = seen?.status ?? "offline"
          return (
            <li key={p.user} data-testid="participant" data-user={p.user} data-role={p.role}>
              <UserAvatar user={p.user} />
              <span
                className={`presence ${status}`}
                title={presenceText(seen)}
                data-testid="participant-presence"
                data-presence={status}
                data-online={String(status !== "offline")}
              />
              <span className="name" data-testid="participant-name">
                <UserName user={p.user} me={me} />
              </span>
              {!direct && (
                <span className="role" data-testid="participant-role">
                  {p.role}
                </span>
              )}
              {!direct && !isMe && p.role !== "owner" && mayChangeRole(role, info.kind, p.role) && (
                <button
                  type="button"
                  className="link"
                  data-testid="toggle-admin"
                  onClick={() =>
                    attempt(() => conversation.changeRole(p.user, p.role === "admin" ? "member" : "admin"))
                  }
                >
                  {p.role === "admin" ? "Make member" : "Make admin"}
                </button>
              )}
              {!direct && !isMe && p.role !== "owner" && mayMakeOwner(role, info.kind, p.role) && (
                <button
                  type="button"
                  className="link"
                  data-testid="make-owner"
                  onClick={() => attempt(() => conversation.changeRole(p.user, "owner"))}
                >
                  Make owner
                </button>
              )}
              {mayRemove(me, role, info.kind, p.user, p.role) && (
                <button
                  type="button"
                  className="link danger"
                  data-testid="remove-participant"
                  aria-label={`Remove ${p.user}`}
                  onClick={() => attempt(() => conversation.removeParticipants([p.user]))}
                >
                  Remove
                </button>
              )}
            </li>
          )
        })}
      </ul>
      {mayAdd(info.kind, role) && (
        <form
          className="inline-form"
          data-testid="add-participant-form"
          onSubmit={(event) => {
            event.preventDefault()
            const parsed = parseUserNames(adding)
            if ("problem" in parsed) {
              props.failed(new Error(parsed.problem))
              return
            }
            const { users } = parsed
            if (users.length === 0) return
            attempt(() => {
              conversation.addParticipants(users)
              setAdding("")
            })
          }}
        >
          <input
            name="user"
            placeholder="user name"
            autoComplete="off"
            autoCapitalize="off"
            data-testid="add-participant-input"
            aria-label="User to add"
            value={adding}
            onChange={(event) => setAdding(event.target.value)}
          />
          <button type="submit" data-testid="add-participant">
            Add
          </button>
        </form>
      )}
      {!role ? (
        <p className="hint">You are no longer a participant.</p>
      ) : direct ? (
        <p className="hint">A direct conversation stays between its two people; mute it if it is too much.</p>
      ) : !mayLeave(me, participants) ? (
        <p className="hint" data-testid="last-owner-hint">
          You are its only owner: make someone else an owner before you leave.
        </p>
      ) : (
        <button
          type="button"
          className="danger wide"
          data-testid="leave-conversation"
          onClick={() =>
            attempt(() => {
              conversation.leave()
              props.left()
            })
          }
        >
          Leave conversation
        </button>
      )}
    </aside>
  )
}
