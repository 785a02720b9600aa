import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { ErrorCode, ParleyError } from "@parley/shared"
import pino from "pino"
import { afterAll, describe, expect, it } from "vitest"
import type { HookContext } from "../../src/hooks/define.js"
import { PermanentDeliveryError } from "../../src/hooks/dispatcher.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { HookWorker } from "../../src/hooks/worker-host.js"
import { hooksApi } from "../helpers/relay-process.js"

const api = JSON.stringify(hooksApi())
const dirs: string[] = []
afterAll(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

/** A module that ends its worker the way a message body asks (as an outside probe's bot did). */
const CRASHING = `import { defineHooks } from ${api}
export default defineHooks({
  async onMessageSent({ subject }) {
    const body = subject.message.body
    if (body === "exit") process.exit(3)
    // Thrown from a timer the pending call set: nobody catches it, the worker dies.
    if (body === "timer") await new Promise(() => setTimeout(() => { throw new Error("boom in a timer") }, 5))
  },
})
`

function eventOf(id: string, body: string): HookEvent {
  return {
    event: { id, type: "message.sent", conversationId: "g~crash" },
    subject: { message: { id: `m-${id}`, body } },
  } as unknown as HookEvent
}

async function failure(promise: Promise<unknown>): Promise<Error> {
  return promise.then(
    () => {
      throw new Error("the call succeeded")
    },
    (error: Error) => error,
  )
}

describe("HookWorker crashes", () => {
  it("a handler that crashes the worker a second time for the same event is dead-lettered instead of retried", async () => {
    const dir = mkdtempSync(join(tmpdir(), "parley-hook-crash-"))
    dirs.push(dir)
    writeFileSync(join(dir, "crash.mjs"), CRASHING)
    const silent = pino({ level: "silent" })
    const worker = await HookWorker.start({ dir, log: silent, timeoutMs: 10_000 })
    const call = (event: HookEvent, attempt: number) =>
      worker.call(0, "onMessageSent", event, { attempt, signal: new AbortController().signal }, {
        log: silent,
      } as unknown as HookContext)
    try {
      for (const [id, body, why] of [
        ["evt_exit", "exit", "the hook worker exited (code 3)"],
        ["evt_timer", "timer", "the hook worker crashed: boom in a timer"],
      ] as const) {
        // The first crash is an ordinary failed attempt: retried.
        const first = await failure(call(eventOf(id, body), 1))
        expect(first).toBeInstanceOf(ParleyError)
        expect(first).toMatchObject({ code: ErrorCode.UNAVAILABLE })
        expect(first.message).toBe(`${why}; its worker was restarted`)
        // The second, for the same event: dead-lettered (before: retried up to --hook-attempts,
        // each retry restarting the worker every conversation's hooks share).
        const second = await failure(call(eventOf(id, body), 2))
        expect(second).toBeInstanceOf(PermanentDeliveryError)
        expect(second.message).toBe(
          `${why}; its worker was restarted (2 times for this event: dead-lettered instead of retried; replay it once the handler is fixed)`,
        )
      }
      // Counted per event: another event's first crash is retried, and the restarted worker serves.
      const other = await failure(call(eventOf("evt_other", "exit"), 1))
      expect(other).toBeInstanceOf(ParleyError)
      await expect(call(eventOf("evt_fine", "fine"), 1)).resolves.toBeUndefined()
    } finally {
      await worker.stop()
    }
  }, 60_000)
})
