// First, and a bare import (which import sorting leaves in place): V8's settings must hold for
// every other module's body and everything after (see v8-settings.ts).
import "./v8-settings.js"
import { ParleyError } from "@parley/shared"
import { ConfigError, parseConfig, usage } from "./config.js"
import { flushLog } from "./log.js"
import { startRelay } from "./relay.js"
import { ExitCode, exitCodeOf, StartupError } from "./startup-error.js"
import { DEFAULT_STORAGE_TIMEOUT_MS } from "./storage/guard.js"
import { v8Settings } from "./v8-settings.js"

/** A signal this soon after the first that started the shutdown is taken as the same one delivered twice. */
const SAME_INTERRUPT_MS = 1_000

/**
 * Longest a shutdown may take, in storage timeouts (30 s by default): a
 * database that stopped answering (a stopped backend, a link that drops every
 * packet) kept the relay from exiting until it answered again, serving
 * nobody (an outside probe). Nothing acknowledged is lost by exiting then.
 */
const SHUTDOWN_STORAGE_TIMEOUTS = 6

/** Runs the relay from the command line until SIGTERM / SIGINT, then stops gracefully and exits 0. */
async function main(): Promise<void> {
  if (process.argv[2] === "dead-letters") {
    const { runDeadLetterCli } = await import("./hooks/dead-letter-cli.js")
    process.exit(await runDeadLetterCli(process.argv.slice(3)))
  }
  if (process.argv[2] === "damaged") {
    const { runDamagedCli } = await import("./storage/damaged-cli.js")
    process.exit(await runDamagedCli(process.argv.slice(3)))
  }
  if (process.argv[2] === "keys") {
    const { runKeysCli } = await import("./api/keys-cli.js")
    process.exit(await runKeysCli(process.argv.slice(3)))
  }
  if (process.argv[2] === "vapid-keys") {
    if (process.argv.length > 3) {
      process.stdout.write(
        "usage: parley-relay vapid-keys\n\nPrints a fresh VAPID key pair for Web Push as two lines, PARLEY_VAPID_PUBLIC_KEY and\nPARLEY_VAPID_PRIVATE_KEY (set them, with --vapid-subject, on every relay).\n",
      )
      process.exit(["--help", "-h"].includes(process.argv[3]!) ? 0 : 2)
    }
    const { generateVapidKeys } = await import("./push/vapid.js")
    const { publicKey, privateKey } = generateVapidKeys("mailto:unused")
    process.stdout.write(`PARLEY_VAPID_PUBLIC_KEY=${publicKey}\nPARLEY_VAPID_PRIVATE_KEY=${privateKey}\n`)
    process.exit(0)
  }
  if (process.argv[2] === "rebuild-inboxes") {
    const { runRebuildInboxesCli } = await import("./inbox/rebuild-cli.js")
    process.exit(await runRebuildInboxesCli(process.argv.slice(3)))
  }
  if (process.argv[2] === "erase-user") {
    const { runEraseUserCli } = await import("./purge/erase-user-cli.js")
    process.exit(await runEraseUserCli(process.argv.slice(3)))
  }
  // A mistyped command read as "too many arguments. Expected 0 arguments but got 1".
  const word = process.argv[2]
  if (word !== undefined && !word.startsWith("-"))
    throw new ConfigError(
      `unknown command "${word}": the commands are erase-user, rebuild-inboxes, damaged, dead-letters, keys and vapid-keys; without one, the relay runs`,
    )
  // Not a ConfigError: its hint points at --help, which does not list node's settings.
  if (!v8Settings.ok) throw new StartupError(ExitCode.CONFIG, v8Settings.message)
  const config = parseConfig(process.argv.slice(2))
  if ("help" in config && config.help) {
    process.stdout.write(`${usage()}\n`)
    return
  }
  // A log reader that is gone (a shipper that died, a closed terminal) makes every write to stdout or
  // stderr fail with EPIPE, emitted as an 'error' nobody handled: the relay crashed the first time
  // anything wrote there (Yjs warns on the console), and then never exited (an outside probe). What
  // cannot be written is dropped; the relay keeps serving.
  process.stdout.on("error", () => {})
  process.stderr.on("error", () => {})
  const relay = await startRelay(config)
  relay.log.info(
    { v8Flags: v8Settings.flags, overriddenByNode: v8Settings.overridden },
    "V8 flags set by the relay (PARLEY_V8_FLAGS; node's own command line wins)",
  )
  // A promise rejected with nobody handling it is one task's failure (a hook module's fire-and-forget
  // request, say): Node would end the process for it, and every user with it. It is logged instead,
  // and the relay keeps serving; what it acknowledged is durable either way.
  process.on("unhandledRejection", (reason: unknown) => {
    relay.log.error(
      { err: reason },
      "a promise was rejected and nothing handled it (kept serving; a hook module's unawaited promise, or a relay bug to report)",
    )
  })
  let stoppingSince: number | undefined
  const stop = (signal: string) => {
    if (stoppingSince !== undefined) {
      // One Ctrl+C reaches a terminal's whole process group: the relay and a launcher that forwards it
      // (`npm start`) deliver it twice within milliseconds. Only a later one is a second request.
      if (performance.now() - stoppingSince < SAME_INTERRUPT_MS) return
      // A second signal means "now": everything acknowledged is already durable.
      relay.log.warn({ signal }, "second signal: exiting without finishing the shutdown")
      process.exit(ExitCode.FAILURE)
    }
    stoppingSince = performance.now()
    relay.log.info({ signal }, "shutting down")
    const deadlineMs = SHUTDOWN_STORAGE_TIMEOUTS * (config.storageTimeoutMs ?? DEFAULT_STORAGE_TIMEOUT_MS)
    setTimeout(() => {
      relay.log.error(
        { deadlineMs },
        "the shutdown did not finish in time (storage not answering?): exiting; everything acknowledged is stored",
      )
      void flushLog(relay.log).then(() => process.exit(ExitCode.FAILURE))
    }, deadlineMs)
    // The last log lines are flushed for a bounded time: a log reader that is gone or stalled cannot keep the relay up.
    relay.close().then(
      () => flushLog(relay.log).then(() => process.exit(ExitCode.OK)),
      (error: unknown) => {
        relay.log.fatal({ err: error }, "shutdown failed")
        void flushLog(relay.log).then(() => process.exit(ExitCode.FAILURE))
      },
    )
  }
  process.on("SIGTERM", () => stop("SIGTERM"))
  process.on("SIGINT", () => stop("SIGINT"))
}

main().catch((error: unknown) => {
  // A start-up refusal is one line naming what to fix (exit codes: relay/README.md, "Exit codes");
  // anything else is a bug, and its stack trace is what a report needs.
  const code = exitCodeOf(error)
  if (error instanceof ParleyError) {
    const hint = error instanceof ConfigError ? " (parley-relay --help lists every flag)" : ""
    process.stderr.write(`parley-relay: ${(error as Error).message}${hint}\n`)
  } else {
    process.stderr.write(`parley-relay: ${error instanceof Error ? (error.stack ?? error.message) : error}\n`)
  }
  process.exit(code)
})
