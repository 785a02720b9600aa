import { writeFileSync } from "node:fs"
import { relative } from "node:path"
import type { Reporter, TestModule } from "vitest/node"

/**
 * Records, per test file, when it was queued and finished (wall clock) and vitest's diagnostic split
 * (import, setup, tests and hooks), so a slow suite can be read as a timeline rather than a sum.
 * Output path: TIMING_OUT (default vitest-timing.json); with PARLEY_DURATIONS_OUT, also the
 * seconds per file that test/sequencer.ts orders by.
 */
export default class TimingReporter implements Reporter {
  private readonly started = new Map<string, number>()
  private readonly rows: unknown[] = []
  private t0 = Date.now()

  onInit(): void {
    this.t0 = Date.now()
  }

  onTestModuleQueued(module: TestModule): void {
    this.started.set(module.moduleId, Date.now())
  }

  onTestModuleEnd(module: TestModule): void {
    const d = module.diagnostic()
    const tests = [...module.children.allTests()].map((t) => ({
      name: t.fullName,
      ms: Math.round(t.diagnostic()?.duration ?? 0),
      state: t.result().state,
    }))
    this.rows.push({
      file: relative(process.cwd(), module.moduleId),
      queued: (this.started.get(module.moduleId) ?? this.t0) - this.t0,
      ended: Date.now() - this.t0,
      env: Math.round(d.environmentSetupDuration),
      prepare: Math.round(d.prepareDuration),
      collect: Math.round(d.collectDuration),
      setup: Math.round(d.setupDuration),
      duration: Math.round(d.duration),
      tests,
    })
  }

  onTestRunEnd(): void {
    const out = process.env.TIMING_OUT ?? "vitest-timing.json"
    writeFileSync(out, JSON.stringify({ wall: Date.now() - this.t0, files: this.rows }, null, 1))
    // The record test/sequencer.ts orders files by: seconds per file (tests and hooks), longest first.
    const durations = process.env.PARLEY_DURATIONS_OUT
    if (durations) {
      const rows = this.rows as { file: string; duration: number }[]
      const sorted = [...rows].sort((a, b) => b.duration - a.duration)
      const record = Object.fromEntries(sorted.map((r) => [r.file, Math.round(r.duration / 100) / 10]))
      writeFileSync(durations, `${JSON.stringify(record, null, 2)}\n`)
    }
  }
}
