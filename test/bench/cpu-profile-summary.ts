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
 *   node --import tsx test/bench/cpu-profile-summary.ts FILE.cpuprofile --under NAME [depth] [min-ms]
 *
 * `--under` prints the call tree beneath the function NAME instead (every
 * outermost frame of it merged: what one part of the relay, e.g. the group
 * commit's `flush` or the hook rows' `ride`, spends and where), `depth` levels
 * deep (default 4), branches under `min-ms` (default 20) left out.
 */
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"

export interface ProfileNode {
  id: number
  callFrame: { functionName: string; url: string; lineNumber: number }
  children?: number[]
}
export interface Profile {
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

/** A merged call tree: a function's time (total, self, µs) and its callees' by frame. */
export interface Branch {
  total: number
  self: number
  readonly children: Map<string, Branch>
}

/**
 * The call tree beneath `name` in `profile`: every frame of it not itself
 * beneath another merged into one tree, `depth` levels of callees deep (each
 * callee named by function, file and line). Times are µs, a sample's time
 * being the delta to the next sample (as in {@link summarizeProfile}).
 */
export function subtreeOf(profile: Profile, name: string, depth = 4): Branch {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const self = new Map<number, number>()
  let t = profile.startTime
  const at = profile.timeDeltas.map((d) => {
    t += d
    return t
  })
  profile.samples.forEach((id, i) => {
    self.set(id, (self.get(id) ?? 0) + (at[i + 1] ?? profile.endTime) - at[i]!)
  })
  const totals = new Map<number, number>()
  const totalOf = (node: ProfileNode): number => {
    const known = totals.get(node.id)
    if (known !== undefined) return known
    let sum = self.get(node.id) ?? 0
    for (const c of node.children ?? []) sum += totalOf(byId.get(c)!)
    totals.set(node.id, sum)
    return sum
  }
  const label = (n: ProfileNode) =>
    `${n.callFrame.functionName || "(anonymous)"} ${shortUrl(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`
  const root: Branch = { total: 0, self: 0, children: new Map() }
  const merge = (into: Branch, node: ProfileNode, levels: number) => {
    into.total += totalOf(node)
    into.self += self.get(node.id) ?? 0
    if (levels === 0) return
    for (const c of node.children ?? []) {
      const child = byId.get(c)!
      let branch = into.children.get(label(child))
      if (!branch) {
        branch = { total: 0, self: 0, children: new Map() }
        into.children.set(label(child), branch)
      }
      merge(branch, child, levels - 1)
    }
  }
  // Iterative: a deep stack (a long promise chain) would overflow a recursive walk.
  const stack: { node: ProfileNode; inside: boolean }[] = [{ node: profile.nodes[0]!, inside: false }]
  while (stack.length > 0) {
    const { node, inside } = stack.pop()!
    const hit = node.callFrame.functionName === name
    if (hit && !inside) merge(root, node, depth)
    for (const c of node.children ?? []) stack.push({ node: byId.get(c)!, inside: inside || hit })
  }
  return root
}

/** Prints {@link subtreeOf} the profile in `file`, branches of less than `minMs` left out. */
export function printSubtree(file: string, name: string, depth = 4, minMs = 20): void {
  const root = subtreeOf(JSON.parse(readFileSync(file, "utf8")) as Profile, name, depth)
  const ms = (us: number) => (us / 1000).toFixed(0).padStart(7)
  const print = (title: string, branch: Branch, indent: number) => {
    console.log(
      `${ms(branch.total)} ms (self ${(branch.self / 1000).toFixed(0)})${" ".repeat(indent + 1)}${title}`,
    )
    for (const [k, b] of [...branch.children].sort((x, y) => y[1].total - x[1].total))
      if (b.total >= minMs * 1000) print(k, b, indent + 2)
  }
  print(name, root, 0)
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  if (process.argv[3] === "--under")
    printSubtree(
      process.argv[2]!,
      process.argv[4]!,
      Number(process.argv[5] ?? 4),
      Number(process.argv[6] ?? 20),
    )
  else summarizeProfile(process.argv[2]!, Number(process.argv[3] ?? 40))
}
