import { encodeSyncUpdate } from "@parley/shared"
import * as Y from "yjs"
import type { DeferringChange } from "./deferred-change.js"
import type { DocumentHost } from "./document-host.js"
import type { PathContext } from "./update-path.js"

/** Transaction origin of derived writes. */
export const DERIVED_ORIGIN = Symbol("parley-derived")

/**
 * A derived write: runs inside a transaction and Yjs encodes what it wrote,
 * or (applied with `encodes`) runs its own transaction with the origin it is
 * given and returns that transaction's update, undefined when it wrote nothing.
 */
export type DerivedChange = (doc: Y.Doc, origin: unknown) => unknown

/** How a derived write is applied: by Yjs, in its own transaction returning its update, or deferred. */
type DeriveMode = "yjs" | "encodes" | "defers"

/**
 * Writes of data the relay derives from other documents (inbox entries) and
 * can derive again at any time. They are applied in memory and broadcast at
 * once, in the document's queue, but stored only when the document unloads
 * (or the relay stops): a busy conversation then costs its connected
 * members' inboxes no durable write per message. If the relay dies first, the
 * data is derived again when its user next connects (see `LiveInbox`).
 */
export class DerivedWrites {
  /** Each document's state vector before its first derived write since it was last stored. */
  private readonly since = new WeakMap<DocumentHost, Uint8Array>()

  /** Runs `change` on a loaded document as the relay, broadcasts it; false when it wrote nothing or the document went away. */
  apply(host: DocumentHost, change: DerivedChange, encodes?: boolean): Promise<boolean>
  apply(host: DocumentHost, change: DeferringChange, mode: "defers"): Promise<boolean>
  apply(
    host: DocumentHost,
    change: DerivedChange | DeferringChange,
    how?: boolean | "defers",
  ): Promise<boolean> {
    const mode: DeriveMode = how === "defers" ? "defers" : how === true ? "encodes" : "yjs"
    // Nothing queued or running: running now is the queue's order, without a task's promises and
    // closures (one derived write per connected member per message in a big room).
    if (!host.busy) {
      try {
        return Promise.resolve(this.run(host, change, mode))
      } catch (error) {
        return Promise.reject(error)
      }
    }
    return host.enqueue(async () => this.run(host, change, mode))
  }

  /**
   * Runs a deferring `change` on each of `hosts` (loaded, someone connected),
   * then sends every frame it gave, one socket after another: a message in a
   * big room changes one inbox per connected member, and sending each frame as
   * it is made interleaves a socket write with the next member's work. What a
   * host runs at once is in the queue's order as {@link apply}'s is; a host
   * with something queued or running takes its change as a task, as there.
   * `failed(index)` is called for a change that threw (or whose task did).
   */
  applyEach(
    hosts: readonly DocumentHost[],
    change: (index: number, target: DocumentHost, origin: unknown) => Uint8Array | undefined,
    failed: (index: number) => void,
  ): void {
    const ready: DocumentHost[] = []
    const frames: Uint8Array[] = []
    for (let i = 0; i < hosts.length; i++) {
      const host = hosts[i]!
      if (host.busy) {
        const one: DeferringChange = (target, origin) => change(i, target as DocumentHost, origin)
        host.enqueue(async () => this.run(host, one, "defers")).catch(() => failed(i))
        continue
      }
      if (host.destroyed || host.unloading) continue
      let frame: Uint8Array | undefined
      try {
        if (!this.since.has(host)) this.since.set(host, Y.encodeStateVector(host.doc))
        frame = change(i, host, DERIVED_ORIGIN)
      } catch {
        failed(i)
        continue
      }
      if (frame === undefined) continue
      ready.push(host)
      frames.push(frame)
    }
    // Sent after every frame is made, back to back (no document work in between).
    for (let i = 0; i < ready.length; i++) {
      const frame = frames[i]!
      for (const connection of ready[i]!.connections) connection.send(frame)
    }
  }

  private run(host: DocumentHost, change: DerivedChange | DeferringChange, mode: DeriveMode): boolean {
    if (host.destroyed || host.unloading) return false
    if (!this.since.has(host)) this.since.set(host, Y.encodeStateVector(host.doc))
    if (mode === "defers") {
      // Framed by the change itself (in the buffer it encodes into: no copy per member).
      const frame = (change as DeferringChange)(host, DERIVED_ORIGIN)
      if (frame === undefined) return false
      for (const connection of host.connections) connection.send(frame)
      return true
    }
    if (mode === "encodes") {
      const encoded = (change as DerivedChange)(host.doc, DERIVED_ORIGIN)
      if (!(encoded instanceof Uint8Array)) return false
      const frame = encodeSyncUpdate(encoded)
      for (const connection of host.connections) connection.send(frame)
      return true
    }
    let update: Uint8Array | undefined
    let more: Uint8Array[] | undefined
    const collect = (u: Uint8Array) => {
      if (update === undefined) update = u
      else {
        more ??= [update]
        more.push(u)
      }
    }
    host.doc.on("update", collect)
    try {
      host.doc.transact(() => (change as DerivedChange)(host.doc, DERIVED_ORIGIN), DERIVED_ORIGIN)
    } finally {
      host.doc.off("update", collect)
    }
    if (update === undefined) return false
    const frame = encodeSyncUpdate(more ? Y.mergeUpdates(more) : update)
    for (const connection of host.connections) connection.send(frame)
    return true
  }

  /** The state vector of `host` before its first derived write not stored yet; undefined when none. */
  unstoredSince(host: DocumentHost): Uint8Array | undefined {
    return this.since.get(host)
  }

  /**
   * Stores what was derived since the last call, as one log entry (what the
   * document gained since then: stored updates among it are stored again,
   * which Yjs ignores). Call inside the document's queue.
   */
  async store(ctx: PathContext, host: DocumentHost): Promise<void> {
    const since = this.since.get(host)
    if (!since) return
    const update = Y.encodeStateAsUpdate(host.doc, since)
    try {
      const positions = await ctx.storage.append(host.key, [update])
      this.since.delete(host)
      host.recordAppend(1, update.length, positions)
    } catch (error) {
      // Derived data: it is derived again when its user next connects.
      ctx.log.warn({ err: error, doc: host.key }, "could not store derived data")
    }
  }
}
