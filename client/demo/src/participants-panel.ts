import type { Conversation } from "@parley/client"
import { h, replaceChildren } from "./dom.js"
import { mayAdd, mayChangeRole, mayRemove } from "./permissions.js"

/** What the panel reports back to the conversation view. */
export interface ParticipantsPanelEvents {
  /** An operation threw (e.g. FORBIDDEN). */
  failed(error: unknown): void
  /** The user left the conversation. */
  left(): void
}

/** Users with a live connection to this conversation (Yjs awareness; presence is never stored). */
function onlineUsers(conversation: Conversation): Set<string> {
  const users = new Set<string>()
  for (const state of conversation.awareness.getStates().values()) {
    const user = (state as { user?: unknown }).user
    if (typeof user === "string") users.add(user)
  }
  return users
}

/**
 * Participants with their roles and presence; add / remove / role buttons only
 * for what the user's role allows; leave.
 */
export function participantsPanel(
  conversation: Conversation,
  me: string,
  events: ParticipantsPanelEvents,
): { element: HTMLElement; destroy(): void } {
  const element = h("aside", { class: "participants", "data-testid": "participants-panel" })
  const attempt = (operation: () => void) => {
    try {
      operation()
    } catch (error) {
      events.failed(error)
    }
  }

  const render = () => {
    const info = conversation.info
    if (!info) {
      replaceChildren(element)
      return
    }
    const role = conversation.role
    const online = onlineUsers(conversation)
    if (conversation.connection.status === "online") online.add(me)
    const participants = conversation.participants
    const rows = participants.map((p) => {
      const isMe = p.user === me
      return h(
        "li",
        { "data-testid": "participant", "data-user": p.user, "data-role": p.role },
        h("span", {
          class: `presence ${online.has(p.user) ? "online" : "offline"}`,
          title: online.has(p.user) ? "online" : "offline",
          "data-testid": "participant-presence",
          "data-online": String(online.has(p.user)),
        }),
        h("span", { class: "name" }, isMe ? `${p.user} (you)` : p.user),
        h("span", { class: "role" }, p.role),
        !isMe && p.role !== "owner" && mayChangeRole(role, info.kind, p.role)
          ? h(
              "button",
              {
                type: "button",
                class: "link",
                "data-testid": "toggle-admin",
                onclick: () =>
                  attempt(() => conversation.changeRole(p.user, p.role === "admin" ? "member" : "admin")),
              },
              p.role === "admin" ? "Make member" : "Make admin",
            )
          : null,
        mayRemove(me, role, info.kind, p.user, p.role)
          ? h(
              "button",
              {
                type: "button",
                class: "link danger",
                "data-testid": "remove-participant",
                "aria-label": `Remove ${p.user}`,
                onclick: () => attempt(() => conversation.removeParticipants([p.user])),
              },
              "Remove",
            )
          : null,
      )
    })
    const input = h("input", {
      name: "user",
      placeholder: "user name",
      autocomplete: "off",
      autocapitalize: "off",
      "data-testid": "add-participant-input",
      "aria-label": "User to add",
    })
    const addForm = mayAdd(info.kind, role)
      ? h(
          "form",
          {
            class: "inline-form",
            "data-testid": "add-participant-form",
            onsubmit: (event: Event) => {
              event.preventDefault()
              const users = input.value
                .split(/[\s,]+/)
                .map((u) => u.trim())
                .filter(Boolean)
              if (users.length === 0) return
              attempt(() => {
                conversation.addParticipants(users)
                input.value = ""
              })
            },
          },
          input,
          h("button", { type: "submit", "data-testid": "add-participant" }, "Add"),
        )
      : null
    replaceChildren(
      element,
      h("h3", {}, `${participants.length} participant${participants.length === 1 ? "" : "s"}`),
      h("ul", { "data-testid": "participant-list" }, ...rows),
      addForm,
      role
        ? h(
            "button",
            {
              type: "button",
              class: "danger wide",
              "data-testid": "leave-conversation",
              onclick: () =>
                attempt(() => {
                  conversation.leave()
                  events.left()
                }),
            },
            "Leave conversation",
          )
        : h("p", { class: "hint" }, "You are no longer a participant."),
    )
  }

  render()
  const offChange = conversation.on("change", ({ events: changes }) => {
    if (changes.some((e) => e.type.startsWith("participant") || e.type.startsWith("conversation"))) render()
  })
  const offState = conversation.on("state", render)
  const onAwareness = () => render()
  conversation.awareness.on("change", onAwareness)
  const offStatus = conversation.connection.on("status", render)
  return {
    element,
    destroy() {
      offChange()
      offState()
      offStatus()
      conversation.awareness.off("change", onAwareness)
    },
  }
}
