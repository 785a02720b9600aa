/** Summary statistics of latency samples, in milliseconds. */

/** A latency distribution. */
export interface Distribution {
  readonly count: number
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
  readonly mean: number
}

/** Nearest-rank percentiles of `samples` (not modified). */
export function distribution(samples: readonly number[]): Distribution {
  if (samples.length === 0)
    return { count: 0, p50: Number.NaN, p95: Number.NaN, p99: Number.NaN, max: Number.NaN, mean: Number.NaN }
  const sorted = Float64Array.from(samples).sort()
  const at = (q: number) =>
    sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!
  let sum = 0
  for (const value of sorted) sum += value
  return {
    count: sorted.length,
    p50: at(0.5),
    p95: at(0.95),
    p99: at(0.99),
    max: sorted[sorted.length - 1]!,
    mean: sum / sorted.length,
  }
}

/** The median of `values`. */
export const median = (values: readonly number[]): number => distribution(values).p50

/** `work`'s result and the CPU ms (user and system, this process) it took. */
export function timed<T>(work: () => T): [T, number] {
  const start = process.cpuUsage()
  const result = work()
  const used = process.cpuUsage(start)
  return [result, (used.user + used.system) / 1000]
}

/** The CPU ms `work` took. */
export const cpuMs = (work: () => void): number => timed(work)[1]

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Waits until `done()` holds, checking every `every` ms; false if `timeoutMs` passed first. */
export async function until(done: () => boolean, timeoutMs: number, every = 20): Promise<boolean> {
  const deadline = performance.now() + timeoutMs
  while (!done()) {
    if (performance.now() > deadline) return false
    await sleep(every)
  }
  return true
}

/** Rejects when `promise` takes longer than `ms`. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)
    }),
  ])
}

/** Waits until `count()` reaches `expected`, or until it made no progress for `stallMs`. */
export async function drain(count: () => number, expected: number, stallMs = 10_000): Promise<void> {
  let last = count()
  let progressAt = performance.now()
  while (count() < expected) {
    await sleep(20)
    const now = performance.now()
    if (count() !== last) {
      last = count()
      progressAt = now
    } else if (now - progressAt > stallMs) return
  }
}

/**
 * Waits until `cpuMs()` grows by at most `idleMs` over `windowMs` (the process
 * finished its background work), or `timeoutMs` passed; returns the time waited, ms.
 */
export async function quiesce(
  cpuMs: () => number,
  { windowMs = 500, idleMs = 10, timeoutMs = 120_000 } = {},
): Promise<number> {
  const started = performance.now()
  let before = cpuMs()
  while (performance.now() - started < timeoutMs) {
    await sleep(windowMs)
    const now = cpuMs()
    if (now - before <= idleMs) break
    before = now
  }
  return performance.now() - started
}
