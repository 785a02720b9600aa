import type { ChatMessage, MessageStatus, Role } from "@parley/client"
import { formatTime, h } from "./dom.js"
import { detail, explain } from "./errors.js"
import { mayDelete, mayEdit } from "./permissions.js"

/** The emoji offered for reactions. */
export const REACTIONS = ["👍", "❤️", "😂", "🎉"] as const

const TICKS: Record<MessageStatus, string> = {
  pending: "◷",
  sent: "✓",
  delivered: "✓✓",
  read: "✓✓",
  failed: "⚠",
}

const STATUS_LABEL: Record<MessageStatus, string> = {
  pending: "Pending: not sent yet",
  sent: "Sent: saved by the relay",
  delivered: "Delivered",
  read: "Read",
  failed: "Failed",
}

/** What a message element needs from the conversation around it. */
export interface MessageContext {
  readonly me: string
  readonly role: Role | undefined
  readonly group: boolean
  /** The message a reply refers to, when this replica has it. */
  quoted(id: string): ChatMessage | undefined
  reply(message: ChatMessage): void
  edit(message: ChatMessage): void
  remove(message: ChatMessage): void
  toggleReaction(message: ChatMessage, emoji: string): void
  jumpTo(id: string): void
}

/** A stable key of everything a message element shows, to re-render only what changed. */
export const renderKey = (message: ChatMessage, context: MessageContext): string =>
  JSON.stringify([
    message,
    message.error?.message,
    context.role,
    message.replyTo ? context.quoted(message.replyTo)?.body : null,
  ])

/** One message: bubble, reply quote, reactions, status ticks and (on tap) its actions. */
export function renderMessage(message: ChatMessage, context: MessageContext): HTMLElement {
  const mine = message.author === context.me
  const deleted = message.deleted !== undefined
  const item = h("li", {
    class: `message${mine ? " mine" : ""}${deleted ? " deleted" : ""}`,
    "data-testid": "message",
    "data-message-id": message.id,
    "data-author": message.author,
    "data-status": message.status,
  })

  const quote = message.replyTo && !deleted ? renderQuote(message.replyTo, context) : null
  const body = deleted
    ? h("p", { class: "body", "data-testid": "message-body" }, h("em", {}, "Message deleted"))
    : h("p", { class: "body", "data-testid": "message-body" }, message.body)

  const close = () => {
    item.classList.remove("open")
    bubble.setAttribute("aria-expanded", "false")
  }
  const actions = deleted ? null : renderActions(message, context, close)
  const bubble = h(
    "div",
    {
      class: "bubble",
      tabindex: 0,
      "aria-expanded": "false",
      onclick: (event: Event) => {
        if ((event.target as Element).closest("button")) return
        const open = item.classList.toggle("open")
        bubble.setAttribute("aria-expanded", String(open))
      },
      onkeydown: (event: Event) => {
        if ((event as KeyboardEvent).key === "Enter") bubble.click()
      },
    },
    !mine && context.group ? h("span", { class: "author" }, message.author) : null,
    quote,
    body,
    h(
      "span",
      { class: "meta" },
      message.editedAt && !deleted ? h("span", { class: "edited" }, "edited") : null,
      h("time", { datetime: new Date(message.createdAt).toISOString() }, formatTime(message.createdAt)),
      message.status
        ? h(
            "span",
            {
              class: `ticks ${message.status}`,
              "data-testid": "message-status",
              title: STATUS_LABEL[message.status],
              "aria-label": STATUS_LABEL[message.status],
            },
            TICKS[message.status],
          )
        : null,
    ),
  )
  item.append(bubble)
  if (message.status === "failed")
    item.append(
      h(
        "p",
        {
          class: "failure",
          "data-testid": "message-error",
          title: message.error ? detail(message.error) : undefined,
        },
        `Not sent: ${message.error ? explain(message.error) : "refused by the relay"}`,
      ),
    )
  const reactions = Object.entries(message.reactions).filter(([, users]) => users.length > 0)
  if (reactions.length > 0 && !deleted)
    item.append(
      h(
        "div",
        { class: "reactions" },
        ...reactions.map(([emoji, users]) =>
          h(
            "button",
            {
              type: "button",
              class: `chip${(users as readonly string[]).includes(context.me) ? " own" : ""}`,
              "data-testid": "reaction",
              "data-emoji": emoji,
              title: users.join(", "),
              onclick: () => context.toggleReaction(message, emoji),
            },
            `${emoji} ${users.length}`,
          ),
        ),
      ),
    )
  if (actions) item.append(actions)
  return item
}

function renderQuote(id: string, context: MessageContext): HTMLElement {
  const quoted = context.quoted(id)
  const text = !quoted ? "Earlier message" : quoted.deleted ? "Message deleted" : quoted.body
  return h(
    "button",
    { type: "button", class: "quote", "data-testid": "message-quote", onclick: () => context.jumpTo(id) },
    quoted ? h("strong", {}, quoted.author) : null,
    h("span", { class: "quote-text" }, text),
  )
}

function renderActions(message: ChatMessage, context: MessageContext, close: () => void): HTMLElement {
  const button = (label: string, testId: string, action: () => void, extra: Record<string, string> = {}) =>
    h(
      "button",
      {
        type: "button",
        "data-testid": testId,
        onclick: () => {
          close()
          action()
        },
        ...extra,
      },
      label,
    )
  return h(
    "div",
    { class: "actions" },
    ...(context.role
      ? REACTIONS.map((emoji) =>
          button(emoji, "react", () => context.toggleReaction(message, emoji), {
            "data-emoji": emoji,
            "aria-label": `React ${emoji}`,
          }),
        )
      : []),
    context.role ? button("Reply", "message-reply", () => context.reply(message)) : null,
    mayEdit(context.me, message.author, context.role)
      ? button("Edit", "message-edit", () => context.edit(message))
      : null,
    mayDelete(context.me, message.author, context.role)
      ? button("Delete", "message-delete", () => context.remove(message), { class: "danger" })
      : null,
  )
}
