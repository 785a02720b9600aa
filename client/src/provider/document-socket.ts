import { PARLEY_PARAM, PARLEY_PROTOCOL_VERSION, TOKEN_PARAM } from "@parley/shared"

/** `readyState` values of the browser's WebSocket. */
export const SocketState = { connecting: 0, open: 1, closing: 2, closed: 3 } as const

/**
 * The part of the browser's WebSocket API a document's sync uses: a real
 * socket of its own (`multiplex: false`), or a channel of the client's one
 * multiplexed socket. Frames are whole Parley frames (shared/PROTOCOL.md).
 */
export interface DocumentSocket {
  binaryType?: string
  readonly readyState: number
  onopen: ((event: unknown) => void) | null
  onmessage: ((event: { data: unknown }) => void) | null
  onclose: ((event: { code: number; reason: string }) => void) | null
  onerror: ((event: unknown) => void) | null
  send(data: Uint8Array): void
  close(code?: number, reason?: string): void
}

/** Opens the socket of document `name`, authenticated by `token`. */
export type SocketOpener = (name: string, token: string) => DocumentSocket

/** A WebSocket class with the browser's API: the browser's own, or `ws` in Node (passed as it is). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => unknown

/**
 * One real socket per document, on the per-document URL the relay serves
 * stock y-websocket clients on (`${url}/${name}?token=…&parley=1`), asking for
 * Parley's extension frames.
 */
export function ownSockets(url: string, WebSocket: WebSocketConstructor): SocketOpener {
  const base = url.replace(/\/+$/, "")
  return (name, token) => {
    const params = new URLSearchParams({ [TOKEN_PARAM]: token, [PARLEY_PARAM]: PARLEY_PROTOCOL_VERSION })
    const socket = new WebSocket(`${base}/${encodeURIComponent(name)}?${params}`) as DocumentSocket
    socket.binaryType = "arraybuffer"
    return socket
  }
}
