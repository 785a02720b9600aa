import "fake-indexeddb/auto"
import { createHash } from "node:crypto"
import type { Attachment, FileAttachment } from "@parley/shared"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import type { ChatClient, Conversation, UploadEvent } from "../src/index.js"
import { png } from "./png.js"
import {
  connectClient,
  destroyClients,
  devToken,
  eventually,
  type RelayProcess,
  startRelay,
} from "./support.js"

// Sending files through a real relay process: offline, across a reload, through failures.

let relay: RelayProcess
beforeAll(async () => {
  relay = await startRelay({ args: ["--dev", "--attachment-max-bytes", String(4 * 1024 * 1024)] })
})
afterAll(async () => {
  await relay?.stop()
})
afterEach(destroyClients)

let run = 0
const names = (...users: string[]) => {
  run++
  return users.map((u) => `${u}${run}x${process.pid}`)
}

/** A client that keeps its replicas and outbox in (fake) IndexedDB, so a new one over the same user is a reload. */
const persistentClient = (user: string, options: Parameters<typeof connectClient>[2] = {}) =>
  connectClient(relay, user, { storage: "indexeddb", uploads: { minDelay: 50, maxDelay: 400 }, ...options })

/** The group of `owner` with `members`, known to the relay (its inbox shows it to the first member). */
async function group(owner: ChatClient, members: ChatClient[]): Promise<Conversation> {
  const chat = await owner.createConversation({ participants: members.map((m) => m.user) })
  const hello = chat.send("hi")
  await eventually(() => expect(chat.status(hello.id)).not.toBe("pending"))
  return chat
}

const sha = (bytes: ArrayBuffer | Uint8Array) =>
  createHash("sha256").update(new Uint8Array(bytes)).digest("hex")

/** Downloads an attachment the way a browser would: its signed URL, no header. */
async function download(client: ChatClient, attachment: Attachment, variant: "file" | "thumbnail" = "file") {
  const response = await fetch(await client.attachmentUrl(attachment, variant))
  expect(response.status).toBe(200)
  return { type: response.headers.get("content-type"), bytes: await response.arrayBuffer() }
}

/** An uploaded file's record (the relay gives every one an id). */
const fileOf = (attachment: Attachment | undefined) => attachment as FileAttachment & { id: string }

