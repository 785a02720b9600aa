import { readFileSync } from "node:fs"
import { relative } from "node:path"
import { BaseSequencer, type TestSpecification } from "vitest/node"

/**
 * Starts the longest test files first, from their durations in test/durations.json (written by
 * test/timing-reporter.ts with `PARLEY_DURATIONS_OUT=test/durations.json` after a whole run).
 *
 * Why: Vitest orders by the durations of its last run on this machine, and with none (a fresh
 * clone, as in CI) by file size, which says little here: a short file that installs packages or
 * waits for a browser can take a minute and a half, and started last it ran alone at the end
 * while the other worker idled. A file not in the record (a new one) goes first, as Vitest
 * runs unknown files first; the record need not be exact, only roughly in order.
 */
export default class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const root = this.ctx.config.root
    let seconds: Record<string, number> = {}
    try {
      seconds = JSON.parse(readFileSync(`${root}/test/durations.json`, "utf8")) as Record<string, number>
    } catch {
      return super.sort(files)
    }
    const of = (file: TestSpecification) => seconds[relative(root, file.moduleId)] ?? Number.POSITIVE_INFINITY
    return [...files].sort((a, b) => of(b) - of(a))
  }
}
