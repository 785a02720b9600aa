// A Node bot on the SDK, plain JavaScript run by plain node: says "ping" in a new group with
// the greeter hook's user and exits 0 once "pong" arrived (the relay's URL in RELAY_URL).
import { createChatClient } from "@parley/client"
import WebSocket from "ws"

const url = process.env.RELAY_URL
const http = url.replace(/^ws/, "http")
const client = await createChatClient({
  url,
  user: "consumer-bot",
  token: async () => {
    const response = await fetch(`${http}/dev/token?user=consumer-bot`)
    return (await response.json()).token
  },
  storage: "memory",
  WebSocket,
})
const chat = await client.createConversation({ participants: ["greeter"], title: "consumer test" })
const ping = chat.send("ping")
await new Promise((resolve) => {
  chat.watchMessages({ last: 10 }, (messages) => {
    if (messages.some((m) => m.author === "greeter" && m.body === "pong" && m.replyTo === ping.id)) resolve()
  })
})
console.log(JSON.stringify({ pong: true, status: chat.messages().find((m) => m.id === ping.id)?.status }))
await client.destroy()
