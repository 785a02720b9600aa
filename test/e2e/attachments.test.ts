import { expect, it, onTestFailed } from "vitest"
import { png } from "../../client/test/png.js"
import { DemoUser, screenshots } from "./demo-page.js"
import { useDemo } from "./demo-server.js"

// Files in the demo app (client/demo) in real Chromium against a real relay process: an image
// attached offline survives a reload and is uploaded once back online; the other side sees the
// thumbnail (its box sized before it loads) and the full image on click; a file dropped on the
// conversation arrives as a download link; someone outside the conversation gets no URL for it.
// Screenshots of each step: test-results/e2e/attachments/.

const DESKTOP = { width: 960, height: 680 }

const demo = useDemo()
const screenshot = screenshots("attachments")

it("an image attached offline survives a reload, arrives once with its thumbnail, and stays private", {
  timeout: 240_000,
}, async () => {
  const alice = await DemoUser.open(demo.browser, demo.relay.url, "alice", DESKTOP)
  const bob = await DemoUser.open(demo.browser, demo.relay.url, "bob", DESKTOP)
  await alice.createGroup("Holiday", ["bob"])
  await alice.send("Photos coming")
  await alice.messageStatus("Photos coming", "sent")
  await bob.openConversation("Holiday")
  await bob.message("Photos coming").waitFor()

  // Offline, Alice picks an image with the attach button and sends it: pending, with a local preview.
  await alice.setOffline(true)
  await alice.connection("offline")
  await alice.page.getByTestId("composer-file-input").setInputFiles({
    name: "beach.png",
    mimeType: "image/png",
    buffer: Buffer.from(png(640, 480)),
  })
  await alice.page.getByTestId("composer-file").getByText("beach.png").waitFor()
  await alice.send("The beach")
  await alice.messageStatus("The beach", "pending")
  const pending = alice.message("The beach").getByTestId("pending-files")
  await pending.locator("img.local-preview[src^='blob:']").waitFor()
  await screenshot("offline-pending-image", alice)

  // A reload while offline: the app comes from the service worker, the file from the SDK's IndexedDB.
  const reloaded = await alice.page.reload()
  expect(reloaded?.fromServiceWorker()).toBe(true)
  await alice.openConversation("Holiday")
  await alice.messageStatus("The beach", "pending")
  await alice
    .message("The beach")
    .getByTestId("pending-files")
    .locator("img.local-preview[src^='blob:']")
    .waitFor()
  await screenshot("offline-after-reload", alice)

  // Back online: uploaded, then written once; Bob sees the thumbnail in a box sized before it loaded.
  await alice.setOffline(false)
  await alice.connection("online")
  // Bob has the conversation open: it goes straight to read.
  await alice.messageStatus("The beach", "read")
  const image = bob.message("The beach").getByTestId("attachment-image")
  await bob.page.locator("[data-testid=attachment-image][data-loaded=true]").waitFor()
  const box = await image.boundingBox()
  expect(box).toMatchObject({ width: 240, height: 180 })
  const thumbnail = image.locator("img")
  expect(await thumbnail.evaluate((img) => (img as HTMLImageElement).naturalWidth)).toBeGreaterThan(0)
  const src = (await thumbnail.getAttribute("src")) ?? ""
  expect(src).toMatch(/\/v1\/attachments\/att_[0-9a-z]{26}\/thumbnail\?/)
  expect(await bob.messageBodies()).toEqual(["Photos coming", "The beach"])
  await alice.message("The beach").getByTestId("attachment-image").locator("img").waitFor()
  await screenshot("image-arrived", alice, bob)

  // The full image on click.
  await image.click()
  const full = bob.page.getByTestId("image-full")
  await full.waitFor()
  await bob.page.waitForFunction(() => {
    const img = document.querySelector("[data-testid=image-full]") as HTMLImageElement | null
    return img?.complete && img.naturalWidth === 640
  })
  await screenshot("full-image", bob)
  await bob.page.keyboard.press("Escape")
  await full.waitFor({ state: "detached" })

  // Bob drops a text file on the conversation: Alice gets a download link with its name and size.
  await bob.page.evaluate(() => {
    const transfer = new DataTransfer()
    transfer.items.add(new File(["agenda: swim, eat, sleep"], "agenda.txt", { type: "text/plain" }))
    const target = document.querySelector("[data-testid=conversation-view]")!
    target.dispatchEvent(
      new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }),
    )
    target.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }))
  })
  await bob.page.getByTestId("composer-file").getByText("agenda.txt").waitFor()
  await bob.send("Plan attached")
  const link = alice.message("Plan attached").getByTestId("attachment-file")
  await link.getByText("agenda.txt").waitFor()
  await link.getByText("24 B").waitFor()
  await alice.page.waitForFunction(() =>
    document
      .querySelector("[data-testid=attachment-file]")
      ?.getAttribute("href")
      ?.includes("/v1/attachments/"),
  )
  const href = (await link.getAttribute("href"))!
  const text = await alice.page.evaluate((url) => fetch(url).then((r) => r.text()), href)
  expect(text).toBe("agenda: swim, eat, sleep")
  await screenshot("file-link", alice)

  // Alice pastes an image into the composer (as from a screenshot tool): it is attached, not typed.
  await alice.page.getByTestId("composer-input").focus()
  await alice.page.evaluate(
    (bytes) => {
      const transfer = new DataTransfer()
      transfer.items.add(new File([new Uint8Array(bytes)], "image.png", { type: "image/png" }))
      document
        .querySelector("[data-testid=composer-input]")!
        .dispatchEvent(
          new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }),
        )
    },
    Array.from(png(120, 90)),
  )
  await alice.page.getByTestId("composer-file").getByText("image.png").waitFor()
  await alice.send("Pasted")
  await bob.message("Pasted").locator("[data-testid=attachment-image][data-loaded=true]").waitFor()
  expect(await bob.message("Pasted").getByTestId("attachment-image").boundingBox()).toMatchObject({
    width: 120,
    height: 90,
  })

  // A file the relay refuses (HTML, whatever its name says): the message fails with the reason; retry sends the text.
  await alice.page.getByTestId("composer-file-input").setInputFiles({
    name: "cute.png",
    mimeType: "image/png",
    buffer: Buffer.from("<html><script>alert(1)</script></html>"),
  })
  await alice.send("Not really a picture")
  await alice.messageStatus("Not really a picture", "failed")
  const failure = alice.message("Not really a picture").getByTestId("message-error")
  await failure.getByText(/text\/html/).waitFor()
  await screenshot("refused-file", alice)
  await failure.getByTestId("upload-retry").click()
  await bob.message("Not really a picture").waitFor()
  expect(await bob.message("Not really a picture").getByTestId("attachments").count()).toBe(0)

  // Carol is not in the conversation: the relay gives her no URL and no bytes for the image.
  const id = /\/v1\/attachments\/(att_[0-9a-z]{26})\//.exec(src)![1]!
  const carol = await DemoUser.open(demo.browser, demo.relay.url, "carol", DESKTOP)
  const refused = await carol.page.evaluate(async (attachment) => {
    const { token } = (await (await fetch("/dev/token?user=carol")).json()) as { token: string }
    const headers = { authorization: `Bearer ${token}` }
    const signed = await fetch(`/v1/attachments/${attachment}/signed-url`, { method: "POST", headers })
    const bytes = await fetch(`/v1/attachments/${attachment}`, { headers })
    return [signed.status, bytes.status]
  }, id)
  expect(refused).toEqual([404, 404])

  await Promise.all([alice.close(), bob.close(), carol.close()])
})

