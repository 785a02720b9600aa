import { readdirSync, readFileSync } from "node:fs"
import { dirname, join, relative, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"

// The relay's modules form a tree of layers (transport → core → update path → document host →
// shared codec); a cycle means two modules each need the other, and the layering is gone.
// Type-only imports count, as they do for `npx madge --circular --extensions ts relay/src`.

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), "../src")

/** Relative imports and re-exports of a module, static or dynamic, as written. */
const IMPORT = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)["'](\.{1,2}\/[^"']+)["']/g

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sourceFiles(path)
    return entry.name.endsWith(".ts") ? [path] : []
  })
}

/** Module → the modules it imports, by path relative to `root`. */
function importGraph(root: string): Map<string, string[]> {
  const graph = new Map<string, string[]>()
  for (const file of sourceFiles(root)) {
    const text = readFileSync(file, "utf8")
    const targets = [...text.matchAll(IMPORT)].map((m) =>
      relative(root, resolve(dirname(file), m[1]!.replace(/\.js$/, ".ts"))),
    )
    graph.set(relative(root, file), targets)
  }
  return graph
}

/** Every cycle found by a depth-first walk, each as the modules along it. */
function findCycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  const cycles: string[][] = []
  const done = new Set<string>()
  const path: string[] = []
  const visit = (node: string) => {
    const at = path.indexOf(node)
    if (at >= 0) {
      cycles.push([...path.slice(at), node])
      return
    }
    if (done.has(node)) return
    path.push(node)
    for (const next of graph.get(node) ?? []) visit(next)
    path.pop()
    done.add(node)
  }
  for (const node of graph.keys()) visit(node)
  return cycles
}

describe("relay modules", () => {
  it("import one another without a cycle", () => {
    const graph = importGraph(SRC)
    expect(graph.size).toBeGreaterThan(20)
    expect(graph.get("connection.ts")).toContain("errors.ts")
    expect(findCycles(graph)).toEqual([])
  })

  it("would report a cycle, type-only imports included", () => {
    const graph = new Map([
      ["a.ts", ["b.ts"]],
      ["b.ts", ["c.ts"]],
      ["c.ts", ["a.ts"]],
      ["d.ts", ["a.ts"]],
    ])
    expect(findCycles(graph)).toEqual([["a.ts", "b.ts", "c.ts", "a.ts"]])
    const text = `import type { X } from "./x.js"\nexport { Y } from "../y.js"\nconst z = await import("./z.js")`
    expect([...text.matchAll(IMPORT)].map((m) => m[1])).toEqual(["./x.js", "../y.js", "./z.js"])
  })
})
