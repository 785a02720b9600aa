/** What `h` accepts as children: nodes, text, and nothing (skipped). */
export type Child = Node | string | number | false | null | undefined

type Attributes = Record<string, string | number | boolean | undefined | EventListener>

/**
 * Creates an element: `h("button", { class: "x", onclick: fn, "data-testid": "send" }, "Send")`.
 * `on*` attributes become listeners; `false` / `undefined` attributes are left out.
 */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag)
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === false) continue
    if (typeof value === "function") element.addEventListener(name.slice(2), value)
    else if (name === "value" && "value" in element) (element as HTMLInputElement).value = String(value)
    else element.setAttribute(name, value === true ? "" : String(value))
  }
  append(element, children)
  return element
}

/** Appends children, skipping empty ones. */
export function append(parent: Node, children: readonly Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue
    parent.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)))
  }
}

/** Replaces all children of `parent`. */
export function replaceChildren(parent: Element, ...children: Child[]): void {
  parent.replaceChildren()
  append(parent, children)
}

/** "10:42" for today, "Mon 10:42" this week, else a date. */
export function formatTime(at: number, now = Date.now()): string {
  const date = new Date(at)
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
  if (new Date(now).toDateString() === date.toDateString()) return time
  if (now - at < 6 * 24 * 3600_000) return `${date.toLocaleDateString([], { weekday: "short" })} ${time}`
  return date.toLocaleDateString()
}
