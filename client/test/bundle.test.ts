import { mkdirSync, readFileSync, rmSync } from "node:fs"
import { fileURLToPath, pathToFileURL } from "node:url"
import * as esbuild from "esbuild"
import { afterAll, expect, it } from "vitest"
import WebSocket from "ws"
// @ts-expect-error: a plain .mjs build script without declarations
import { bundleOptions } from "../scripts/build.mjs"

const dir = fileURLToPath(new URL("../dist/test-bundle/", import.meta.url))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

it("builds one ESM file that runs in Node and keeps yjs external", async () => {
  mkdirSync(dir, { recursive: true })
  const outfile = `${dir}parley-client.js`
  await esbuild.build({ ...bundleOptions, outfile, logLevel: "silent" })
  const code = readFileSync(outfile, "utf8")
  expect(code).toMatch(/from "yjs"/)
  const sdk = (await import(pathToFileURL(outfile).href)) as typeof import("../src/index.js")
  const client = await sdk.createChatClient({
    url: "ws://127.0.0.1:9",
    token: "unused",
    user: "bundle-user",
    storage: "memory",
    connect: false,
    WebSocket: WebSocket as never,
  })
  try {
    const chat = await client.createConversation({ participants: ["someone"], title: "from the bundle" })
    const message = chat.send("works")
    expect(chat.messages().map((m) => [m.id, m.body, m.status])).toEqual([[message.id, "works", "pending"]])
    expect(() => chat.edit("not-a-real-message-id", "x")).toThrow(sdk.ParleyError)
  } finally {
    await client.destroy()
  }
})
