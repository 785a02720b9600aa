import type { ChatClient, ChatMessage, Conversation } from "@parley/client"
import { h, replaceChildren } from "./dom.js"
import { detail, explain } from "./errors.js"
import { type MessageContext, renderKey, renderMessage } from "./message-view.js"
import { participantsPanel } from "./participants-panel.js"
import { displayTitle } from "./titles.js"

/** How many of the latest messages the view shows. */
const WINDOW = 200

/** What the conversation view reports to the app. */
export interface ConversationViewEvents {
  back(): void
  left(): void
  failed(error: unknown): void
  /** The user's mute preference of this conversation (kept in their inbox, on every device). */
  mute: { isMuted(): boolean; set(muted: boolean): void }
}

/** One open conversation: header, messages, typing indicator, composer, participants panel. */
export class ConversationView {
  readonly element: HTMLElement
  private readonly cleanups: (() => void)[] = []
  private readonly list = h("ol", { class: "messages", "data-testid": "message-list", "aria-live": "polite" })
  private readonly rendered = new Map<string, { key: string; element: HTMLElement }>()
  private readonly typingLine = h("div", { class: "typing", "data-testid": "typing-indicator" })
  private readonly input = h("textarea", {
    rows: 1,
    placeholder: "Message",
    "data-testid": "composer-input",
    "aria-label": "Message",
  })
  private readonly contextLine = h("div", { class: "composer-context", "data-testid": "composer-context" })
  private readonly panelSlot = h("div", { class: "panel-slot" })
  private readonly title = h("h2", { "data-testid": "conversation-title" })
  private readonly subtitle = h("p", { class: "subtitle", "data-testid": "conversation-subtitle" })
  private mode: { kind: "new" } | { kind: "reply" | "edit"; message: ChatMessage } = { kind: "new" }
  private panel: { element: HTMLElement; destroy(): void } | undefined
  private readonly muteButton: HTMLButtonElement

  constructor(
    private readonly client: ChatClient,
    private readonly conversation: Conversation,
    private readonly events: ConversationViewEvents,
  ) {
    const muteButton = h("button", {
      type: "button",
      class: "small",
      "data-testid": "mute-toggle",
      onclick: () => {
        events.mute.set(!events.mute.isMuted())
        this.renderHeader()
      },
    })
    this.element = h(
      "section",
      { class: "conversation", "data-testid": "conversation-view", "data-conversation-id": conversation.id },
      h(
        "header",
        { class: "conversation-header" },
        h(
          "button",
          {
            type: "button",
            class: "icon back",
            "data-testid": "back",
            "aria-label": "Back",
            onclick: events.back,
          },
          "‹",
        ),
        h("div", { class: "heading" }, this.title, this.subtitle),
        muteButton,
        h(
          "button",
          {
            type: "button",
            class: "small",
            "data-testid": "participants-toggle",
            "aria-expanded": "false",
            onclick: () => this.togglePanel(),
          },
          "People",
        ),
      ),
      h("div", { class: "conversation-body" }, h("div", { class: "scroller" }, this.list), this.panelSlot),
      this.typingLine,
      this.composer(),
    )
    this.muteButton = muteButton
    this.renderHeader()
    void this.open()
  }

  /** Stops listening; the conversation handle stays open in the client for the inbox and statuses. */
  destroy(): void {
    for (const cleanup of this.cleanups.splice(0)) cleanup()
    this.panel?.destroy()
  }

  private async open(): Promise<void> {
    const conversation = this.conversation
    this.cleanups.push(
      conversation.on("state", ({ state }) => {
        this.renderHeader()
        if (state.state === "unavailable") this.renderUnavailable(state.error)
        else if (state.state === "ready") this.clearUnavailable()
      }),
    )
    try {
      await conversation.ready()
    } catch (error) {
      this.renderUnavailable(error)
      return
    }
    // Closed (another conversation picked) while loading.
    if (this.cleanups.length === 0) return
    this.renderHeader()
    this.cleanups.push(
      conversation.watchMessages({ last: WINDOW }, (messages) => this.renderMessages(messages)),
    )
    this.cleanups.push(
      conversation.on("typing", ({ users }) => this.renderTyping(users)),
      conversation.on("change", ({ events }) => {
        if (events.some((e) => e.type.startsWith("participants") || e.type.startsWith("conversation")))
          this.renderHeader()
      }),
      conversation.on("error", ({ error }) => this.events.failed(error)),
    )
    const onVisible = () => this.markRead()
    document.addEventListener("visibilitychange", onVisible)
    window.addEventListener("focus", onVisible)
    this.cleanups.push(() => {
      document.removeEventListener("visibilitychange", onVisible)
      window.removeEventListener("focus", onVisible)
    })
    this.markRead()
    this.input.focus()
  }

