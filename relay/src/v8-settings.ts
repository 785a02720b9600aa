/**
 * The relay's V8 garbage-collector settings, applied by `parley-relay` itself: `main.ts`
 * imports this module first, so that its body runs before any other module's (ESM evaluates a
 * module's imports in order), and the settings hold for everything the relay loads and does.
 *
 * Why (BENCHMARKS.md, "Frame cost", sessions 18 and 19): V8's memory reducer runs
 * memory-reducing mark-compacts while the relay looks idle between frames; each throws away
 * about 100 functions' optimized code, which the next frames compile again, and a mark-compact
 * landing in a frame's window adds 40–100 ms to it. Without the reducer, and with the old
 * generation allowed to grow further before a mark-compact, those come three times rarer.
 *
 * Operators override them with `PARLEY_V8_FLAGS` (empty: none), and a flag given to node on its
 * command line (`node --heap-growing-percent=150 parley-relay.js`) wins over the same flag here.
 * Only the command line does this; an embedder's own process (`startRelay`) is left alone.
 */
import { setFlagsFromString } from "node:v8"

/** The flags the relay sets when `PARLEY_V8_FLAGS` is not set (measured: BENCHMARKS.md, "Frame cost", session 19). */
export const DEFAULT_V8_FLAGS = "--no-memory-reducer --heap-growing-percent=200"

/** The environment variable that replaces {@link DEFAULT_V8_FLAGS} (empty: set none). */
export const V8_FLAGS_VARIABLE = "PARLEY_V8_FLAGS"

/** What the relay did with V8's flags at start. */
export type V8Settings =
  /** `flags` set; `overridden`: those of the list left out because node's command line gives the same flag. */
  | { readonly ok: true; readonly flags: readonly string[]; readonly overridden: readonly string[] }
  /** Nothing set: `PARLEY_V8_FLAGS` does not parse (the relay refuses to start with `message`). */
  | { readonly ok: false; readonly message: string }

/**
 * A V8 flag's name as V8 matches it: `--no-memory-reducer`, `--nomemory_reducer` and
 * `--memory-reducer=false` all name `memory-reducer`.
 */
export function v8FlagName(flag: string): string {
  let name = flag.replace(/^--?/, "").split("=")[0]!.replaceAll("_", "-")
  if (name.startsWith("no-")) name = name.slice(3)
  else if (name.startsWith("no")) name = name.slice(2)
  return name
}

/**
 * The flags to set: `PARLEY_V8_FLAGS`'s when the variable is set (empty or blank: none), else
 * {@link DEFAULT_V8_FLAGS}; minus those whose flag node's own command line (`nodeArgs`:
 * `process.execArgv` and `NODE_OPTIONS`) already gives. Pure, for tests.
 */
export function v8FlagsToSet(variable: string | undefined, nodeArgs: readonly string[]): V8Settings {
  const listed = (variable ?? DEFAULT_V8_FLAGS).split(/\s+/).filter(Boolean)
  const bad = listed.find((flag) => !/^--[a-z0-9]/i.test(flag))
  if (bad !== undefined)
    return {
      ok: false,
      message: `${V8_FLAGS_VARIABLE}: "${bad}" is not a V8 flag (flags look like --heap-growing-percent=200, separated by spaces; empty sets none)`,
    }
  const given = new Set(nodeArgs.filter((arg) => arg.startsWith("-")).map(v8FlagName))
  return {
    ok: true,
    flags: listed.filter((flag) => !given.has(v8FlagName(flag))),
    overridden: listed.filter((flag) => given.has(v8FlagName(flag))),
  }
}

/** Node's own options from `NODE_OPTIONS` (split on spaces; quoting does not matter for flag names). */
function nodeOptions(): string[] {
  return (process.env.NODE_OPTIONS ?? "").split(/\s+/).filter(Boolean)
}

/** What this process did with V8's flags at start; `main.ts` refuses to start on `ok: false` and logs the rest. */
export const v8Settings: V8Settings = v8FlagsToSet(process.env[V8_FLAGS_VARIABLE], [
  ...process.execArgv,
  ...nodeOptions(),
])
if (v8Settings.ok && v8Settings.flags.length > 0) setFlagsFromString(v8Settings.flags.join(" "))