describe("sending files through the relay", () => {
  it("uploads an image sent offline after a reload, and writes the message once, with its thumbnail", async () => {
    const [aliceName, bobName] = names("alice", "bob")
    const alice = await persistentClient(aliceName!)
    const bob = await connectClient(relay, bobName!)
    const chat = await group(alice, [bob])
    alice.disconnect()
    const image = png(640, 480)
    const sent = chat.send({
      body: "the view",
      files: [new File([image], "view.png", { type: "image/png" })],
    })
    expect(sent.status).toBe("pending")
    await new Promise((resolve) => setTimeout(resolve, 100)) // the outbox write is in the background
    await alice.destroy()

    // The reload: a new client over the same storage, online.
    const again = await persistentClient(aliceName!)
    const reopened = again.conversation(chat.id)
    const progress: UploadEvent[] = []
    reopened.on("upload", (event) => progress.push(event))
    await reopened.ready()
    await eventually(() => expect(reopened.status(sent.id)).toMatch(/sent|delivered|read/))
    const uploaded = progress.filter((e) => e.phase === "uploading")
    expect(uploaded.at(-1)).toMatchObject({ loaded: image.length, total: image.length })
    expect(progress.at(-1)?.phase).toBe("written")

    const bobsChat = bob.conversation(chat.id)
    await eventually(() => expect(bobsChat.message(sent.id)?.attachments).toHaveLength(1))
    expect(bobsChat.messages({ last: 50 }).filter((m) => m.id === sent.id)).toHaveLength(1)
    const attachment = fileOf(bobsChat.message(sent.id)!.attachments[0])
    expect(attachment).toMatchObject({ name: "view.png", mimeType: "image/png", size: image.length })
    expect(attachment).toMatchObject({ width: 640, height: 480 })
    expect(attachment.thumbnail?.width).toBeGreaterThan(0)
    const full = await download(bob, attachment)
    expect(full.type).toBe("image/png")
    expect(sha(full.bytes)).toBe(sha(image))
    const thumbnail = await download(bob, attachment, "thumbnail")
    expect(thumbnail.type).toMatch(/^image\//)
    // Nothing is left in alice's outbox: a further reload writes nothing again.
    await again.destroy()
    const third = await persistentClient(aliceName!)
    const last = third.conversation(chat.id)
    await last.ready()
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(last.messages({ last: 50 }).filter((m) => m.id === sent.id)).toHaveLength(1)
    expect(last.message(sent.id)?.upload).toBeUndefined()
  })

  it("fails a message whose file the relay refuses, with the reason, frees its bytes, and retries without it", async () => {
    const [aliceName, bobName] = names("alice", "bob")
    const alice = await connectClient(relay, aliceName!, { uploads: { minDelay: 50, maxDelay: 400 } })
    const bob = await connectClient(relay, bobName!)
    const chat = await group(alice, [bob])
    const statuses: string[] = []
    chat.on("status", ({ messageId, status, error }) => {
      if (messageId === sent.id) statuses.push(`${status}${error ? ` ${error.code}` : ""}`)
    })
    const huge = new File([new Uint8Array(5 * 1024 * 1024)], "huge.bin")
    const small = new File([png(20, 20)], "small.png", { type: "image/png" })
    const sent = chat.send({ body: "two files", files: [small, huge] })
    await eventually(() => expect(chat.status(sent.id)).toBe("failed"))
    const failed = chat.message(sent.id)!
    expect(failed.error?.code).toBe("TOO_LARGE")
    expect(statuses).toEqual(["failed TOO_LARGE"])
    expect(failed.upload?.phase).toBe("failed")
    expect(failed.upload?.files.map((f) => [f.name, f.uploaded, f.refused?.code])).toEqual([
      ["small.png", true, undefined],
      ["huge.bin", false, "TOO_LARGE"],
    ])
    // The bytes are freed: no preview any more.
    expect(failed.upload?.files.every((f) => f.url === undefined)).toBe(true)
    expect(bob.conversation(chat.id).message(sent.id)).toBeUndefined()

    chat.retry(sent.id)
    await eventually(() => expect(chat.status(sent.id)).toMatch(/sent|delivered|read/))
    const bobsChat = bob.conversation(chat.id)
    await eventually(() =>
      expect(bobsChat.message(sent.id)?.attachments.map((a) => fileOf(a).name)).toEqual(["small.png"]),
    )
  })

  it("fails a message whose file's sniffed type the relay refuses (415), whatever type the browser claimed", async () => {
    const [aliceName, bobName] = names("alice", "bob")
    const alice = await connectClient(relay, aliceName!, { uploads: { minDelay: 50, maxDelay: 400 } })
    const bob = await connectClient(relay, bobName!)
    const chat = await group(alice, [bob])
    const page = new File(["<html><script>alert(1)</script></html>"], "cute.png", { type: "image/png" })
    const sent = chat.send({ body: "not a picture", files: [page] })
    await eventually(() => expect(chat.status(sent.id)).toBe("failed"))
    expect(chat.message(sent.id)?.error?.message).toMatch(/text\/html/)
    expect(chat.message(sent.id)?.upload?.files[0]?.refused?.message).toMatch(/text\/html/)
    expect(bob.conversation(chat.id).message(sent.id)).toBeUndefined()
  })

  it("fails a waiting message when the user was removed meanwhile, with the reason", async () => {
    const [aliceName, bobName] = names("alice", "bob")
    const alice = await connectClient(relay, aliceName!, { uploads: { minDelay: 50, maxDelay: 400 } })
    const bob = await connectClient(relay, bobName!)
    const bobsChat = await group(bob, [alice])
    const chat = alice.conversation(bobsChat.id)
    await chat.ready()
    await eventually(() => expect(chat.connection.status).toBe("online"))
    alice.disconnect()
    const sent = chat.send({
      body: "too late",
      files: [new File([png(20, 20)], "late.png", { type: "image/png" })],
    })
    bobsChat.removeParticipants([alice.user])
    await eventually(() => expect(bobsChat.participants.map((p) => p.user)).toEqual([bob.user]))
    await new Promise((resolve) => setTimeout(resolve, 300))
    alice.connect()
    await eventually(() => expect(chat.status(sent.id)).toBe("failed"))
    expect(chat.message(sent.id)?.error?.code).toMatch(/FORBIDDEN|NOT_FOUND/)
    expect(chat.message(sent.id)?.upload?.files[0]?.url).toBeUndefined()
    expect(bobsChat.message(sent.id)).toBeUndefined()
    chat.discard(sent.id)
    expect(chat.message(sent.id)).toBeUndefined()
  })

  it("resumes an upload the network interrupted, sending each byte once", async () => {
    const [aliceName, bobName] = names("alice", "bob")
    const requests: string[] = []
    let patches = 0
    const flaky: typeof fetch = async (input, init) => {
      const method = init?.method ?? "GET"
      const offset = new Headers(init?.headers).get("upload-offset")
      if (method === "PATCH" && ++patches === 3) {
        requests.push(`PATCH ${offset} (dropped)`)
        throw new TypeError("fetch failed: the network dropped")
      }
      if (method === "PATCH" || method === "HEAD") requests.push(`${method}${offset ? ` ${offset}` : ""}`)
      return fetch(input, init)
    }
    const alice = await connectClient(relay, aliceName!, {
      fetch: flaky,
      uploads: { minDelay: 50, maxDelay: 400 },
    })
    const bob = await connectClient(relay, bobName!)
    const chat = await group(alice, [bob])
    const image = png(1000, 1000, true) // ~3 MB: three chunks of 1 MiB
    const sent = chat.send({ body: "big", files: [new File([image], "big.png", { type: "image/png" })] })
    await eventually(() => expect(chat.status(sent.id)).toMatch(/sent|delivered|read/), 30_000)
    const mib = 1024 * 1024
    expect(requests).toEqual([
      "PATCH 0",
      `PATCH ${mib}`,
      `PATCH ${2 * mib} (dropped)`,
      "HEAD",
      `PATCH ${2 * mib}`,
    ])
    const bobsChat = bob.conversation(chat.id)
    await eventually(() => expect(bobsChat.message(sent.id)?.attachments).toHaveLength(1))
    const attachment = fileOf(bobsChat.message(sent.id)!.attachments[0])
    expect(sha((await download(bob, attachment)).bytes)).toBe(sha(image))
  })

  it("sends a file in a conversation created offline, once the relay has the conversation", async () => {
    const [aliceName, bobName] = names("alice", "bob")
    const alice = await connectClient(relay, aliceName!, {
      connect: false,
      uploads: { minDelay: 50, maxDelay: 400 },
    })
    const bob = await connectClient(relay, bobName!)
    const chat = await alice.createConversation({ participants: [bob.user] })
    const sent = chat.send({
      body: "made offline",
      files: [new File([png(30, 20)], "p.png", { type: "image/png" })],
    })
    alice.connect()
    await eventually(() => {
      const message = chat.message(sent.id)
      expect(`${message?.status} ${message?.error?.message ?? ""}`).toMatch(/^(sent|delivered|read)/)
    })
    const bobsChat = bob.conversation(chat.id)
    await eventually(() => expect(bobsChat.message(sent.id)?.attachments).toHaveLength(1))
  })

  it("gives a participant a working URL and refuses one to anyone else", async () => {
    const [aliceName, bobName, carolName] = names("alice", "bob", "carol")
    const alice = await connectClient(relay, aliceName!)
    const bob = await connectClient(relay, bobName!)
    const carol = await connectClient(relay, carolName!)
    const chat = await group(alice, [bob])
    const sent = chat.send({
      body: "private",
      files: [new File(["secret notes"], "notes.txt", { type: "text/plain" })],
    })
    await eventually(() => expect(chat.message(sent.id)?.attachments).toHaveLength(1))
    const attachment = fileOf(chat.message(sent.id)!.attachments[0])
    const mine = await download(alice, attachment)
    expect(new TextDecoder().decode(mine.bytes)).toBe("secret notes")
    // Cached: the same URL again without asking the relay.
    expect(alice.cachedAttachmentUrl(attachment)).toBe(await alice.attachmentUrl(attachment))
    await expect(carol.attachmentUrl(attachment)).rejects.toMatchObject({ code: "NOT_FOUND" })
    // Nor with her token directly.
    const direct = await fetch(`${relay.httpUrl}/v1/attachments/${attachment.id}`, {
      headers: { authorization: `Bearer ${await devToken(relay, carol.user)}` },
    })
    expect(direct.status).toBe(404)
    expect((await direct.arrayBuffer()).byteLength).toBeLessThan(400)
  })
  it("signs a URL once per attachment until shortly before it expires, then asks again", async () => {
    const [aliceName, bobName] = names("alice", "bob")
    let now = Date.now()
    let signs = 0
    const counting: typeof fetch = (input, init) => {
      if (String(input).endsWith("/signed-url")) signs++
      return fetch(input, init)
    }
    const alice = await connectClient(relay, aliceName!, { fetch: counting, clock: () => now })
    const bob = await connectClient(relay, bobName!)
    const chat = await group(alice, [bob])
    const sent = chat.send({
      body: "cached",
      files: [new File([png(64, 48)], "c.png", { type: "image/png" })],
    })
    await eventually(() => expect(chat.message(sent.id)?.attachments).toHaveLength(1))
    const attachment = chat.message(sent.id)!.attachments[0]!
    const [first, thumbnail, again] = await Promise.all([
      alice.attachmentUrl(attachment),
      alice.attachmentUrl(attachment, "thumbnail"),
      alice.attachmentUrl(attachment),
    ])
    expect(signs).toBe(1)
    expect(again).toBe(first)
    expect(thumbnail).toMatch(/\/thumbnail\?/)
    // The relay's URLs live 15 minutes; 12 minutes on, the cached one is still handed out.
    now += 12 * 60_000
    expect(await alice.attachmentUrl(attachment)).toBe(first)
    expect(signs).toBe(1)
    // Within 2 minutes of its expiry it is renewed.
    now += 2 * 60_000
    expect(alice.cachedAttachmentUrl(attachment)).toBeUndefined()
    await alice.attachmentUrl(attachment)
    expect(signs).toBe(2)
  })
})