  /** The relay no longer lets the user in (removed, deleted...): say so, and stop offering to write. */
  private renderUnavailable(error: unknown): void {
    this.clearUnavailable()
    this.typingLine.before(
      h(
        "p",
        { class: "banner", "data-testid": "conversation-unavailable", title: detail(error) },
        `This conversation is unavailable: ${explain(error)}.`,
      ),
    )
    this.input.disabled = true
    this.element.querySelector<HTMLButtonElement>("[data-testid=composer-send]")?.setAttribute("disabled", "")
  }

  private clearUnavailable(): void {
    this.element.querySelector("[data-testid=conversation-unavailable]")?.remove()
    this.input.disabled = false
    this.element.querySelector("[data-testid=composer-send]")?.removeAttribute("disabled")
  }

  /** Re-reads the header's fields (title, participants, mute) after a change elsewhere, e.g. the inbox. */
  refreshHeader(): void {
    this.renderHeader()
  }

  private renderHeader(): void {
    const info = this.conversation.info
    const me = this.client.user
    const participants = this.conversation.participants
    this.title.textContent = info
      ? displayTitle(
          {
            conversationId: info.id,
            title: info.title,
            participants: { first: participants.map((p) => p.user) },
          },
          me,
        )
      : displayTitle({ conversationId: this.conversation.id, title: "" }, me)
    this.subtitle.textContent = info
      ? info.kind === "direct"
        ? "Direct conversation"
        : `${participants.length} participants`
      : "Loading…"
    const muted = this.events.mute.isMuted()
    this.muteButton.textContent = muted ? "Unmute" : "Mute"
    this.muteButton.dataset.muted = String(muted)
  }

  private context(): MessageContext {
    const conversation = this.conversation
    return {
      me: this.client.user,
      role: conversation.role,
      group: conversation.info?.kind === "group",
      quoted: (id) => conversation.message(id),
      reply: (message) => this.setMode({ kind: "reply", message }),
      edit: (message) => this.setMode({ kind: "edit", message }),
      remove: (message) => this.attempt(() => conversation.deleteMessage(message.id)),
      toggleReaction: (message, emoji) =>
        this.attempt(() => {
          if (message.reactions[emoji]?.includes(this.client.user)) conversation.unreact(message.id, emoji)
          else conversation.react(message.id, emoji)
        }),
      jumpTo: (id) => {
        const target = this.rendered.get(id)?.element
        target?.scrollIntoView({ block: "center", behavior: "smooth" })
        target?.classList.add("flash")
        setTimeout(() => target?.classList.remove("flash"), 1200)
      },
    }
  }

  /** Keyed re-render: an unchanged message keeps its element (and its open actions). */
  private renderMessages(messages: readonly ChatMessage[]): void {
    const scroller = this.list.parentElement!
    const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40
    const context = this.context()
    const keep = new Set<string>()
    let previous: Element | null = null
    if (messages.length === 0) {
      replaceChildren(
        this.list,
        h("li", { class: "notice", "data-testid": "no-messages" }, "No messages yet. Say hello!"),
      )
      this.rendered.clear()
      return
    }
    this.list.querySelector("[data-testid=no-messages]")?.remove()
    for (const message of messages) {
      keep.add(message.id)
      const key = renderKey(message, context)
      let entry = this.rendered.get(message.id)
      if (!entry || entry.key !== key) {
        const element = renderMessage(message, context)
        if (entry?.element.classList.contains("open")) element.classList.add("open")
        entry?.element.replaceWith(element)
        entry = { key, element }
        this.rendered.set(message.id, entry)
      }
      const expected: Element | null = previous ? previous.nextElementSibling : this.list.firstElementChild
      if (expected !== entry.element) {
        if (previous) previous.after(entry.element)
        else this.list.prepend(entry.element)
      }
      previous = entry.element
    }
    for (const [id, entry] of this.rendered) {
      if (keep.has(id)) continue
      entry.element.remove()
      this.rendered.delete(id)
    }
    const last = messages[messages.length - 1]
    if (atBottom || last?.author === this.client.user) scroller.scrollTop = scroller.scrollHeight
    this.markRead()
  }

