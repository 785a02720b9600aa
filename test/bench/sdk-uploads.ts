/**
 * Files sent through the SDK, end to end: `conversation.send({ body, files })`
 * in a client of a relay process (file-system blob store, SQLite backend),
 * measured from the send to the `written` upload event (every chunk uploaded,
 * the message written once). First one file of S MB, then N files at once in N
 * conversations (the SDK uploads one message at a time per conversation).
 * Prints the time and throughput. Asserts nothing.
 *
 *   node --conditions=parley-source --import tsx test/bench/sdk-uploads.ts [--files 4 --mb 10]
 */
import { type ChatClient, type Conversation, createChatClient } from "@parley/client"
import WebSocket from "ws"
import { startRelayProcess, stopRelayProcesses } from "../../relay/test/helpers/relay-process.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const FILES = arg("files", 4)
const MB = arg("mb", 10)
const SIZE = MB * 1000 * 1000

// Limits raised: this measures the upload path, not the per-user rate limits.
const relay = await startRelayProcess({
  args: [
    "--attachment-max-bytes",
    String(SIZE * 2),
    "--attachment-bytes-per-minute",
    String(10 ** 12),
    "--attachment-uploads-per-user",
    "64",
  ],
})
const client: ChatClient = await createChatClient({
  url: relay.url,
  user: "bench-sender",
  token: () => relay.token("bench-sender"),
  storage: "memory",
  WebSocket: WebSocket as never,
})

/** Random bytes (incompressible; sniffed as a binary the default allow-list refuses, so a zip header leads). */
function file(name: string): File {
  const bytes = new Uint8Array(SIZE)
  for (let i = 0; i < bytes.length; i += 65_536) crypto.getRandomValues(bytes.subarray(i, i + 65_536))
  // "PK\x03\x04": a zip's local file header, in the relay's default allow-list.
  bytes.set([0x50, 0x4b, 0x03, 0x04], 0)
  return new File([bytes], name, { type: "application/zip" })
}

async function sendAndWait(chat: Conversation, data: File): Promise<number> {
  const name = data.name
  const started = performance.now()
  const written = new Promise<void>((resolve, reject) => {
    let id = ""
    chat.on("upload", ({ messageId, phase, error }) => {
      if (messageId !== id) return
      if (phase === "written") resolve()
      if (phase === "failed") reject(error)
    })
    id = chat.send({ body: name, files: [data] }).id
  })
  await written
  return performance.now() - started
}

const conversations: Conversation[] = []
for (let i = 0; i < FILES; i++) {
  const chat = await client.createConversation({ participants: ["bench-reader"] })
  const hello = chat.send("hello")
  await new Promise<void>((resolve) => {
    const check = () => (chat.status(hello.id) !== "pending" ? resolve() : setTimeout(check, 20))
    check()
  })
  conversations.push(chat)
}

const mbps = (bytes: number, ms: number) => (bytes / 1e6 / (ms / 1000)).toFixed(1)
const one = await sendAndWait(conversations[0]!, file("one.zip"))
console.log(`one file of ${MB} MB: ${one.toFixed(0)} ms, ${mbps(SIZE, one)} MB/s`)
// Made before the clock starts: the measurement is the upload, not the random bytes.
const files = conversations.map((_, i) => file(`f${i}.zip`))
const started = performance.now()
const each = await Promise.all(conversations.map((chat, i) => sendAndWait(chat, files[i]!)))
const all = performance.now() - started
console.log(
  `${FILES} files of ${MB} MB at once (${FILES} conversations): ${all.toFixed(0)} ms, ` +
    `${mbps(SIZE * FILES, all)} MB/s aggregate; slowest ${Math.max(...each).toFixed(0)} ms`,
)
await client.destroy()
await stopRelayProcesses()
