import { expect, it } from "vitest"
import { DemoUser, screenshots } from "./demo-page.js"
import { useDemo } from "./demo-server.js"

// The demo app (client/demo) in real Chromium against a real relay process:
// the SDK where it is meant to run, with IndexedDB, a service worker, going
// offline, reloading, a relay restart and a user added later.
// Screenshots of each step: test-results/e2e/.

const DESKTOP = { width: 960, height: 680 }
const PHONE = { width: 375, height: 720 }

const demo = useDemo()
const screenshot = screenshots("offline-chat")

it("two users chat through offline, a reload, a relay restart, and a third user joining", {
  timeout: 240_000,
}, async () => {
  const alice = await DemoUser.open(demo.browser, demo.relay.url, "alice", DESKTOP)
  const bob = await DemoUser.open(demo.browser, demo.relay.url, "bob", PHONE)

  // Alice starts a group with Bob; it appears in Bob's list with a preview and an unread badge.
  await alice.createGroup("Launch plan", ["bob"])
  await alice.send("Hello Bob!")
  await alice.messageStatus("Hello Bob!", "sent")
  await alice.connection("online")
  const bobsRow = bob.listItem("Launch plan")
  await bobsRow.getByTestId("conversation-preview").getByText("alice: Hello Bob!").waitFor()
  await bobsRow.getByTestId("unread-badge").getByText("1", { exact: true }).waitFor()
  await screenshot("conversation-appears", alice, bob)

  // Bob opens it: he reads the message, and Alice's tick turns to "read".
  await bob.openConversation("Launch plan")
  await bob.message("Hello Bob!").waitFor()
  await alice.messageStatus("Hello Bob!", "read")

  // Bob types: Alice sees it; he sends, and the indicator goes away.
  await bob.page.getByTestId("composer-input").pressSequentially("Hi Al", { delay: 30 })
  await alice.page.getByTestId("typing-indicator").getByText("bob is typing…").waitFor()
  await screenshot("typing", alice, bob)
  await bob.page.getByTestId("composer-input").fill("Hi Alice, ready for launch?")
  await bob.page.getByTestId("composer-send").click()
  await alice.message("Hi Alice, ready for launch?").waitFor()
  await alice.page.locator("[data-testid=typing-indicator]:empty").waitFor()
  await bob.messageStatus("Hi Alice, ready for launch?", "read")
  await screenshot("read-ticks", alice, bob)

  // Alice goes offline and sends three messages: pending. Bob looks at his list meanwhile.
  await bob.back()
  await alice.setOffline(true)
  await alice.connection("offline")
  const offline = ["one (offline)", "two (offline)", "three (offline)"]
  for (const text of offline) {
    await alice.send(text)
    await alice.messageStatus(text, "pending")
  }
  // Her own list shows what she just wrote, not the last message the relay saw.
  const alicesPreview = alice.listItem("Launch plan").getByTestId("conversation-preview")
  await alicesPreview.getByText("You: three (offline)", { exact: true }).waitFor()
  await screenshot("offline-pending", alice)

  // A reload while still offline: the service worker serves the app, IndexedDB the messages.
  const reloaded = await alice.page.reload()
  expect(reloaded?.fromServiceWorker()).toBe(true)
  for (const text of offline) await alice.messageStatus(text, "pending")
  await alice.connection("offline")
  await alicesPreview.getByText("You: three (offline)", { exact: true }).waitFor()
  await screenshot("offline-after-reload", alice)

  // Back online: Bob's device receives them (in order) and Alice's ticks go sent → delivered.
  await alice.recordStatuses()
  await alice.setOffline(false)
  await alice.connection("online")
  for (const text of offline) await alice.messageStatus(text, "delivered")
  for (const text of offline) expect(await alice.statusesOf(text)).toEqual(["pending", "sent", "delivered"])
  await bob.listItem("Launch plan").getByTestId("unread-badge").getByText("3", { exact: true }).waitFor()
  await screenshot("delivered", alice, bob)
  await bob.openConversation("Launch plan")
  const history = ["Hello Bob!", "Hi Alice, ready for launch?", ...offline]
  await bob.messagesAre(history)
  for (const text of offline) await alice.messageStatus(text, "read")

  // The relay dies (SIGKILL) mid-conversation; Alice writes meanwhile; it comes back on the same data.
  // Meanwhile her tokens cannot be fetched: the pill says so, and no error is shown for it.
  await alice.page.evaluate(() => {
    const toast = document.querySelector("[data-testid=toast]")!
    const seen: string[] = []
    ;(window as unknown as { toasts: string[] }).toasts = seen
    new MutationObserver(() => {
      if (!(toast as HTMLElement).hidden) seen.push(toast.textContent ?? "")
    }).observe(toast, { attributes: true, childList: true, characterData: true, subtree: true })
  })
  await demo.relay.kill()
  await alice.connection("connecting")
  await alice.send("sent while the relay was down")
  await alice.messageStatus("sent while the relay was down", "pending")
  await demo.relay.restart()
  await alice.connection("online")
  await bob.connection("online")
  await bob.message("sent while the relay was down").waitFor()
  await bob.send("Back after the restart")
  await alice.message("Back after the restart").waitFor()
  const full = [...history, "sent while the relay was down", "Back after the restart"]
  await alice.messagesAre(full)
  await bob.messagesAre(full)
  expect(await alice.page.evaluate(() => (window as unknown as { toasts: string[] }).toasts)).toEqual([])
  await screenshot("after-relay-restart", alice, bob)

  // Carol signs in; once Alice adds her, the conversation appears in her list with the whole history.
  const carol = await DemoUser.open(demo.browser, demo.relay.url, "carol", PHONE)
  await carol.page.getByTestId("no-conversations").waitFor()
  await alice.page.getByTestId("participants-toggle").click()
  await alice.page.getByTestId("add-participant-input").fill("carol")
  await alice.page.getByTestId("add-participant").click()
  await alice.page.locator("[data-testid=participant][data-user=carol]").waitFor()
  // Presence: Bob has the conversation open on his phone.
  await alice.page.locator("[data-testid=participant][data-user=bob] [data-online=true]").waitFor()
  await carol.listItem("Launch plan").waitFor()
  await screenshot("third-user-sees-it", carol)
  await carol.openConversation("Launch plan")
  await carol.messagesAre(full)

  // Role-aware buttons: the owner may remove others and make owners, and, the group's only owner, is told
  // to make another before leaving; a member sees no add / remove, only leave.
  expect(await alice.page.getByTestId("remove-participant").count()).toBe(2)
  expect(await alice.page.getByTestId("make-owner").count()).toBe(2)
  await alice.page.getByTestId("last-owner-hint").waitFor()
  expect(await alice.page.getByTestId("leave-conversation").count()).toBe(0)
  await carol.page.getByTestId("participants-toggle").click()
  await carol.page.getByTestId("leave-conversation").waitFor()
  expect(await carol.page.getByTestId("remove-participant").count()).toBe(0)
  expect(await carol.page.getByTestId("add-participant-form").count()).toBe(0)
  await screenshot("participants", alice, carol)

  // Alice makes Bob an admin: his panel now offers add, and remove for members (never for the owner).
  await alice.page.locator("[data-testid=participant][data-user=bob] [data-testid=toggle-admin]").click()
  await bob.page.getByTestId("participants-toggle").click()
  await bob.page.getByTestId("add-participant-form").waitFor()
  await bob.page
    .locator("[data-testid=participant][data-user=carol] [data-testid=remove-participant]")
    .waitFor()
  expect(
    await bob.page
      .locator("[data-testid=participant][data-user=alice] [data-testid=remove-participant]")
      .count(),
  ).toBe(0)
  await bob.page.getByTestId("participants-toggle").click()
  await alice.page.getByTestId("participants-toggle").click()
  await screenshot("conversation", alice, bob)

  // Carol writes offline while Alice removes her: the relay refuses it, and Carol sees why (⚠).
  await carol.page.getByTestId("participants-toggle").click()
  await carol.setOffline(true)
  await carol.connection("offline")
  await carol.send("Can I still post?")
  await carol.messageStatus("Can I still post?", "pending")
  await alice.page.getByTestId("participants-toggle").click()
  await alice.page
    .locator("[data-testid=participant][data-user=carol] [data-testid=remove-participant]")
    .click()
  await alice.page.locator("[data-testid=participant][data-user=carol]").waitFor({ state: "detached" })
  await carol.setOffline(false)
  await carol.messageStatus("Can I still post?", "failed")
  await carol.message("Can I still post?").getByTestId("message-error").waitFor()
  await carol.page.getByTestId("conversation-unavailable").waitFor()
  await screenshot("removed-user-message-failed", carol)
  // Her list drops it too (her own unsent message does not keep it there).
  await carol.back()
  await carol.page.getByTestId("no-conversations").waitFor()
  await bob.send("Carol has left")
  await alice.messagesAre([...full, "Carol has left"])

  // The owner renames the group; Bob's header and list follow.
  await alice.page.getByTestId("rename").click()
  await alice.page.getByTestId("rename-input").fill("Launch done")
  await alice.page.getByTestId("rename-save").click()
  await alice.page.getByTestId("conversation-title").getByText("Launch done").waitFor()
  await bob.page.getByTestId("conversation-title").getByText("Launch done").waitFor()

  await Promise.all([alice.close(), bob.close(), carol.close()])
})
