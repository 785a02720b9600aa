import { ParleyError } from "@parley/shared"
import { ConfigError, parseConfig, usage } from "./config.js"
import { startRelay } from "./relay.js"

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
  if (process.argv[2] === "rebuild-inboxes") {
    const { runRebuildInboxesCli } = await import("./inbox/rebuild-cli.js")
    process.exit(await runRebuildInboxesCli(process.argv.slice(3)))
  }
  let config: ReturnType<typeof parseConfig>
  try {
    config = parseConfig(process.argv.slice(2))
  } catch (error) {
    process.stderr.write(`parley-relay: ${(error as Error).message}\n\n${usage()}\n`)
    process.exit(2)
  }
  if ("help" in config && config.help) {
    process.stdout.write(`${usage()}\n`)
    return
  }
  const relay = await startRelay(config)
  let stopping = false
  const stop = (signal: string) => {
    if (stopping) {
      // A second signal means "now": everything acknowledged is already durable.
      relay.log.warn({ signal }, "second signal: exiting without finishing the shutdown")
      process.exit(1)
    }
    stopping = true
    relay.log.info({ signal }, "shutting down")
    relay.close().then(
      () => process.exit(0),
      (error: unknown) => {
        relay.log.fatal({ err: error }, "shutdown failed")
        process.exit(1)
      },
    )
  }
  process.on("SIGTERM", () => stop("SIGTERM"))
  process.on("SIGINT", () => stop("SIGINT"))
}

main().catch((error: unknown) => {
  // Configuration and start-up refusals (e.g. a hook script that fails to load) need no stack trace.
  if (error instanceof ConfigError || error instanceof ParleyError)
    process.stderr.write(`parley-relay: ${error.message}\n`)
  else
    process.stderr.write(`parley-relay: ${error instanceof Error ? (error.stack ?? error.message) : error}\n`)
  process.exit(1)
})
