import { MessageType, type ParleyFrame, readParleyFrame } from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import * as syncProtocol from "y-protocols/sync"
import * as Y from "yjs"
import type { Session } from "../../src/connection.js"
import type { Principal } from "../../src/principal.js"

/** A socket-free session for tests that drive a `RelayCore` directly: it keeps every frame it is sent. */
export class FakeSession implements Session {
  readonly frames: Uint8Array[] = []
  closed: { code: number; reason: string } | undefined
  constructor(
    readonly principal: Principal,
    readonly wantsParley = true,
  ) {}
  send(frame: Uint8Array) {
    this.frames.push(frame)
  }
  close(code: number, reason: string) {
    this.closed = { code, reason }
  }
  /** The Parley frames received (acks, errors), decoded. */
  parley(): ParleyFrame[] {
    return this.frames.flatMap((f) => {
      const d = decoding.createDecoder(f)
      return decoding.readVarUint(d) === MessageType.parley ? [readParleyFrame(d)!] : []
    })
  }
  /** Applies every sync frame received to `doc`. */
  replay(doc: Y.Doc): void {
    for (const f of this.frames) {
      const d = decoding.createDecoder(f)
      if (decoding.readVarUint(d) !== MessageType.sync) continue
      syncProtocol.readSyncMessage(d, encoding.createEncoder(), doc, "relay")
    }
  }
  /** A replica built from every sync frame received. */
  replica(): Y.Doc {
    const doc = new Y.Doc()
    this.replay(doc)
    return doc
  }
}

/** A sync-update frame of `update`, as a client sends it. */
export const updateFrame = (update: Uint8Array): Uint8Array => {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MessageType.sync)
  syncProtocol.writeUpdate(e, update)
  return encoding.toUint8Array(e)
}

/** Waits until `check()` holds, letting timers and I/O run between checks. */
export async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 1))
}
