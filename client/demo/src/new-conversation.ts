import type { ChatClient, Conversation } from "@parley/client"
import { h } from "./dom.js"

/**
 * The "new conversation" form: direct (one other user; found or created, the
 * same on both sides) or group (several users and a title).
 */
export function newConversationForm(
  client: ChatClient,
  events: { created(conversation: Conversation): void; failed(error: unknown): void; cancel(): void },
): HTMLFormElement {
  const users = h("input", {
    name: "users",
    required: true,
    autocomplete: "off",
    autocapitalize: "off",
    placeholder: "bob",
    "data-testid": "new-participants",
  })
  const title = h("input", { name: "title", placeholder: "Team chat", "data-testid": "new-title" })
  const titleRow = h("label", { class: "field", hidden: true }, "Title", title)
  const usersLabel = h("span", {}, "With (user name)")
  const kind = (value: "direct" | "group", label: string, checked: boolean) =>
    h(
      "label",
      { class: "segment" },
      h("input", {
        type: "radio",
        name: "kind",
        value,
        checked,
        "data-testid": `new-kind-${value}`,
        onchange: () => {
          const group = value === "group"
          titleRow.hidden = !group
          usersLabel.textContent = group ? "With (user names, comma-separated)" : "With (user name)"
          users.placeholder = group ? "bob, carol" : "bob"
        },
      }),
      h("span", {}, label),
    )
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "new-create" }, "Start")
  const form = h(
    "form",
    {
      class: "new-conversation",
      "data-testid": "new-conversation-form",
      onsubmit: async (event: Event) => {
        event.preventDefault()
        const data = new FormData(form)
        const names = String(data.get("users") ?? "")
          .split(/[\s,]+/)
          .map((u) => u.trim())
          .filter((u) => u && u !== client.user)
        if (names.length === 0) return
        submit.disabled = true
        try {
          const conversation =
            data.get("kind") === "group"
              ? await client.createConversation({
                  participants: names,
                  ...(String(data.get("title") ?? "").trim()
                    ? { title: String(data.get("title")).trim() }
                    : {}),
                })
              : await client.directConversation(names[0]!)
          form.reset()
          titleRow.hidden = true
          events.created(conversation)
        } catch (error) {
          events.failed(error)
        } finally {
          submit.disabled = false
        }
      },
    },
    h(
      "div",
      { class: "segments", role: "radiogroup" },
      kind("direct", "Direct", true),
      kind("group", "Group", false),
    ),
    h("label", { class: "field" }, usersLabel, users),
    titleRow,
    h(
      "div",
      { class: "row" },
      h("button", { type: "button", class: "link", onclick: events.cancel }, "Cancel"),
      submit,
    ),
  )
  return form
}
