/** Most bytes of an outbound request's answer body read (and dropped) so that its connection can be reused. */
export const MAX_DISCARDED_BYTES = 64 * 1024
/** Longest the relay reads such a body once the status is known, in ms. */
export const DISCARD_MS = 1000

/**
 * Reads and drops at most {@link MAX_DISCARDED_BYTES} of an answer's body
 * within {@link DISCARD_MS}, then cancels the rest. For requests whose status
 * is the whole answer (webhooks, Web Push): the server at the other end is not
 * trusted (a push endpoint is any user's choice), and a body that never ends
 * or trickles in a byte at a time must cost the relay neither memory nor time.
 */
export async function discardBody(body: ReadableStream<Uint8Array> | null): Promise<void> {
  if (!body) return
  const reader = body.getReader()
  const timer = setTimeout(() => void reader.cancel().catch(() => undefined), DISCARD_MS)
  try {
    for (let read = 0; read <= MAX_DISCARDED_BYTES; ) {
      const { done, value } = await reader.read()
      if (done) return
      read += value.byteLength
    }
    await reader.cancel()
  } catch {
    // Cancelled, aborted or reset: the body is not needed.
  } finally {
    clearTimeout(timer)
  }
}