it("two tabs of one user with the same waiting image upload it once and write the message once", {
  timeout: 180_000,
}, async () => {
  const dana = await DemoUser.open(demo.browser, demo.relay.url, "dana", DESKTOP)
  const erin = await DemoUser.open(demo.browser, demo.relay.url, "erin", DESKTOP)
  await dana.createGroup("Two tabs", ["erin"])
  await dana.send("First")
  await dana.messageStatus("First", "sent")
  await erin.openConversation("Two tabs")

  await dana.setOffline(true)
  await dana.connection("offline")
  await dana.page.getByTestId("composer-file-input").setInputFiles({
    name: "twice.png",
    mimeType: "image/png",
    buffer: Buffer.from(png(300, 200)),
  })
  await dana.send("Sent from tab one")
  await dana.messageStatus("Sent from tab one", "pending")
  // A second tab (same browser profile: same IndexedDB) opens the conversation while still offline.
  const second = await dana.context.newPage()
  await second.goto(demo.relay.url)
  await second.getByTestId("current-user").filter({ hasText: "dana" }).waitFor()
  await second.getByTestId("conversation-item").filter({ hasText: "Two tabs" }).click()
  await second
    .getByTestId("message")
    .filter({ hasText: "Sent from tab one" })
    .getByTestId("pending-files")
    .waitFor()

  // Both tabs come online at once: one uploads, the other waits and takes its record.
  const uploads: string[] = []
  const trace: string[] = []
  const started = Date.now()
  for (const [tab, page] of [
    ["one", dana.page],
    ["two", second],
  ] as const) {
    page.on("request", (request) => {
      if (request.method() === "POST" && /\/uploads$/.test(request.url())) uploads.push(request.url())
    })
    page.on("console", (m) =>
      trace.push(`${Date.now() - started}ms [${tab}] console.${m.type()}: ${m.text()}`),
    )
    page.on("response", (r) => {
      if (/\/v1\//.test(r.url()))
        trace.push(
          `${Date.now() - started}ms [${tab}] ${r.request().method()} ${r.url().replace(/\?.*/, "")} ${r.status()}`,
        )
    })
    page.on("requestfailed", (r) =>
      trace.push(`${Date.now() - started}ms [${tab}] failed ${r.url()} ${r.failure()?.errorText}`),
    )
  }
  erin.page.on("response", (r) => {
    if (/\/v1\//.test(r.url()))
      trace.push(
        `${Date.now() - started}ms [erin] ${r.request().method()} ${r.url().replace(/\?.*/, "")} ${r.status()}`,
      )
  })
  onTestFailed(() => console.error(`two tabs, what the tabs did:\n${trace.join("\n")}`))
  await dana.setOffline(false)
  // The tab that found the other uploading backs off (up to 30 s with the default delays), as may the
  // uploading one after a transient failure on a loaded machine: what counts is once, not how soon.
  await erin.page.locator("[data-testid=attachment-image][data-loaded=true]").waitFor({ timeout: 90_000 })
  for (const page of [dana.page, second])
    await page
      .getByTestId("message")
      .filter({ hasText: "Sent from tab one" })
      .getByTestId("attachment-image")
      .waitFor()
  await erin.messagesAre(["First", "Sent from tab one"])
  // Give the tab that waited its retry: it must not upload or write the message again.
  await new Promise((resolve) => setTimeout(resolve, 3_000))
  expect(uploads).toHaveLength(1)
  await erin.messagesAre(["First", "Sent from tab one"])
  expect(await second.getByTestId("message").filter({ hasText: "Sent from tab one" }).count()).toBe(1)
  await Promise.all([dana.close(), erin.close()])
})
