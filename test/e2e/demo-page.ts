import { mkdirSync, rmSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import type { Browser, BrowserContext, Locator, Page } from "playwright-core"

/** Where step screenshots go (git-ignored): one folder per test file. */
export const SCREENSHOTS = fileURLToPath(new URL("../../test-results/e2e/", import.meta.url))

/**
 * Returns `shot(name, ...users)`, which saves a screenshot of each user's page as
 * `test-results/e2e/<suite>/NN-name-user.png`, for a person to look at. Clears the folder first.
 */
export function screenshots(suite: string): (name: string, ...users: DemoUser[]) => Promise<void> {
  const folder = join(SCREENSHOTS, suite)
  rmSync(folder, { recursive: true, force: true })
  mkdirSync(folder, { recursive: true })
  let step = 0
  return async (name, ...users) => {
    step++
    for (const user of users)
      await user.page.screenshot({
        path: join(folder, `${String(step).padStart(2, "0")}-${name}-${user.name}.png`),
      })
  }
}

/** One user in their own browser context (own storage, own service worker), driving the demo. */
export class DemoUser {
  private constructor(
    readonly name: string,
    readonly context: BrowserContext,
    readonly page: Page,
    readonly _url: string,
  ) {}

  static async open(
    browser: Browser,
    url: string,
    name: string,
    viewport: { width: number; height: number },
  ): Promise<DemoUser> {
    const context = await browser.newContext({ viewport })
    context.setDefaultTimeout(30_000)
    const page = await context.newPage()
    page.on("pageerror", (error) => console.error(`[${name}] page error:`, error))
    const user = new DemoUser(name, context, page, url)
    await page.goto(url)
    await page.getByTestId("sign-in-user").fill(name)
    await page.getByTestId("sign-in-submit").click()
    await page.getByTestId("current-user").filter({ hasText: name }).waitFor()
    // The app shell must be cached before the test may load it offline.
    await page.waitForFunction(async () => {
      const registration = await navigator.serviceWorker.getRegistration()
      return registration?.active?.state === "activated"
    })
    return user
  }

  /** The connection pill reaches `status` ("online", "offline", "connecting"). */
  async connection(status: string): Promise<void> {
    await this.page.locator(`[data-testid=connection-status][data-status=${status}]`).waitFor()
  }

  async setOffline(offline: boolean): Promise<void> {
    await this.context.setOffline(offline)
  }

  /** The row of a conversation in the list, by its shown title. */
  listItem(title: string): Locator {
    return this.page.getByTestId("conversation-item").filter({
      has: this.page.getByTestId("conversation-item-title").getByText(title, { exact: true }),
    })
  }

  async createGroup(title: string, participants: readonly string[]): Promise<void> {
    await this.page.getByTestId("new-conversation").click()
    await this.page.getByTestId("new-kind-group").check({ force: true })
    await this.page.getByTestId("new-participants").fill(participants.join(", "))
    await this.page.getByTestId("new-title").fill(title)
    await this.page.getByTestId("new-create").click()
    await this.page.getByTestId("conversation-title").filter({ hasText: title }).waitFor()
  }

  /** Opens the direct conversation with `other` from the "New" form (found or created: the same on both sides). */
  async startDirect(other: string): Promise<void> {
    await this.page.getByTestId("new-conversation").click()
    await this.page.getByTestId("new-participants").fill(other)
    await this.page.getByTestId("new-create").click()
    await this.page.getByTestId("conversation-title").filter({ hasText: other }).waitFor()
  }

  /** Taps a message to show its actions and clicks one (`message-reply`, `message-edit`, `react`...). */
  async messageAction(text: string, action: string, emoji?: string): Promise<void> {
    const message = this.message(text)
    const button = emoji
      ? message.locator(`[data-testid=${action}][data-emoji="${emoji}"]`)
      : message.getByTestId(action)
    if (!(await button.isVisible())) await message.locator(".bubble").click()
    await button.click()
  }

  async openConversation(title: string): Promise<void> {
    await this.listItem(title).click()
    await this.page.getByTestId("conversation-title").filter({ hasText: title }).waitFor()
  }

  /** Back to the list (on a phone-sized window the list and the conversation are separate screens). */
  async back(): Promise<void> {
    await this.page.getByTestId("back").click()
    await this.page.getByTestId("conversation-list").waitFor()
  }

  async send(text: string): Promise<void> {
    await this.page.getByTestId("composer-input").fill(text)
    await this.page.getByTestId("composer-send").click()
    await this.message(text).waitFor()
  }

  /** The message whose body is exactly `text`. */
  message(text: string): Locator {
    return this.page.getByTestId("message").filter({
      has: this.page.getByTestId("message-body").getByText(text, { exact: true }),
    })
  }

  /** Waits until the user's own message `text` shows `status` (its tick). */
  async messageStatus(text: string, status: string): Promise<void> {
    await this.page
      .locator(`[data-testid=message][data-status=${status}]`)
      .filter({ has: this.page.getByTestId("message-body").getByText(text, { exact: true }) })
      .waitFor()
  }

  /** The bodies of the listed messages, in order. */
  messageBodies(): Promise<string[]> {
    return this.page.getByTestId("message-body").allInnerTexts()
  }

  /** Waits until the message list holds exactly `bodies`, in this order. */
  async messagesAre(bodies: readonly string[]): Promise<void> {
    await this.page.waitForFunction(
      (expected) =>
        JSON.stringify(
          [...document.querySelectorAll("[data-testid=message-body]")].map(
            (e) => (e as HTMLElement).textContent,
          ),
        ) === JSON.stringify(expected),
      bodies,
      { timeout: 30_000 },
    )
  }

  /**
   * Records every status a message element shows from now on (a new element,
   * or a new `data-status` on one), so that a test can check the sequence.
   */
  async recordStatuses(): Promise<void> {
    await this.page.evaluate(() => {
      const log: { body: string; status: string }[] = []
      ;(window as unknown as { statusLog: typeof log }).statusLog = log
      const note = (element: Element) => {
        const body = element.querySelector("[data-testid=message-body]")?.textContent ?? ""
        const status = element.getAttribute("data-status")
        const last = log.filter((entry) => entry.body === body).pop()
        if (status && last?.status !== status) log.push({ body, status })
      }
      document.querySelectorAll("[data-testid=message]").forEach(note)
      new MutationObserver((mutations) => {
        for (const mutation of mutations) {
          if (mutation.type === "attributes" && mutation.target instanceof Element) note(mutation.target)
          for (const node of mutation.addedNodes)
            if (node instanceof Element && node.matches("[data-testid=message]")) note(node)
        }
      }).observe(document.body, {
        childList: true,
        subtree: true,
        attributes: true,
        attributeFilter: ["data-status"],
      })
    })
  }

  /** The statuses `text` showed since {@link recordStatuses}, in order. */
  async statusesOf(text: string): Promise<string[]> {
    return this.page.evaluate(
      (body) =>
        (window as unknown as { statusLog: { body: string; status: string }[] }).statusLog
          .filter((entry) => entry.body === body)
          .map((entry) => entry.status),
      text,
    )
  }

  async close(): Promise<void> {
    await this.context.close()
  }
}
