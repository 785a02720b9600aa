import { MessageType, SyncMessage } from "@parley/shared"
import type { WebSocketConstructor } from "./connection.js"

/** The part of the browser's WebSocket API a document connection uses. */
interface Socket {
  binaryType: string
  readonly readyState: number
  readonly bufferedAmount?: number
  onopen: ((event: unknown) => void) | null
  onmessage: ((event: { data: unknown }) => void) | null
  onclose: ((event: unknown) => void) | null
  onerror: ((event: unknown) => void) | null
  send(data: Uint8Array): void
  close(code?: number, reason?: string): void
}

/** True for a sync update frame (a live change, not part of the handshake). */
export const isSyncUpdate = (frame: Uint8Array): boolean =>
  frame[0] === MessageType.sync && frame[1] === SyncMessage.update

/** True for a sync step 1 frame (the relay asking for what it lacks). */
export const isSyncStep1 = (frame: Uint8Array): boolean =>
  frame[0] === MessageType.sync && frame[1] === SyncMessage.step1

/**
 * Wraps a WebSocket class so that each socket holds its live updates until it
 * has answered the relay's sync step 1: sent at once, an update could reach
 * the relay before the state it builds on (what the replica wrote while the
 * socket opened travels in the step 2 that answers the relay) and be refused
 * as depending on changes the relay does not have. The reader answers the
 * step 1 synchronously, so the held updates follow its step 2. (The channels
 * of a multiplexed socket do the same, see `socket-mux.ts`.)
 */
export function holdUpdatesUntilSynced(WebSocket: WebSocketConstructor): WebSocketConstructor {
  return class HeldUpdatesSocket {
    static readonly CONNECTING = 0
    static readonly OPEN = 1
    static readonly CLOSING = 2
    static readonly CLOSED = 3
    readonly CONNECTING = 0
    readonly OPEN = 1
    readonly CLOSING = 2
    readonly CLOSED = 3
    onopen: ((event: unknown) => void) | null = null
    onmessage: ((event: { data: unknown }) => void) | null = null
    onclose: ((event: unknown) => void) | null = null
    onerror: ((event: unknown) => void) | null = null
    private readonly socket: Socket
    private held: Uint8Array[] | undefined = []

    constructor(url: string, protocols?: string | string[]) {
      this.socket = new WebSocket(url, protocols) as Socket
      this.socket.onopen = (event) => this.onopen?.(event)
      this.socket.onclose = (event) => this.onclose?.(event)
      this.socket.onerror = (event) => this.onerror?.(event)
      this.socket.onmessage = (event) => {
        this.onmessage?.(event)
        const held = this.held
        if (!held || !(event.data instanceof ArrayBuffer) || !isSyncStep1(new Uint8Array(event.data))) return
        this.held = undefined
        for (const update of held) this.send(update)
      }
    }

    get binaryType(): string {
      return this.socket.binaryType
    }

    set binaryType(value: string) {
      this.socket.binaryType = value
    }

    get readyState(): number {
      return this.socket.readyState
    }

    get bufferedAmount(): number {
      return this.socket.bufferedAmount ?? 0
    }

    send(data: ArrayBuffer | Uint8Array): void {
      const frame = data instanceof Uint8Array ? data : new Uint8Array(data)
      if (this.held && isSyncUpdate(frame)) this.held.push(frame)
      else if (this.socket.readyState === 1) this.socket.send(frame)
    }

    close(code?: number, reason?: string): void {
      this.socket.close(code, reason)
    }
  } as unknown as WebSocketConstructor
}
