import type { ChatClient, ClientStatus, Conversation } from "@parley/client"
import { type ListEntry, watchConversationList } from "./conversation-list.js"
import { ConversationView } from "./conversation-view.js"
import { formatTime, h, replaceChildren } from "./dom.js"
import { explain } from "./errors.js"
import { newConversationForm } from "./new-conversation.js"
import { displayTitle, initials } from "./titles.js"

/**
 * The signed-in app: top bar (user, connection), conversation list, the open
 * conversation. One column on a phone (list or conversation), two on a wide screen.
 */
export class App {
  readonly element: HTMLElement
  private readonly listElement = h("ul", { class: "conversation-list", "data-testid": "conversation-list" })
  private readonly pane = h("section", { class: "pane" })
  private readonly status = h("span", { class: "status", role: "status", "data-testid": "connection-status" })
  private readonly toast = h("div", { class: "toast", role: "status", "data-testid": "toast", hidden: true })
  private readonly sidebarSlot = h("div", { class: "sidebar-slot" })
  private entries: readonly ListEntry[] = []
  private view: ConversationView | undefined
  private openId: string | undefined
  private readonly cleanups: (() => void)[] = []
  private toastTimer: ReturnType<typeof setTimeout> | undefined

  constructor(
    private readonly client: ChatClient,
    signOut: () => void,
  ) {
    this.element = h(
      "div",
      { class: "app", "data-view": "list" },
      h(
        "header",
        { class: "topbar" },
        h("span", { class: "brand" }, "Parley"),
        this.status,
        h("span", { class: "user", "data-testid": "current-user" }, client.user),
        h(
          "button",
          { type: "button", class: "link", "data-testid": "sign-out", onclick: signOut },
          "Sign out",
        ),
      ),
      h(
        "main",
        { class: "layout" },
        h(
          "aside",
          { class: "sidebar" },
          h(
            "div",
            { class: "sidebar-head" },
            h("h1", {}, "Conversations"),
            h(
              "button",
              {
                type: "button",
                class: "primary small",
                "data-testid": "new-conversation",
                onclick: () => this.toggleNewForm(),
              },
              "New",
            ),
          ),
          this.sidebarSlot,
          this.listElement,
        ),
        this.pane,
      ),
      this.toast,
    )
    this.showPlaceholder()
    this.cleanups.push(
      watchConversationList(client, (entries) => this.renderList(entries)),
      client.on("status", ({ status }) => this.renderStatus(status)),
      client.on("error", ({ error }) => console.warn("parley:", error.code, error.message)),
    )
    const onNetwork = () => this.renderStatus(client.status)
    window.addEventListener("online", onNetwork)
    window.addEventListener("offline", onNetwork)
    const onHash = () => this.route()
    window.addEventListener("hashchange", onHash)
    this.cleanups.push(() => {
      window.removeEventListener("online", onNetwork)
      window.removeEventListener("offline", onNetwork)
      window.removeEventListener("hashchange", onHash)
    })
    this.renderStatus(client.status)
    this.route()
  }

  destroy(): void {
    for (const cleanup of this.cleanups.splice(0)) cleanup()
    this.view?.destroy()
  }

  /** `#c=<id>` opens a conversation, so a reload comes back to it. */
  private route(): void {
    const id = new URLSearchParams(location.hash.slice(1)).get("c") ?? undefined
    if (id === this.openId) return
    if (id) this.openConversation(this.client.conversation(id))
    else this.closeConversation()
  }

  private openConversation(conversation: Conversation): void {
    this.view?.destroy()
    this.openId = conversation.id
    if (location.hash !== `#c=${encodeURIComponent(conversation.id)}`)
      location.hash = `c=${encodeURIComponent(conversation.id)}`
    const inbox = this.client.inbox
    this.view = new ConversationView(this.client, conversation, {
      back: () => {
        location.hash = ""
      },
      left: () => {
        location.hash = ""
        this.notify("You left the conversation.")
      },
      failed: (error) => this.notify(explain(error)),
      mute: {
        isMuted: () => inbox.items.some((i) => i.conversationId === conversation.id && i.muted),
        set: (muted: boolean) => inbox.mute(conversation.id, muted),
      },
    })
    replaceChildren(this.pane, this.view.element)
    this.element.dataset.view = "conversation"
    this.renderList(this.entries)
  }

