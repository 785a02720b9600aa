/** Prints one scenario's figures with the servers side by side, and renders them as Markdown. */

/** A table cell. */
export type Cell = string

/** A failed run: which server, and why. */
export interface Failure {
  readonly server: string
  readonly error: string
}

/** True when `outcome` is a failed run. */
export const failed = (outcome: object): outcome is Failure => "error" in outcome

/**
 * Prints `rows` (label, how to read the figure) for each outcome, failed runs
 * showing their error, and returns the same table in Markdown.
 */
export function printTable<T extends object>(
  title: string,
  outcomes: readonly (T | Failure)[],
  rows: readonly [string, (result: T) => Cell][],
): string {
  const headers = ["", ...outcomes.map((o) => (o as { server: string }).server)]
  const body = rows.map(([label, read]) => [
    label,
    ...outcomes.map((o) => (failed(o) ? "failed" : read(o as T))),
  ])
  const widths = headers.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)))
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("   ")
  const notes: string[] = []
  for (const o of outcomes) if (failed(o)) notes.push(`${o.server} failed: ${o.error}`)
  for (const o of outcomes) {
    const problems = (o as { problems?: string }).problems
    if (!failed(o) && problems && problems !== "no errors reported")
      notes.push(`${(o as { server: string }).server}: clients reported ${problems}`)
  }
  console.log(`\n${title}`)
  console.log(line(headers))
  console.log(widths.map((w) => "-".repeat(w)).join("   "))
  for (const row of body) console.log(line(row))
  for (const note of notes) console.log(`  ${note}`)

  const md = (cells: readonly string[]) => `| ${cells.join(" | ")} |`
  return [
    `### ${title}`,
    "",
    md(headers),
    md(headers.map((_, i) => (i === 0 ? "---" : "---:"))),
    ...body.map(md),
    ...(notes.length ? ["", ...notes.map((n) => `- ${n}`)] : []),
    "",
  ].join("\n")
}
