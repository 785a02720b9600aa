/**
 * The Parley relay exactly as `relay/bin/parley-relay.js` starts it (same
 * flags, same `startRelay`), except that its update policy allows every update:
 * the benchmark's "authorization off" variant, used only because the relay has
 * no flag to switch its policy off. The per-update check of the document rules
 * (and its client-id bindings) is what this turns off; authentication, and the
 * membership / read-only check the relay's core makes before any policy, still
 * happen.
 *
 *   node --import tsx test/bench/servers/parley-without-authorization.ts --port 0 --dev ...
 */
import { startRelay, type UpdatePolicy } from "@parley/relay"
import { parseConfig } from "../../../relay/src/config.js"

const allowEverything: UpdatePolicy = { checkUpdate: () => ({ allowed: true }) }

const config = parseConfig(process.argv.slice(2))
if ("help" in config && config.help) throw new Error("--help is not supported here")
const relay = await startRelay({ ...config, policy: allowEverything })
const stop = () => relay.close().then(() => process.exit(0))
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
