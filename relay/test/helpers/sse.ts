import { createParser, type EventSourceMessage } from "eventsource-parser"

/** An open `text/event-stream` response, as a backend's SSE client would read it. */
export interface SseStream {
  readonly status: number
  /** Every event so far, in order. */
  readonly events: EventSourceMessage[]
  /** Comments so far (`ping` for heartbeats). */
  readonly comments: string[]
  /** The `retry:` the server asked for. */
  readonly retry: () => number | undefined
  /** The id to resume from (the last `id:` seen). */
  readonly lastEventId: () => string | undefined
  /** Resolves once the server ended the stream. */
  readonly ended: Promise<void>
  /** Resolves when `check` holds for the events (polled as they arrive); rejects after `timeoutMs`. */
  until(check: (events: readonly EventSourceMessage[]) => boolean, timeoutMs?: number): Promise<void>
  /** Disconnects. */
  close(): void
}

/**
 * Opens `url` with `headers` and reads it as Server-Sent Events. A response
 * that is not a stream resolves with its status and JSON body instead.
 */
export async function openSse(
  url: string,
  headers: Record<string, string>,
): Promise<SseStream | { status: number; body: Record<string, unknown>; contentType: string | null }> {
  const controller = new AbortController()
  const response = await fetch(url, {
    headers: { accept: "text/event-stream", ...headers },
    signal: controller.signal,
  })
  if (!response.headers.get("content-type")?.startsWith("text/event-stream"))
    return {
      status: response.status,
      body: (await response.json()) as Record<string, unknown>,
      contentType: response.headers.get("content-type"),
    }
  const events: EventSourceMessage[] = []
  const comments: string[] = []
  let retry: number | undefined
  let lastEventId: string | undefined
  const waiters = new Set<() => void>()
  const parser = createParser({
    onEvent: (event) => {
      if (event.id !== undefined) lastEventId = event.id
      events.push(event)
      for (const w of [...waiters]) w()
    },
    onComment: (comment) => {
      comments.push(comment.trim())
      for (const w of [...waiters]) w()
    },
    onRetry: (ms) => {
      retry = ms
    },
  })
  const ended = (async () => {
    const decoder = new TextDecoder()
    try {
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>)
        parser.feed(decoder.decode(chunk, { stream: true }))
    } catch {
      // Aborted by close(), or the server went away.
    }
  })()
  return {
    status: response.status,
    events,
    comments,
    retry: () => retry,
    lastEventId: () => lastEventId,
    ended,
    until: (check, timeoutMs = 10_000) =>
      new Promise<void>((resolve, reject) => {
        const test = () => {
          if (!check(events)) return
          waiters.delete(test)
          clearTimeout(timer)
          resolve()
        }
        const timer = setTimeout(() => {
          waiters.delete(test)
          reject(new Error(`timed out; events so far: ${events.map((e) => `${e.id}:${e.event}`).join(", ")}`))
        }, timeoutMs)
        waiters.add(test)
        test()
      }),
    close: () => controller.abort(),
  }
}

/** True when `value` is an open stream rather than a refusal. */
export const isStream = (value: Awaited<ReturnType<typeof openSse>>): value is SseStream => "events" in value