  private closeConversation(): void {
    this.view?.destroy()
    this.view = undefined
    this.openId = undefined
    this.showPlaceholder()
    this.element.dataset.view = "list"
    this.renderList(this.entries)
  }

  private showPlaceholder(): void {
    replaceChildren(
      this.pane,
      h(
        "div",
        { class: "placeholder" },
        h("p", {}, "Pick a conversation, or start a new one."),
        h("p", { class: "hint" }, "Everything works offline; changes sync when the relay is reachable."),
      ),
    )
  }

  private toggleNewForm(): void {
    if (this.sidebarSlot.firstChild) {
      replaceChildren(this.sidebarSlot)
      return
    }
    const form = newConversationForm(this.client, {
      created: (conversation) => {
        replaceChildren(this.sidebarSlot)
        this.openConversation(conversation)
      },
      failed: (error) => this.notify(explain(error)),
      cancel: () => replaceChildren(this.sidebarSlot),
    })
    replaceChildren(this.sidebarSlot, form)
    form.querySelector<HTMLInputElement>("[data-testid=new-participants]")?.focus()
  }

  private renderStatus(status: ClientStatus): void {
    const shown = navigator.onLine ? status : "offline"
    this.status.dataset.status = shown
    this.status.textContent =
      shown === "online" ? "Online" : shown === "connecting" ? "Connecting…" : "Offline"
    this.status.title =
      shown === "online"
        ? "Connected to the relay"
        : "Not connected: you can keep chatting, messages go out when back online"
  }

  private renderList(entries: readonly ListEntry[]): void {
    this.entries = entries
    this.view?.refreshHeader()
    const unread = entries.reduce((n, e) => n + (e.muted ? 0 : e.unread), 0)
    document.title = unread > 0 ? `(${unread}) Parley` : "Parley"
    const me = this.client.user
    const visible = entries.filter((e) => !e.deleted)
    if (visible.length === 0) {
      replaceChildren(
        this.listElement,
        h("li", { class: "empty", "data-testid": "no-conversations" }, "No conversations yet."),
      )
      return
    }
    replaceChildren(
      this.listElement,
      ...visible.map((entry) => {
        const title = displayTitle(entry, me)
        const last = entry.lastMessage
        const preview = last
          ? `${last.author === me ? "You" : last.author}: ${last.deleted ? "message deleted" : last.text}`
          : ""
        const active = entry.conversationId === this.openId
        return h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: `conversation-item${active ? " active" : ""}${entry.unread > 0 ? " unread" : ""}`,
              "data-testid": "conversation-item",
              "data-conversation-id": entry.conversationId,
              "aria-current": active ? "true" : undefined,
              onclick: () => this.openConversation(this.client.conversation(entry.conversationId)),
            },
            h("span", { class: "avatar", "aria-hidden": "true" }, initials(title)),
            h(
              "span",
              { class: "summary" },
              h(
                "span",
                { class: "line" },
                h("span", { class: "title", "data-testid": "conversation-item-title" }, title),
                entry.muted ? h("span", { class: "muted-label", "data-testid": "muted" }, "muted") : null,
                h("time", { class: "when" }, last ? formatTime(entry.lastActivityAt) : ""),
              ),
              h(
                "span",
                { class: "line" },
                h("span", { class: "preview", "data-testid": "conversation-preview" }, preview),
                entry.unread > 0
                  ? h(
                      "span",
                      {
                        class: "badge",
                        "data-testid": "unread-badge",
                        "aria-label": `${entry.unread} unread`,
                      },
                      String(entry.unread),
                    )
                  : null,
              ),
            ),
          ),
        )
      }),
    )
  }

  /** A short message at the bottom of the screen. */
  notify(text: string): void {
    this.toast.textContent = text
    this.toast.hidden = false
    clearTimeout(this.toastTimer)
    this.toastTimer = setTimeout(() => {
      this.toast.hidden = true
    }, 4000)
  }
}
