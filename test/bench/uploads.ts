/**
 * Attachment uploads on a relay process: N files of S MB uploaded at once
 * (1 MiB chunks, one user, each file's chunks in order), on the file-system
 * blob store (SQLite backend) and on PostgreSQL. Prints the aggregate upload
 * throughput, the download throughput of the same files, and the relay's
 * resident memory (RSS, sampled every 20 ms from /proc) before and at its
 * peak while the uploads run. Asserts nothing.
 *
 *   npm run bench:uploads [-- --files 4 --mb 20]
 */
import { readFileSync } from "node:fs"
import { runKeysCli } from "../../relay/src/api/keys-cli.js"
import { freshDataDir } from "../../relay/test/api/helpers.js"
import { postgresUnreachable, scratchSchema } from "../../relay/test/helpers/postgres.js"
import {
  type RelayProcess,
  startRelayProcess,
  stopRelayProcesses,
} from "../../relay/test/helpers/relay-process.js"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 ? Number(process.argv[i + 1]) : fallback
}
const FILES = arg("files", 4)
const MB = arg("mb", 20)
const SIZE = MB * 1000 * 1000

const rssOf = (pid: number) => {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
  return match ? Number(match[1]) / 1024 : Number.NaN
}

async function measure(label: string, relay: RelayProcess, key: string) {
  const conversation = `g~bench-uploads-${Date.now().toString(36)}`
  const created = await fetch(`${relay.httpUrl}/v1/conversations`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ id: conversation, participants: [{ user: "alice" }] }),
  })
  if (created.status !== 201)
    throw new Error(`create conversation: ${created.status} ${await created.text()}`)
  const token = await relay.token("alice")
  const auth = { authorization: `Bearer ${token}` }
  // Text, so that it is sniffed as text/plain; each file different.
  const files = Array.from({ length: FILES }, (_, i) =>
    Buffer.alloc(SIZE, `file ${i}: parley upload benchmark\n`),
  )

  const pid = relay.child.pid!
  const before = rssOf(pid)
  let peak = before
  const sampler = setInterval(() => {
    peak = Math.max(peak, rssOf(pid))
  }, 20)

  const began = performance.now()
  const ids = await Promise.all(
    files.map(async (bytes, i) => {
      const response = await fetch(`${relay.httpUrl}/v1/conversations/${conversation}/uploads`, {
        method: "POST",
        headers: { ...auth, "content-type": "application/json" },
        body: JSON.stringify({ name: `f${i}.txt`, size: bytes.length }),
      })
      const upload = (await response.json()) as { uploadId: string; chunkBytes: number }
      for (let offset = 0; offset < bytes.length; ) {
        const chunk = bytes.subarray(offset, offset + upload.chunkBytes)
        const patched = await fetch(`${relay.httpUrl}/v1/uploads/${upload.uploadId}`, {
          method: "PATCH",
          headers: {
            ...auth,
            "content-type": "application/offset+octet-stream",
            "upload-offset": String(offset),
          },
          body: new Blob([chunk]),
        })
        const text = await patched.text()
        if (patched.status === 429 || patched.status === 503) {
          await new Promise((r) => setTimeout(r, 20))
          continue
        }
        if (patched.status !== 204 && patched.status !== 201)
          throw new Error(`PATCH ${patched.status}: ${text}`)
        offset += chunk.length
        if (patched.status === 201) return (JSON.parse(text) as { attachment: { id: string } }).attachment.id
      }
      throw new Error("the upload never completed")
    }),
  )
  const uploadMs = performance.now() - began
  const uploadPeak = peak

  const downloadBegan = performance.now()
  let downloaded = 0
  await Promise.all(
    ids.map(async (id) => {
      const response = await fetch(`${relay.httpUrl}/v1/attachments/${id}`, { headers: auth })
      const reader = response.body!.getReader()
      for (;;) {
        const { done, value } = await reader.read()
        if (done) break
        downloaded += value.length
      }
    }),
  )
  const downloadMs = performance.now() - downloadBegan
  clearInterval(sampler)
  const total = FILES * SIZE
  if (downloaded !== total) throw new Error(`downloaded ${downloaded} of ${total} bytes`)
  return {
    store: label,
    "upload MB/s": (total / 1e6 / (uploadMs / 1000)).toFixed(1),
    "download MB/s": (total / 1e6 / (downloadMs / 1000)).toFixed(1),
    "RSS before MB": before.toFixed(0),
    "RSS peak uploading MB": uploadPeak.toFixed(0),
    "RSS peak overall MB": peak.toFixed(0),
  }
}

async function keyFor(dataDir: string, extra: string[] = []): Promise<string> {
  const lines: string[] = []
  await runKeysCli(
    ["create", "bench", "--scopes", "conversations:write", "--data-dir", dataDir, ...extra],
    (l) => lines.push(l),
    {},
  )
  return (JSON.parse(lines[0]!) as { key: string }).key
}

const rows: Record<string, string>[] = []
console.log(`${FILES} files × ${MB} MB uploaded at once by one user, 1 MiB chunks`)
{
  const dataDir = freshDataDir()
  const key = await keyFor(dataDir)
  const relay = await startRelayProcess({ dataDir, args: ["--skip-warm-up"] })
  rows.push(await measure("file system (sqlite backend)", relay, key))
  await stopRelayProcesses()
}
const unreachable = await postgresUnreachable()
if (unreachable) console.log(`PostgreSQL skipped: ${unreachable}`)
else {
  const scratch = await scratchSchema()
  try {
    const args = ["--storage", "postgres", "--database-url", scratch.url]
    // The schema's tables are created by the relay; the key is made against the same database.
    const relay = await startRelayProcess({ args: [...args, "--skip-warm-up"] })
    const key = await keyFor(relay.dataDir, args)
    rows.push(await measure("PostgreSQL", relay, key))
    await stopRelayProcesses()
  } finally {
    await scratch.drop()
  }
}
console.table(rows)
