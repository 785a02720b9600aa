import { expect, it } from "vitest"
import { DemoUser } from "./demo-page.js"
import { useDemo } from "./demo-server.js"

// Signing out of the demo on a shared browser, in real Chromium against a real relay process:
// the next user of the browser must not find the previous one's messages in its storage.

const DESKTOP = { width: 960, height: 680 }

const demo = useDemo()

/** The names of the browser's IndexedDB databases of `user`, as `page` sees them. */
const databasesOf = (user: DemoUser, name: string) =>
  user.page.evaluate(
    async (prefix) =>
      (await indexedDB.databases()).flatMap((d) => (d.name?.startsWith(prefix) ? [d.name] : [])),
    `parley:${name}:`,
  )

it("removes the user's messages from the browser at sign-out, in every tab, and keeps another user's", {
  timeout: 180_000,
}, async () => {
  const kim = await DemoUser.open(demo.browser, demo.relay.url, "kim", DESKTOP)
  await kim.startDirect("eve")
  await kim.send("a secret of kim's")
  await kim.messageStatus("a secret of kim's", "sent")
  // What another user of this browser left (one who signed out without deleting, say): it stays.
  await kim.page.evaluate(
    () =>
      new Promise((resolve, reject) => {
        const request = indexedDB.open("parley:zed:directory")
        request.onsuccess = () => resolve(request.result.close())
        request.onerror = () => reject(request.error)
      }),
  )
  // A second tab of kim's, in the same browser.
  const second = await kim.context.newPage()
  await second.goto(demo.relay.url)
  await second.getByTestId("current-user").filter({ hasText: "kim" }).waitFor()
  expect((await databasesOf(kim, "kim")).length).toBeGreaterThan(3)

  await kim.page.getByTestId("sign-out").click()

  await kim.page.getByTestId("sign-in-user").waitFor()
  await kim.page.getByTestId("sign-in-storage").getByText("signing out removes them").waitFor()
  await second.getByTestId("sign-in-user").waitFor()
  await expect.poll(() => databasesOf(kim, "kim"), { timeout: 10_000 }).toEqual([])
  expect(await databasesOf(kim, "zed")).toEqual(["parley:zed:directory"])
  // Still none after a while: the second tab wrote nothing back.
  await new Promise((resolve) => setTimeout(resolve, 1_000))
  expect(await databasesOf(kim, "kim")).toEqual([])
  await kim.close()
})
