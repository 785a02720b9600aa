import { spawn } from "node:child_process"
import { describe, expect, it } from "vitest"
import { processTree, readProcess } from "./proc.js"
import { distribution } from "./stats.js"

describe("benchmark statistics", () => {
  it("reports nearest-rank percentiles, maximum and mean", () => {
    const samples = Array.from({ length: 100 }, (_, i) => 100 - i)
    expect(distribution(samples)).toEqual({ count: 100, p50: 50, p95: 95, p99: 99, max: 100, mean: 50.5 })
  })

  it("leaves the samples in their order", () => {
    const samples = [3, 1, 2]
    distribution(samples)
    expect(samples).toEqual([3, 1, 2])
  })

  it("reports no figures for no samples", () => {
    const empty = distribution([])
    expect(empty.count).toBe(0)
    expect(empty.p99).toBeNaN()
  })
})

describe("server process readings", () => {
  it("measure a server together with the processes it started", async () => {
    const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" })
    try {
      await new Promise((resolve) => child.once("spawn", resolve))
      expect(processTree(process.pid)).toContain(child.pid)
      const alone = readProcess(child.pid!)
      const tree = readProcess(process.pid)
      expect(alone.rss).toBeGreaterThan(0)
      expect(alone.peakRss).toBeGreaterThanOrEqual(alone.rss)
      expect(tree.rss).toBeGreaterThan(alone.rss)
    } finally {
      child.kill()
    }
  })

  it("read nothing of a process that is gone", () => {
    expect(readProcess(2 ** 22 + 1)).toEqual({ cpuMs: 0, rss: 0, peakRss: 0 })
  })
})
