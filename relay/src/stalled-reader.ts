import type { ServerResponse } from "node:http"

/**
 * Ends `res`'s connection once its reader has taken no bytes for about
 * `idleMs` (between half and all of it), calling `onStall` first. A reader
 * that stops reading holds the socket, and whatever feeds the response, for
 * good otherwise: the response waits for the socket to drain, and its last
 * chunks wait in memory once its source is read. This is the socket's own
 * timer, which any byte sent or received resets; Node defers it once more
 * when the socket's write queue changed since its last look, so it is armed
 * for half the limit.
 */
export function endWhenStalled(res: ServerResponse, idleMs: number, onStall?: () => void): void {
  res.setTimeout(Math.max(1, Math.floor(idleMs / 2)), () => {
    onStall?.()
    res.destroy()
  })
}
