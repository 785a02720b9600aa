// No fake-indexeddb here: Node has no IndexedDB, as a browser in some private modes has none to give.
import { describe, expect, it } from "vitest"
import WebSocket from "ws"
import { createChatClient } from "../src/index.js"

describe("a client whose local storage fails", () => {
  it("says so (an error event per replica, and localStorageFailure) and keeps working in memory", async () => {
    const client = await createChatClient({
      url: "ws://127.0.0.1:9",
      user: "alice",
      token: "unused",
      connect: false,
      WebSocket: WebSocket as never,
    })
    const errors: [string, string | undefined][] = []
    client.on("error", ({ error, conversationId }) => errors.push([error.code, conversationId]))
    const chat = await client.directConversation("bob")
    const sent = chat.send("kept in memory")
    await expect.poll(() => errors.some(([, id]) => id === chat.id)).toBe(true)
    expect(errors.every(([code]) => code === "STORAGE_UNAVAILABLE")).toBe(true)
    expect(client.localStorageFailure?.code).toBe("STORAGE_UNAVAILABLE")
    expect(client.localStorageFailure?.message).toContain("no IndexedDB")
    expect(chat.messages({ last: 5 }).map((m) => [m.id, m.body])).toEqual([[sent.id, "kept in memory"]])
    await client.destroy()
  })
})
