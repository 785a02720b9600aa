/**
 * Sends one update frame to an in-process relay core (the full authorization
 * policy, memory storage) and reports what came back and what it cost: the
 * frame-cost tests and `npm run bench:frames` share it.
 */
import {
  type ConversationId,
  MessageType,
  newConversationId,
  type ParleyFrame,
  readParleyFrame,
  sendMessage,
  type WireError,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import * as syncProtocol from "y-protocols/sync"
import type * as Y from "yjs"
import type { Connection, Session } from "../../src/connection.js"
import { createLogger } from "../../src/log.js"
import { RelayMetrics } from "../../src/metrics.js"
import { AuthorizationPolicy } from "../../src/policy/authorization-policy.js"
import { MemoryClientBindingStore } from "../../src/policy/client-bindings.js"
import type { Principal } from "../../src/principal.js"
import { type CoreLimits, RelayCore } from "../../src/relay-core.js"
import { MemoryStorage } from "../../src/storage/memory.js"
import type { Seed, Shape } from "./frame-shapes.js"

/** A socket-free session that resolves `reply` with the first Parley frame it is sent. */
class ProbeSession implements Session {
  readonly wantsParley = true
  closed: { code: number; reason: string } | undefined
  private settle: ((frame: ParleyFrame) => void) | undefined
  constructor(readonly principal: Principal) {}
  reply(): Promise<ParleyFrame> {
    return new Promise((resolve) => {
      this.settle = resolve
    })
  }
  send(frame: Uint8Array) {
    const decoder = decoding.createDecoder(frame)
    if (decoding.readVarUint(decoder) !== MessageType.parley) return
    const parley = readParleyFrame(decoder)
    if (parley && this.settle) {
      const settle = this.settle
      this.settle = undefined
      settle(parley)
    }
  }
  close(code: number, reason: string) {
    this.closed = { code, reason }
  }
}

type GcOptions = { type: "major" | "minor"; execution: "sync" | "async" }
/** A synchronous full collection that keeps optimized code, when the process runs with --expose-gc. */
function collectGarbage(): void {
  ;(globalThis as { gc?: (options?: GcOptions) => void }).gc?.({ type: "major", execution: "sync" })
}

/** Wraps an update in a y-websocket "update" frame. */
export function updateFrame(update: Uint8Array): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, MessageType.sync)
  syncProtocol.writeUpdate(encoder, update)
  return encoding.toUint8Array(encoder)
}

/** What became of one frame. */
export interface ProbeResult {
  readonly bytes: number
  readonly accepted: boolean
  readonly error?: WireError
  /** Relay CPU time (user + system) from receiving the frame to having answered and settled it, in ms. */
  readonly cpuMs: number
  /** Client ids in the stored document afterwards. */
  readonly clientIds: number
  /** True when the connection was closed (it should survive a refusal). */
  readonly closed: boolean
}

/** How {@link probeAll} prepares the relay before it measures. */
export interface ProbeOptions {
  /**
   * Measure a warm relay, as a busy one is: each sender first writes one
   * message through the update path (a server-side write, so no client id of
   * theirs is spent), which loads what the first change to a document builds
   * (the message index, the sequencer's state), and, when the process runs
   * with --expose-gc, the garbage of seeding and building the frame is
   * collected before the clock starts (its collection would otherwise be
   * charged to the frame), by a full mark-compact such as a busy relay runs.
   * Not by a bare `gc()`: that one is V8's testing collection, which also
   * throws away all optimized code, so each frame would be measured in a
   * relay whose JIT has just been reset and be charged for V8 recompiling
   * the whole update path on its compiler threads (two thirds of the CPU
   * time measured for the largest frames before this was found).
   */
  readonly warm?: boolean
}

/**
 * Seeds a fresh conversation with `seed`, connects each shape's sender to a
 * new core, and sends the shapes one after the other, each built against the
 * relay's document as it is by then.
 */
export async function probeAll(
  shapes: readonly Shape[],
  seed: (id: ConversationId) => Seed,
  limits: Partial<CoreLimits> = {},
  options: ProbeOptions = {},
): Promise<ProbeResult[]> {
  const id = newConversationId()
  const seeded = seed(id)
  const storage = new MemoryStorage()
  await storage.append(id, [seeded.stored])
  const core = new RelayCore({
    storage,
    log: createLogger("silent"),
    metrics: new RelayMetrics({ defaultMetrics: false }),
    extensions: [new AuthorizationPolicy(new MemoryClientBindingStore())],
    limits,
  })
  try {
    const results: ProbeResult[] = []
    const sessions = new Map<string, { session: ProbeSession; connection: Connection }>()
    for (const shape of shapes) {
      let open = sessions.get(shape.user)
      if (!open) {
        const session = new ProbeSession({ kind: "user", user: shape.user })
        open = { session, connection: await core.connect(id, session) }
        sessions.set(shape.user, open)
        if (options.warm)
          await core.write(id, { kind: "user", user: shape.user }, (doc) =>
            sendMessage(doc, shape.user, { body: "warming up" }),
          )
      }
      const { session, connection } = open
      const earlier = shape.earlier ? await core.read(id, (doc: Y.Doc) => shape.earlier!(doc, seeded)) : []
      for (const part of earlier) {
        const saved = session.reply()
        connection.receive(updateFrame(part))
        const answer = await saved
        if (answer.type !== "saved")
          throw new Error(`${shape.name}: a part before the measured one was refused`)
      }
      const update = await core.read(id, (doc: Y.Doc) => shape.build(doc, seeded))
      const frame = updateFrame(update)
      const reply = session.reply()
      if (options.warm) collectGarbage()
      const start = process.cpuUsage()
      connection.receive(frame)
      const answer = await reply
      // Listeners and compaction run after the answer, in the document's queue: wait for them too.
      const clientIds = await core.read(id, (doc: Y.Doc) => doc.store.clients.size)
      const used = process.cpuUsage(start)
      results.push({
        bytes: frame.length,
        accepted: answer.type === "saved",
        ...(answer.type === "error" ? { error: answer.error } : {}),
        cpuMs: (used.user + used.system) / 1000,
        clientIds,
        closed: session.closed !== undefined,
      })
    }
    return results
  } finally {
    await core.close()
  }
}

/** {@link probeAll} for one shape. */
export async function probe(
  shape: Shape,
  seed: (id: ConversationId) => Seed,
  limits: Partial<CoreLimits> = {},
  options: ProbeOptions = {},
): Promise<ProbeResult> {
  return (await probeAll([shape], seed, limits, options))[0]!
}
