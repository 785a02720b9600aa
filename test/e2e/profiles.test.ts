import { expect, it } from "vitest"
import { DemoUser, screenshots } from "./demo-page.js"
import { useDemo } from "./demo-server.js"

// Profiles in the demo app, in real Chromium against a real relay process: a
// user sets a display name and picture; the other user sees the name in the
// conversation header, the list preview, typing, group messages and the
// people panel (with presence). Screenshots: test-results/e2e/.

const DESKTOP = { width: 960, height: 680 }
const PHONE = { width: 375, height: 720 }

const demo = useDemo()
const screenshot = screenshots("profiles")

it("shows a user's display name wherever the other user sees them", { timeout: 180_000 }, async () => {
  const ivy = await DemoUser.open(demo.browser, demo.relay.url, "ivy", DESKTOP)
  const jack = await DemoUser.open(demo.browser, demo.relay.url, "jack", PHONE)

  // An invalid picture is refused with the reason, and nothing changes.
  await ivy.page.getByTestId("current-user").click()
  await ivy.page.getByTestId("profile-name").fill("Ivy Green")
  await ivy.page.getByTestId("profile-picture").fill("javascript:alert(1)")
  await ivy.page.getByTestId("profile-save").click()
  await ivy.page.getByTestId("profile-error").getByText("https").waitFor()
  await ivy.page.getByTestId("profile-picture").fill("")
  await ivy.page.getByTestId("profile-save").click()
  await ivy.page.getByTestId("profile-editor").waitFor({ state: "detached" })
  await ivy.page.getByTestId("current-user").getByText("Ivy Green").waitFor()

  await ivy.startDirect("jack")
  await ivy.send("Hello from Ivy")
  await jack.startDirect("ivy")
  await jack.page.getByTestId("conversation-title").getByText("Ivy Green", { exact: true }).waitFor()
  await jack.message("Hello from Ivy").waitFor()

  await ivy.page.getByTestId("composer-input").fill("typing…")
  await jack.page.getByTestId("typing-indicator").getByText("Ivy Green is typing…").waitFor()
  await ivy.page.getByTestId("composer-input").fill("")

  // Presence from the SDK: ivy is online, in the header and the people panel, under her name.
  await jack.page.getByTestId("conversation-subtitle").getByText("online", { exact: false }).waitFor()
  await jack.page.getByTestId("participants-toggle").click()
  const ivyRow = jack.page.locator("[data-testid=participant][data-user=ivy]")
  await ivyRow.getByTestId("participant-name").getByText("Ivy Green").waitFor()
  await ivyRow.locator("[data-presence=online]").waitFor()
  await screenshot("direct-names-presence", ivy, jack)
  await jack.page.getByTestId("participants-toggle").click()

  // The list: the conversation is called by her name, the preview says who wrote.
  await jack.back()
  await jack
    .listItem("Ivy Green")
    .getByTestId("conversation-preview")
    .getByText("Ivy Green: Hello from Ivy")
    .waitFor()

  // In a group, others' messages carry the author's name.
  await ivy.createGroup("Book club", ["jack"])
  await ivy.send("Next book?")
  await jack.openConversation("Book club")
  await jack.message("Next book?").getByTestId("message-author").getByText("Ivy Green").waitFor()

  // A rename reaches the open conversation at once.
  await ivy.page.getByTestId("current-user").click()
  await ivy.page.getByTestId("profile-name").fill("Ivy G.")
  await ivy.page.getByTestId("profile-save").click()
  await jack.message("Next book?").getByTestId("message-author").getByText("Ivy G.").waitFor()
  expect(await jack.page.getByTestId("message-author").allInnerTexts()).toEqual(["Ivy G."])
  await screenshot("group-author-names", ivy, jack)
  await ivy.close()
  await jack.close()
})

it("takes the display name given at sign-in (the token's name claim) as the default profile", {
  timeout: 120_000,
}, async () => {
  const context = await demo.browser.newContext({ viewport: DESKTOP })
  context.setDefaultTimeout(30_000)
  const page = await context.newPage()
  await page.goto(demo.relay.url)
  await page.getByTestId("sign-in-user").fill("kim")
  await page.getByTestId("sign-in-display-name").fill("Kim Lee")
  await page.getByTestId("sign-in-submit").click()
  await page.getByTestId("current-user").getByText("Kim Lee").waitFor()
  const lena = await DemoUser.open(demo.browser, demo.relay.url, "lena", DESKTOP)
  await lena.startDirect("kim")
  await lena.send("Hi Kim")
  // Kim's client writes her profile into the conversation once it opens there.
  await page.getByTestId("conversation-item").first().click()
  await page.getByTestId("message-body").getByText("Hi Kim", { exact: true }).waitFor()
  await lena.page.getByTestId("conversation-title").getByText("Kim Lee", { exact: true }).waitFor()
  await lena.close()
  await context.close()
})
