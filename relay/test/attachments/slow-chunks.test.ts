import { request } from "node:http"
import type { UserId } from "@parley/shared"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { attachmentClient, createGroup } from "../helpers/attachments.js"
import { type RelayProcess, startRelayProcess, stopRelayProcesses } from "../helpers/relay-process.js"

const alice = "alice" as UserId
const IDLE_MS = 600

/**
 * Sends a PATCH chunk declaring `declared` bytes, writing `pieces` with `gapMs`
 * between them and then nothing more; resolves with the relay's answer.
 */
function slowPatch(
  relay: RelayProcess,
  token: string,
  uploadId: string,
  declared: number,
  pieces: Uint8Array[],
  gapMs: number,
): Promise<{ status: number; offset: string | undefined; body: Record<string, unknown>; ms: number }> {
  const started = performance.now()
  return new Promise((resolve, reject) => {
    const req = request(
      `${relay.httpUrl}/v1/uploads/${uploadId}`,
      {
        method: "PATCH",
        headers: {
          authorization: `Bearer ${token}`,
          "content-type": "application/offset+octet-stream",
          "upload-offset": "0",
          "content-length": String(declared),
        },
      },
      (res) => {
        let text = ""
        res.on("data", (d) => {
          text += d
        })
        res.on("end", () => {
          clearTimeout(writer)
          req.destroy()
          resolve({
            status: res.statusCode ?? 0,
            offset: res.headers["upload-offset"] as string | undefined,
            body: text ? (JSON.parse(text) as Record<string, unknown>) : {},
            ms: performance.now() - started,
          })
        })
      },
    )
    req.on("error", reject)
    let next = 0
    let writer: NodeJS.Timeout | undefined
    const write = () => {
      if (next >= pieces.length) return
      req.write(pieces[next++])
      writer = setTimeout(write, gapMs)
    }
    write()
  })
}

/** The pace the tests hold chunks to: a short idle time, and 2,000 bytes a second after it. */
const PACE_ARGS = [
  "--attachment-chunk-idle-ms",
  String(IDLE_MS),
  "--attachment-chunk-min-bytes-per-second",
  "2000",
]

describe("upload chunks that come too slowly", () => {
  let relay: RelayProcess
  const api = attachmentClient(() => relay)

  beforeAll(async () => {
    relay = await startRelayProcess({ args: PACE_ARGS })
  })
  afterAll(async () => {
    await stopRelayProcesses()
  })

  async function upload(id: string, size: number): Promise<string> {
    const client = await createGroup(relay, id, alice, [], "Files")
    client.close()
    const created = await api.create(alice, id, { name: "notes.txt", size })
    expect(created.status).toBe(201)
    return created.body.uploadId as string
  }

  const bytes = (n: number) => new Uint8Array(Buffer.alloc(n, "slow and steady\n"))

  it("cuts off a chunk that stops sending with 408, keeps what arrived, and the upload resumes from there", async () => {
    const whole = bytes(4096)
    const uploadId = await upload("g~slow-chunk-stall", whole.length)
    const stalled = await slowPatch(
      relay,
      await relay.token(alice),
      uploadId,
      whole.length,
      [whole.subarray(0, 1000)],
      0,
    )
    expect(stalled.status).toBe(408)
    expect(stalled.body.code).toBe("TIMEOUT")
    expect(stalled.offset).toBe("1000")
    // Cut off near the idle limit, not left hanging.
    expect(stalled.ms).toBeGreaterThanOrEqual(IDLE_MS - 50)
    expect(stalled.ms).toBeLessThan(IDLE_MS + 3000)
    expect((await api.head(alice, uploadId)).offset).toBe("1000")

    const rest = await api.patch(alice, uploadId, 1000, whole.subarray(1000))
    expect(rest.status).toBe(201)
    const attachment = rest.body!.attachment as { url: string; size: number }
    expect(attachment.size).toBe(whole.length)
    const got = await api.download(attachment.url, alice)
    expect(Buffer.from(got.bytes).equals(Buffer.from(whole))).toBe(true)
  }, 20_000)

  it("cuts off a chunk that trickles below the least rate, though bytes keep coming", async () => {
    const uploadId = await upload("g~slow-chunk-trickle", 4096)
    // 20 bytes every 100 ms: 200 bytes a second, never idle for the idle limit, ten times under the floor.
    const pieces = Array.from({ length: 100 }, () => bytes(20))
    const trickled = await slowPatch(relay, await relay.token(alice), uploadId, 2000, pieces, 100)
    expect(trickled.status).toBe(408)
    expect(trickled.body.code).toBe("TIMEOUT")
    const kept = Number(trickled.offset)
    expect(kept).toBeGreaterThan(0)
    expect(kept).toBeLessThan(2000)
    expect(trickled.ms).toBeLessThan(IDLE_MS + 3000)
    expect((await api.head(alice, uploadId)).offset).toBe(String(kept))
  }, 20_000)
  it("completes the upload when what arrived before a stall was all it lacked", async () => {
    const whole = bytes(1000)
    const uploadId = await upload("g~slow-chunk-done", whole.length)
    // Declares more than the upload lacks, sends exactly what it lacks, then stalls.
    const stalled = await slowPatch(relay, await relay.token(alice), uploadId, 2000, [whole], 0)
    expect(stalled.status).toBe(201)
    expect(stalled.offset).toBe("1000")
    const attachment = stalled.body.attachment as { url: string; size: number }
    expect(attachment.size).toBe(1000)
    const got = await api.download(attachment.url, alice)
    expect(Buffer.from(got.bytes).equals(Buffer.from(whole))).toBe(true)
  }, 20_000)
})

