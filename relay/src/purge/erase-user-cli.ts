import { HistoryDefaults, isUserId } from "@parley/shared"
import { openForCommand } from "../backend/open-for-command.js"
import { ConfigError, flag, STORAGE_FLAGS, storageLocation, subcommand } from "../config.js"
import { HistoryKeeper } from "../history/keeper.js"
import { rebuildInboxes } from "../inbox/rebuild.js"
import { createLogger } from "../log.js"
import { RelayMetrics } from "../metrics.js"
import { RelayCore } from "../relay-core.js"
import { damagedLeft } from "./erase-admin.js"
import { eraseUser } from "./erase-user.js"

const CLI = subcommand("erase-user", {
  synopsis: "<user> [options]",
  positionals: ["user"],
  flags: { ...STORAGE_FLAGS, help: flag({ kind: "boolean", help: "print this help" }) },
  about: `  Erases everything <user> wrote (GDPR): every message of theirs in every
  conversation becomes a deletion placeholder, and the text is purged from the
  logs, snapshots, sealed segments, stored hook events and inboxes. Idempotent.
  Run it while the relay is stopped (it opens the same storage); with the relay
  running, call DELETE /admin/users/<user>/content with a service token instead.
  Prints one JSON line: { user, conversations, messages, uploads, damaged }:
  conversations looked in (every stored one), messages replaced, files
  deleted, and damaged conversations it could not erase (then it exits 1:
  restore them with damaged restore and run it again; the others are erased).`,
})

/** `parley-relay erase-user <user>`: the operator's erasure with the relay stopped. Returns the exit code. */
export async function runEraseUserCli(
  argv: readonly string[],
  out: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  let parsed: ReturnType<typeof CLI.parse>
  let location: ReturnType<typeof storageLocation>
  try {
    parsed = CLI.parse(argv, env)
    if (parsed.values.help) {
      out(CLI.usage)
      return 0
    }
    location = storageLocation(parsed.values, ["sqlite", "postgres"], env)
    if (!isUserId(parsed.args[0])) throw new ConfigError("give the id of the user to erase")
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    out(`parley-relay erase-user: ${error.message}\n\n${CLI.usage}`)
    return 2
  }
  const user = parsed.args[0]
  const backend = await openForCommand("erase-user", location, parsed.values["data-dir"], out)
  if (!backend) return 1
  const core = new RelayCore({
    storage: backend.documents,
    log: createLogger("warn"),
    metrics: new RelayMetrics(),
    history: new HistoryKeeper(backend.history, HistoryDefaults),
    ...(backend.purge ? { purge: backend.purge } : {}),
  })
  try {
    const report = await eraseUser(core, await backend.documents.list(), backend.history, user, backend.blobs)
    // No hook pipeline runs here: the inboxes that showed the user's messages are derived again,
    // and closing the core folds every document it wrote into a snapshot.
    await rebuildInboxes(core, backend.documents)
    out(JSON.stringify({ user, ...report }))
    if (report.damaged.length === 0) return 0
    out(`parley-relay erase-user: ${damagedLeft(report).message}`)
    return 1
  } finally {
    await core.close()
    await backend.purge?.scrub()
    await backend.close()
  }
}
