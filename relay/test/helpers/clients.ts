import {
  encodeTokenRefresh,
  MessageType,
  PARLEY_PARAM,
  PARLEY_PROTOCOL_VERSION,
  type ParleyFrame,
  readParleyFrame,
  TOKEN_PARAM,
  type WireError,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import { WebSocket } from "ws"
import * as awarenessProtocol from "y-protocols/awareness"
import * as syncProtocol from "y-protocols/sync"
import { WebsocketProvider } from "y-websocket"
import * as Y from "yjs"

/** A stock y-websocket provider in Node, with the token as `params`. */
export function stockProvider(
  url: string,
  name: string,
  token: string,
  doc = new Y.Doc(),
): WebsocketProvider {
  return new WebsocketProvider(url, name, doc, {
    WebSocketPolyfill: WebSocket as unknown as typeof globalThis.WebSocket,
    params: { [TOKEN_PARAM]: token },
    disableBc: true,
  })
}

/** Resolves once the provider finished its first sync. */
export const synced = (provider: WebsocketProvider): Promise<void> =>
  new Promise((resolve) => {
    if (provider.synced) resolve()
    else provider.once("sync", (isSynced: boolean) => isSynced && resolve())
  })

/** Resolves once `check()` is true, re-checking after every change of `doc`. */
export function docUntil(doc: Y.Doc, check: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    if (check()) return resolve()
    const onUpdate = () => {
      if (check()) {
        doc.off("afterTransaction", onUpdate)
        resolve()
      }
    }
    doc.on("afterTransaction", onUpdate)
  })
}

/**
 * A hand-driven protocol client over a real WebSocket: keeps a replica, asks
 * for Parley's extension frames (`parley=1`) by default, records saved acks,
 * typed errors and the close code.
 */
export class TestClient {
  readonly doc: Y.Doc
  readonly awareness: awarenessProtocol.Awareness
  readonly ws: WebSocket
  readonly errors: WireError[] = []
  readonly saves: Uint8Array[] = []
  /** The `exp` (seconds) of every token refresh the relay accepted. */
  readonly tokenAccepts: number[] = []
  /** Every frame received, raw. */
  readonly frames: Uint8Array[] = []
  readonly opened: Promise<void>
  readonly closed: Promise<{ code: number; reason: string }>
  closeEvent: { code: number; reason: string } | undefined
  private readonly waiters = new Set<() => void>()

  /** `options.doc`: a replica to continue with (a reconnect): its pending work is sent in the first sync. */
  constructor(
    url: string,
    name: string,
    token: string | undefined,
    options: { parley?: boolean; doc?: Y.Doc } = {},
  ) {
    this.doc = options.doc ?? new Y.Doc()
    this.awareness = new awarenessProtocol.Awareness(this.doc)
    const params = new URLSearchParams()
    if (token !== undefined) params.set(TOKEN_PARAM, token)
    if (options.parley ?? true) params.set(PARLEY_PARAM, PARLEY_PROTOCOL_VERSION)
    this.awareness.setLocalState(null)
    this.ws = new WebSocket(`${url}/${encodeURIComponent(name)}?${params}`)
    this.ws.binaryType = "nodebuffer"
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", () => {
        // Like y-websocket: open with our state vector, so the relay answers with what we lack.
        const encoder = encoding.createEncoder()
        encoding.writeVarUint(encoder, MessageType.sync)
        syncProtocol.writeSyncStep1(encoder, this.doc)
        this.send(encoding.toUint8Array(encoder))
        resolve()
      })
      this.ws.once("error", reject)
    })
    this.opened.catch(() => {})
    this.closed = new Promise((resolve) =>
      this.ws.once("close", (code, reason) => {
        this.closeEvent = { code, reason: reason.toString() }
        resolve(this.closeEvent)
        this.notify()
      }),
    )
    this.ws.on("message", (data: Buffer) => this.receive(new Uint8Array(data)))
    this.ws.on("error", () => {})
    const forward = (update: Uint8Array, origin: unknown) => {
      if (origin !== this) this.sendUpdate(update)
    }
    this.doc.on("update", forward)
    // A replica handed to the next connection no longer feeds this one.
    void this.closed.then(() => this.doc.off("update", forward))
  }

  private notify() {
    for (const waiter of [...this.waiters]) waiter()
  }

  private receive(frame: Uint8Array) {
    this.frames.push(frame)
    const decoder = decoding.createDecoder(frame)
    const type = decoding.readVarUint(decoder)
    if (type === MessageType.sync) {
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, MessageType.sync)
      syncProtocol.readSyncMessage(decoder, encoder, this.doc, this)
      if (encoding.length(encoder) > 1) this.send(encoding.toUint8Array(encoder))
    } else if (type === MessageType.awareness) {
      awarenessProtocol.applyAwarenessUpdate(this.awareness, decoding.readVarUint8Array(decoder), this)
    } else if (type === MessageType.parley) {
      const parley: ParleyFrame | undefined = readParleyFrame(decoder)
      if (parley?.type === "saved") this.saves.push(parley.stateVector)
      if (parley?.type === "error") this.errors.push(parley.error)
      if (parley?.type === "tokenAccepted") this.tokenAccepts.push(parley.expiresAt)
    }
    this.notify()
  }

  send(frame: Uint8Array): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(frame)
  }

  sendUpdate(update: Uint8Array): void {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MessageType.sync)
    syncProtocol.writeUpdate(encoder, update)
    this.send(encoding.toUint8Array(encoder))
  }

  /** Sends a token refresh over the open socket. */
  refreshToken(token: string): void {
    this.send(encodeTokenRefresh(token))
  }

  /** Resolves once `check()` holds, re-checked after every frame and on close. */
  until(check: () => boolean): Promise<void> {
    return new Promise((resolve) => {
      if (check()) return resolve()
      const waiter = () => {
        if (check()) {
          this.waiters.delete(waiter)
          resolve()
        }
      }
      this.waiters.add(waiter)
    })
  }

  /** Resolves once the relay acknowledged everything this client wrote as saved. */
  allSaved(): Promise<void> {
    return this.until(() => {
      // An acknowledgement lists only the clients its update wrote for: look for this client's own clock.
      const own = Y.getState(this.doc.store, this.doc.clientID)
      return this.saves.some((vector) => (Y.decodeStateVector(vector).get(this.doc.clientID) ?? 0) >= own)
    })
  }

  /** Resolves once the first sync with the relay is done (its sync step 2 arrived). */
  synced(): Promise<void> {
    return this.until(() =>
      this.frames.some((f) => f[0] === MessageType.sync && f[1] === syncProtocol.messageYjsSyncStep2),
    )
  }

  close(): void {
    this.ws.close()
  }
}
