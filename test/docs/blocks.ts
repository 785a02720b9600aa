import { readFileSync } from "node:fs"

/** A fenced code block of a Markdown file. */
export interface DocBlock {
  /** The Markdown file, relative to the repository root. */
  readonly file: string
  /** Line of the opening fence (1-based). */
  readonly line: number
  /** The fence's language: `ts`, `sh`, `text`, `jsonc`, or "" when it has none. */
  readonly lang: string
  readonly code: string
  /** Why the block is not run, from a `<!-- doc-test: not run (reason) -->` line just before it. */
  readonly notRun?: string
}

/** Languages whose blocks are code a user would copy: run (and type-checked, for `ts`). */
export const RUN = ["ts", "sh"] as const
/** Languages of illustrations (layouts, payloads, headers): not run. */
export const ILLUSTRATION = ["text", "jsonc"] as const

const FENCE = /^```(\S*)\s*$/
const NOT_RUN = /^<!-- doc-test: not run \((.+)\) -->$/

/** Every fenced block of `file` (relative to `root`), in order. */
export function readBlocks(root: string, file: string): DocBlock[] {
  const lines = readFileSync(`${root}/${file}`, "utf8").split("\n")
  const blocks: DocBlock[] = []
  for (let i = 0; i < lines.length; i++) {
    const open = FENCE.exec(lines[i]!)
    if (!open) continue
    const start = i
    let end = i + 1
    while (end < lines.length && lines[end]!.trim() !== "```") end++
    let before = start - 1
    while (before >= 0 && lines[before]!.trim() === "") before--
    const notRun = before >= 0 ? NOT_RUN.exec(lines[before]!.trim())?.[1] : undefined
    blocks.push({
      file,
      line: start + 1,
      lang: open[1]!,
      code: lines.slice(start + 1, end).join("\n"),
      ...(notRun ? { notRun } : {}),
    })
    i = end
  }
  return blocks
}

/** A file name for a block: where it came from, readable in error messages. */
export const blockName = (block: DocBlock) => `${block.file.replace(/[/.]/g, "_")}_line${block.line}`
