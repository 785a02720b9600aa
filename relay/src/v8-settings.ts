/**
 * The relay's V8 garbage-collector settings, applied by `parley-relay` itself: `main.ts`
 * imports this module first, so that its body runs before any other module's body (ESM
 * evaluates a module's imports in order; the whole module graph is parsed before any body runs,
 * so a collection during that parsing still runs with V8's defaults).
 *
 * Why (BENCHMARKS.md, "Frame cost", sessions 18 and 19): under a steady load of large frames
 * the relay's old generation grows by about 3 MB a frame, and a mark-compact of the whole heap
 * landing in a frame's window adds 40–100 ms to it; and after each one V8's memory reducer runs
 * up to three memory-reducing mark-compacts while the relay looks idle, each of which throws
 * away the optimized code of about 100 functions that the next frames compile again. Set here:
 * `--heap-growing-percent=200` (the old generation may grow to three times what survived the
 * last mark-compact before the next: a third to half as many) and `--memory-reducer-single-gc` (one
 * memory-reducing collection after each instead of up to three).
 *
 * Not set here, measured: `--no-memory-reducer` does nothing once the process runs (V8 creates
 * the memory reducer when it sets up the heap; it works on node's command line only), and
 * `--no-incremental-marking`, which does keep the reducer from running (it only ever starts
 * incremental marking), cost the fan-out 15–20 % more CPU per delivery and a worse p99.
 *
 * Operators override them with `PARLEY_V8_FLAGS` (empty: none), and a flag given to node on its
 * command line (`node --heap-growing-percent=150 parley-relay.js`) wins over the same flag here.
 * Only the command line does this; an embedder's own process (`startRelay`) is left alone.
 */
import { setFlagsFromString } from "node:v8"

/** The flags the relay sets when `PARLEY_V8_FLAGS` is not set (measured: BENCHMARKS.md, "Frame cost", session 19). */
export const DEFAULT_V8_FLAGS = "--heap-growing-percent=200 --memory-reducer-single-gc"

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
