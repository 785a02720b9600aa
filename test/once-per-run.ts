/**
 * Work that one test run does once for all its files, whatever Vitest worker
 * process asks first: the demo's build, the packages' build. A global setup
 * names (and empties) a folder for it; the first caller makes the folder
 * (the claim: only one process can) and does the work, the others wait until
 * it is done, or fail with its error.
 */
import { existsSync, mkdirSync, readFileSync, watch, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"

/** Runs `work` once per run for everyone who calls with the same `dir`; `what` names it in errors. */
export async function oncePerRun(dir: string, what: string, work: () => Promise<void>): Promise<void> {
  const built = join(dir, "built")
  const failed = join(dir, "failed")
  mkdirSync(dirname(dir), { recursive: true })
  try {
    mkdirSync(dir)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error
    return new Promise<void>((resolve, reject) => {
      const settle = () => {
        if (!existsSync(built) && !existsSync(failed)) return
        watcher.close()
        if (existsSync(built)) resolve()
        else reject(new Error(`${what} of another test file failed: ${readFileSync(failed, "utf8")}`))
      }
      const watcher = watch(dir, settle)
      settle()
    })
  }
  try {
    await work()
  } catch (error) {
    writeFileSync(failed, error instanceof Error ? (error.stack ?? error.message) : String(error))
    throw error
  }
  writeFileSync(built, "")
}
