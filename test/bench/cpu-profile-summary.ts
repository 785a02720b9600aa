/**
 * Self and total time of a V8 `.cpuprofile` (what `node --cpu-prof` writes),
 * by function and by source file, so that a profile can be read without
 * DevTools; optionally only the samples inside given time windows (µs of the
 * monotonic clock the profile's timestamps use: `process.hrtime` of any
 * process on the machine). A CPU profile samples the main thread's stack:
 * time blocked in a system call (an fsync) counts, other threads (GC helpers,
 * the compiler) do not. Also usable on its own:
 *
 *   node --import tsx test/bench/cpu-profile-summary.ts FILE.cpuprofile [top]
 */
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"

interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
  children?: number[]
}
interface Profile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
  startTime: number
  endTime: number
}

/** Time windows, [from, to) in µs, by name. */
export type Windows = Record<string, readonly (readonly [number, number])[]>

const shortUrl = (url: string) =>
  url
    .replace(/^file:\/\//, "")
    .replace(/.*\/node_modules\//, "~/")
    .replace(/.*\/(relay|shared|client)\/src\//, "$1/")

/**
 * Prints the `top` functions and files by self time, and the top functions by
 * total (inclusive) time: of the whole profile, or of each set of `windows`.
 */
export function summarizeProfile(file: string, top = 40, windows?: Windows): void {
  const profile = JSON.parse(readFileSync(file, "utf8")) as Profile
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const key = (n: ProfileNode) => `${n.callFrame.functionName || "(anonymous)"} ${shortUrl(n.callFrame.url)}`
  // Each sample's time: the delta to the next sample is the time its stack ran.
  const at: number[] = []
  let t = profile.startTime
  for (const d of profile.timeDeltas) {
    t += d
    at.push(t)
  }
  const spent = (i: number) => (at[i + 1] ?? profile.endTime) - at[i]!

  const report = (title: string, inside: (time: number) => boolean) => {
    const selfByFn = new Map<string, number>()
    const selfByFile = new Map<string, number>()
    const totalByFn = new Map<string, number>()
    let busy = 0
    profile.samples.forEach((id, i) => {
      if (!inside(at[i]!)) return
      const us = spent(i)
      const n = byId.get(id)!
      if (n.callFrame.functionName === "(idle)") return
      busy += us
      selfByFn.set(key(n), (selfByFn.get(key(n)) ?? 0) + us)
      const f = shortUrl(n.callFrame.url) || n.callFrame.functionName
      selfByFile.set(f, (selfByFile.get(f) ?? 0) + us)
      // Inclusive: every distinct function on the stack once.
      const seen = new Set<string>()
      for (let node: number | undefined = id; node !== undefined; node = parent.get(node)) {
        const k = key(byId.get(node)!)
        if (seen.has(k)) continue
        seen.add(k)
        totalByFn.set(k, (totalByFn.get(k) ?? 0) + us)
      }
    })
    console.log(`\n=== ${title}: busy ${(busy / 1000).toFixed(0)} ms`)
    const print = (heading: string, m: Map<string, number>) => {
      console.log(`\n${heading}`)
      for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top))
        console.log(`${(us / 1000).toFixed(1).padStart(9)} ms  ${k}`)
    }
    print("self time by function", selfByFn)
    print("self time by file", selfByFile)
    print("total time by function", totalByFn)
  }

  if (!windows) report("whole profile", () => true)
  else
    for (const [name, list] of Object.entries(windows))
      report(`${name} (${list.length} windows)`, (time) =>
        list.some(([from, to]) => time >= from && time < to),
      )
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1])
  summarizeProfile(process.argv[2]!, Number(process.argv[3] ?? 40))