  private renderTyping(users: readonly string[]): void {
    this.typingLine.dataset.users = users.join(",")
    this.typingLine.textContent =
      users.length === 0
        ? ""
        : users.length === 1
          ? `${users[0]} is typing…`
          : `${users.slice(0, -1).join(", ")} and ${users[users.length - 1]} are typing…`
  }

  /** Reading happens when the conversation is on screen: move the read marker. */
  private markRead(): void {
    const conversation = this.conversation
    if (document.visibilityState !== "visible" || conversation.state.state !== "ready") return
    if (!conversation.role || conversation.unreadCount === 0) return
    this.attempt(() => conversation.markRead())
  }

  private composer(): HTMLElement {
    const input = this.input
    input.addEventListener("input", () => {
      if (input.value.trim() && this.mode.kind !== "edit") this.conversation.typing()
      input.style.height = "auto"
      input.style.height = `${Math.min(input.scrollHeight, 140)}px`
    })
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault()
        this.submit()
      } else if (event.key === "Escape") this.setMode({ kind: "new" })
    })
    return h(
      "footer",
      { class: "composer" },
      this.contextLine,
      h(
        "form",
        {
          class: "composer-form",
          onsubmit: (event: Event) => {
            event.preventDefault()
            this.submit()
          },
        },
        input,
        h("button", { type: "submit", class: "primary", "data-testid": "composer-send" }, "Send"),
      ),
    )
  }

  private submit(): void {
    const body = this.input.value.trim()
    if (!body) return
    const mode = this.mode
    const ok = this.attempt(() => {
      if (mode.kind === "edit") this.conversation.edit(mode.message.id, body)
      else this.conversation.send(body, mode.kind === "reply" ? { replyTo: mode.message.id } : {})
    })
    if (!ok) return
    this.input.value = ""
    this.input.style.height = "auto"
    this.setMode({ kind: "new" })
  }

  private setMode(mode: ConversationView["mode"]): void {
    this.mode = mode
    const submit = this.element.querySelector<HTMLButtonElement>("[data-testid=composer-send]")
    if (submit) submit.textContent = mode.kind === "edit" ? "Save" : "Send"
    this.contextLine.dataset.mode = mode.kind
    if (mode.kind === "new") {
      replaceChildren(this.contextLine)
      return
    }
    if (mode.kind === "edit") this.input.value = mode.message.body
    replaceChildren(
      this.contextLine,
      h(
        "span",
        { class: "context-text" },
        mode.kind === "edit" ? "Editing" : `Replying to ${mode.message.author}: `,
        mode.kind === "reply" ? h("em", {}, mode.message.body.slice(0, 80)) : null,
      ),
      h(
        "button",
        {
          type: "button",
          class: "link",
          "data-testid": "composer-cancel",
          onclick: () => {
            if (mode.kind === "edit") this.input.value = ""
            this.setMode({ kind: "new" })
          },
        },
        "Cancel",
      ),
    )
    this.input.focus()
  }

  private togglePanel(): void {
    if (this.panel) {
      this.panel.destroy()
      this.panel = undefined
      replaceChildren(this.panelSlot)
      this.element.classList.remove("with-panel")
      this.setToggle(false)
      return
    }
    this.panel = participantsPanel(this.conversation, this.client.user, {
      failed: (error) => this.events.failed(error),
      left: () => this.events.left(),
    })
    replaceChildren(this.panelSlot, this.panel.element)
    this.element.classList.add("with-panel")
    this.setToggle(true)
  }

  private setToggle(open: boolean): void {
    const toggle = this.element.querySelector("[data-testid=participants-toggle]")
    if (!toggle) return
    toggle.setAttribute("aria-expanded", String(open))
    toggle.textContent = open ? "Close" : "People"
  }

  private attempt(operation: () => void): boolean {
    try {
      operation()
      return true
    } catch (error) {
      this.events.failed(error)
      return false
    }
  }
}
