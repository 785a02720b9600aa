/**
 * Polls `probe` every 20 ms until `ok` holds for its value, and returns that
 * value; throws with the last value seen after `ms`.
 */
export async function until<T>(
  probe: () => T | Promise<T>,
  ok: (value: T) => boolean,
  ms = 10_000,
): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await probe()
    if (ok(value)) return value
    if (Date.now() > deadline) throw new Error(`condition not met in ${ms} ms: ${JSON.stringify(value)}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}
