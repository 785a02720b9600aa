import { expect, it } from "vitest"
import { DemoUser, screenshots } from "./demo-page.js"
import { useDemo } from "./demo-server.js"

// The demo app (client/demo) in real Chromium against a real relay process:
// replies, reactions, edits and deletions between two users of a direct
// conversation, and the buttons each may see. Screenshots: test-results/e2e/.

const DESKTOP = { width: 960, height: 680 }
const PHONE = { width: 375, height: 720 }

const demo = useDemo()
const screenshot = screenshots("message-actions")

it("replies, reactions, edits, deletions, presence and muting in a direct conversation", {
  timeout: 180_000,
}, async () => {
  const dana = await DemoUser.open(demo.browser, demo.relay.url, "dana", DESKTOP)
  const erin = await DemoUser.open(demo.browser, demo.relay.url, "erin", PHONE)
  await dana.startDirect("erin")
  await dana.send("Lunch at noon?")
  await erin.startDirect("dana")
  await erin.message("Lunch at noon?").waitFor()

  await erin.messageAction("Lunch at noon?", "message-reply")
  await erin.page.getByTestId("composer-context").getByText("Replying to dana").waitFor()
  await erin.send("Yes, see you there")
  await dana.message("Yes, see you there").getByTestId("message-quote").getByText("Lunch at noon?").waitFor()

  await erin.messageAction("Lunch at noon?", "react", "👍")
  await dana
    .message("Lunch at noon?")
    .locator('[data-testid=reaction][data-emoji="👍"]')
    .getByText("1")
    .waitFor()

  await dana.messageAction("Lunch at noon?", "message-edit")
  await dana.page.getByTestId("composer-input").fill("Lunch at 12:30?")
  await dana.page.getByTestId("composer-send").click()
  await erin.message("Lunch at 12:30?").getByText("edited").waitFor()
  await screenshot("direct-reply-reaction-edit", dana, erin)

  // Only the author may edit (both participants of a direct conversation are owners, so both may delete).
  await erin.message("Lunch at 12:30?").locator(".bubble").click()
  await erin.message("Lunch at 12:30?").getByTestId("message-delete").waitFor()
  expect(await erin.message("Lunch at 12:30?").getByTestId("message-edit").count()).toBe(0)

  await dana.messageAction("Lunch at 12:30?", "message-delete")
  await erin.message("Message deleted").waitFor()
  await erin.message("Yes, see you there").getByTestId("message-quote").getByText("Message deleted").waitFor()
  await erin.messagesAre(["Message deleted", "Yes, see you there"])

  // A direct conversation keeps its two participants: no add form, no remove buttons, no leaving,
  // and no roles shown (both are owners, which says nothing to a person). Presence: erin is online.
  await dana.page.getByTestId("participants-toggle").click()
  await dana.page.locator("[data-testid=participant][data-user=erin] [data-online=true]").waitFor()
  await dana.page.getByTestId("conversation-subtitle").getByText("online", { exact: false }).waitFor()
  expect(await dana.page.getByTestId("add-participant-form").count()).toBe(0)
  expect(await dana.page.getByTestId("remove-participant").count()).toBe(0)
  expect(await dana.page.getByTestId("leave-conversation").count()).toBe(0)
  expect(await dana.page.getByTestId("participant-role").count()).toBe(0)
  expect(await dana.page.getByTestId("rename").count()).toBe(0)
  await screenshot("direct-deleted", dana, erin)

  // Muting is the user's own preference, kept in their inbox: the list marks the conversation.
  await dana.page.getByTestId("mute-toggle").click()
  await dana.listItem("erin").getByTestId("muted").waitFor()
  await dana.page.getByTestId("mute-toggle").getByText("Unmute").waitFor()

  // Starting a direct conversation with yourself says why nothing happens.
  await dana.page.getByTestId("new-conversation").click()
  await dana.page.getByTestId("new-participants").fill("dana")
  await dana.page.getByTestId("new-create").click()
  await dana.page.getByTestId("new-conversation-error").getByText("That is you", { exact: false }).waitFor()

  // A long conversation opens on its latest page; older messages load when scrolling up.
  const many = Array.from({ length: 52 }, (_, i) => `note ${i + 1}`)
  for (const text of many) {
    await dana.page.getByTestId("composer-input").fill(text)
    await dana.page.getByTestId("composer-input").press("Enter")
  }
  await erin.message("note 52").waitFor()
  await erin.page.reload()
  await erin.message("note 52").waitFor()
  await erin.page.getByTestId("load-older").waitFor()
  expect(await erin.page.getByTestId("message").count()).toBe(50)
  await erin.page.locator(".scroller").evaluate((element) => element.scrollTo(0, 0))
  await erin.messagesAre(["Message deleted", "Yes, see you there", ...many])
  expect(await erin.page.getByTestId("load-older").count()).toBe(0)
  await screenshot("older-messages", erin)

  // A name the relay would refuse is explained on the sign-in screen, not just "match the format".
  const context = await demo.browser.newContext({ viewport: PHONE })
  const page = await context.newPage()
  await page.goto(demo.relay.url)
  await page.getByTestId("sign-in-user").fill("frank smith")
  await page.getByTestId("sign-in-submit").click()
  await page.getByTestId("sign-in-error").getByText("no spaces", { exact: false }).waitFor()
  // So is a name the relay keeps for services (before: "Connecting…" for good).
  await page.getByTestId("sign-in-user").fill("service.x")
  await page.getByTestId("sign-in-submit").click()
  await page.getByTestId("sign-in-error").getByText("keeps those for services", { exact: false }).waitFor()
  await context.close()

  await Promise.all([dana.close(), erin.close()])
})