describe("upload chunks when every slot of the relay is taken", () => {
  let relay: RelayProcess
  const api = attachmentClient(() => relay)
  const mallory = "mallory" as UserId

  beforeAll(async () => {
    relay = await startRelayProcess({
      args: [...PACE_ARGS, "--attachment-chunks-in-flight", "4"],
    })
  })
  afterAll(async () => {
    await stopRelayProcesses()
  })

  it("gives another user's chunk the slot of the slowest one: senders just above the floor cannot keep everyone out", async () => {
    const client = await createGroup(relay, "g~slow-chunk-slots", alice, [mallory], "Files")
    client.close()
    const piece = new Uint8Array(Buffer.alloc(500, "trickle "))
    const pieces = Array.from({ length: 30 }, () => piece)
    const size = piece.length * pieces.length
    // Mallory holds every slot of the relay (4) with chunks at 5 KB a second: over the 2000 bytes a second floor.
    const token = await relay.token(mallory)
    const uploads: string[] = []
    for (let i = 0; i < 4; i++) {
      const created = await api.create(mallory, "g~slow-chunk-slots", { name: `slow${i}.txt`, size })
      uploads.push(created.body.uploadId as string)
    }
    const trickles = uploads.map((uploadId) => slowPatch(relay, token, uploadId, size, pieces, 100))
    await new Promise((resolve) => setTimeout(resolve, 1500))

    const created = await api.create(alice, "g~slow-chunk-slots", { name: "hello.txt", size: 11 })
    const hello = await api.patch(
      alice,
      created.body.uploadId as string,
      0,
      new TextEncoder().encode("hello world"),
    )
    // Before: 503 for as long as Mallory kept sending.
    expect(hello.status).toBe(201)

    // One of Mallory's chunks gave up its slot: 408, what arrived kept, and its upload resumes from there.
    const answers = await Promise.all(trickles)
    const cut = answers.filter((a) => a.status === 408)
    expect(cut).toHaveLength(1)
    expect(answers.filter((a) => a.status === 201)).toHaveLength(3)
    const kept = Number(cut[0]!.offset)
    expect(kept).toBeGreaterThan(0)
    const resumed = uploads[answers.indexOf(cut[0]!)]!
    expect((await api.head(mallory, resumed)).offset).toBe(String(kept))
    const rest = await api.patch(
      mallory,
      resumed,
      kept,
      new Uint8Array(Buffer.alloc(size - kept, "trickle ")),
    )
    expect(rest.status).toBe(201)
  }, 30_000)
})
