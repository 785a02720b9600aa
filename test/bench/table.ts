/** Prints one scenario's figures with the servers side by side. */

/** A table cell. */
export type Cell = string

/** Prints `rows` (label, how to read the figure) for each outcome; failed runs show their error. */
export function printTable<T extends object>(
  title: string,
  outcomes: readonly (T | { server: string; error: string })[],
  rows: readonly [string, (result: T) => Cell][],
  failed: (outcome: T | { server: string; error: string }) => outcome is { server: string; error: string },
): void {
  const headers = ["", ...outcomes.map((o) => (o as { server: string }).server)]
  const body = rows.map(([label, read]) => [
    label,
    ...outcomes.map((o) => (failed(o) ? "failed" : read(o as T))),
  ])
  const widths = headers.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)))
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("   ")
  console.log(`\n${title}`)
  console.log(line(headers))
  console.log(widths.map((w) => "-".repeat(w)).join("   "))
  for (const row of body) console.log(line(row))
  for (const o of outcomes) if (failed(o)) console.log(`  ${o.server} failed: ${o.error}`)
  const problems = outcomes
    .filter(
      (o) =>
        !failed(o) &&
        (o as { problems?: string }).problems &&
        (o as { problems?: string }).problems !== "no errors reported",
    )
    .map((o) => `  ${(o as { server: string }).server}: ${(o as { problems?: string }).problems}`)
  if (problems.length) console.log(`problems reported by clients:\n${problems.join("\n")}`)
}
