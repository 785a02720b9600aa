import { existsSync, readFileSync } from "node:fs"
import { hooksApi } from "../helpers/relay-process.js"

/**
 * A hook module that appends each delivery to the file `HOOK_LOG`, and with
 * `HOOK_BLOCK=1` never finishes the first one (so that a test can kill the
 * relay mid-delivery). Tests write it into a hooks directory, for relay processes started
 * with `hooksUseHooksApi` (it imports the hook API from `hooksApi()`).
 */
export const RECORDER = `import { appendFileSync } from "node:fs"
import { defineHooks } from ${JSON.stringify(hooksApi())}
export default defineHooks({
  async onMessageSent({ event, subject }) {
    appendFileSync(process.env.HOOK_LOG, JSON.stringify({ id: event.id, message: subject.message.id, seq: subject.message.seq, pid: process.pid }) + "\\n")
    if (process.env.HOOK_BLOCK === "1") await new Promise(() => {})
  },
})
`

/** One delivery as {@link RECORDER} logs it. */
export interface Line {
  id: string
  message: string
  seq: number
  pid: number
}

/** The deliveries logged in `file` so far. */
export const readLines = (file: string): Line[] =>
  existsSync(file)
    ? readFileSync(file, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Line)
    : []
