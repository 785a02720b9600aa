import type { UserId } from "@parley/shared"
import { MessageType } from "@parley/shared"
import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"
import pino from "pino"
import * as awarenessProtocol from "y-protocols/awareness"
import * as syncProtocol from "y-protocols/sync"
import * as Y from "yjs"
import type { UpdateRouter } from "../../src/cluster/router.js"
import type { Connection } from "../../src/connection.js"
import { type DefinedHooks, defineHooks, type Hooks } from "../../src/hooks/define.js"
import type { HookEvent } from "../../src/hooks/events.js"
import { HooksExtension, type HooksExtensionOptions } from "../../src/hooks/extension.js"
import type { Outbox } from "../../src/hooks/outbox.js"
import { MemoryOutbox } from "../../src/hooks/outbox.js"
import { RelayMetrics } from "../../src/metrics.js"
import { RelayCore } from "../../src/relay-core.js"
import { MemoryStorage } from "../../src/storage/memory.js"
import type { RelayStorage } from "../../src/storage/types.js"

/** A hook module that records every event it gets, by type. */
export function recordingHooks(extra: Partial<Hooks> = {}): { hooks: DefinedHooks; events: HookEvent[] } {
  const events: HookEvent[] = []
  const record = (event: HookEvent) => {
    events.push(event)
  }
  const hooks = defineHooks({
    onConversationCreated: record,
    onConversationUpdated: record,
    onConversationDeleted: record,
    onConversationReopened: record,
    onParticipantsAdded: record,
    onParticipantsRemoved: record,
    onParticipantRoleChanged: record,
    onMessageSent: record,
    onMessageEdited: record,
    onMessageDeleted: record,
    onReactionAdded: record,
    onReactionRemoved: record,
    onMessagesRead: record,
    onTypingStarted: record,
    ...extra,
  })
  return { hooks, events }
}

/** A relay core (no sockets) with hooks, on memory storage unless given. */
export async function coreWithHooks(
  options: Partial<HooksExtensionOptions> & {
    storage?: RelayStorage
    outbox?: Outbox
    router?: UpdateRouter
  },
) {
  const log = pino({ level: "silent" })
  const metrics = new RelayMetrics()
  const storage = options.storage ?? new MemoryStorage()
  const hooks = new HooksExtension({
    hooks: [],
    outbox: options.outbox ?? new MemoryOutbox(),
    log,
    registry: metrics.registry,
    backoff: { baseMs: 1, attempts: 3 },
    ...options,
  })
  const core = new RelayCore({
    storage,
    log,
    metrics,
    extensions: [hooks],
    ...(options.router ? { router: options.router } : {}),
  })
  await core.start()
  return { core, runtime: hooks.runtime!, storage, metrics }
}

/**
 * A client replica in the same process: a Y.Doc connected to the core through
 * a Session, speaking the sync protocol, that can go offline and come back.
 */
export class InProcessClient {
  readonly doc = new Y.Doc()
  readonly awareness = new awarenessProtocol.Awareness(this.doc)
  private connection: Connection | undefined

  constructor(
    private readonly core: RelayCore,
    readonly name: string,
    readonly user: UserId,
  ) {
    this.doc.on("update", (update: Uint8Array, origin: unknown) => {
      if (origin === this || !this.connection) return
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, MessageType.sync)
      syncProtocol.writeUpdate(encoder, update)
      this.connection.receive(encoding.toUint8Array(encoder))
    })
  }

  get online(): boolean {
    return this.connection !== undefined
  }

  /** Connects and exchanges sync steps, so that offline changes reach the relay. */
  async connect(): Promise<void> {
    // The relay greets (sync step 1) before connect() resolves: answer once connected.
    const early: Uint8Array[] = []
    let ready = false
    this.connection = await this.core.connect(this.name, {
      principal: { kind: "user", user: this.user },
      wantsParley: false,
      send: (frame) => (ready ? this.receive(frame) : early.push(frame)),
      close: () => {
        this.connection = undefined
      },
    })
    ready = true
    for (const frame of early) this.receive(frame)
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MessageType.sync)
    syncProtocol.writeSyncStep1(encoder, this.doc)
    this.connection.receive(encoding.toUint8Array(encoder))
    await this.settled()
  }

  disconnect(): void {
    this.connection?.close(1000, "bye")
    this.connection = undefined
  }

  /** Publishes this client's awareness state. */
  setPresence(state: Record<string, unknown>): void {
    this.awareness.setLocalState(state)
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MessageType.awareness)
    encoding.writeVarUint8Array(
      encoder,
      awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.doc.clientID]),
    )
    this.connection?.receive(encoding.toUint8Array(encoder))
  }

  /** Resolves after the relay has processed everything this client sent so far. */
  async settled(): Promise<void> {
    await this.core.read(this.name, () => undefined)
  }

  private receive(frame: Uint8Array): void {
    const decoder = decoding.createDecoder(frame)
    if (decoding.readVarUint(decoder) !== MessageType.sync) return
    const reply = encoding.createEncoder()
    encoding.writeVarUint(reply, MessageType.sync)
    syncProtocol.readSyncMessage(decoder, reply, this.doc, this)
    if (encoding.length(reply) > 1) this.connection?.receive(encoding.toUint8Array(reply))
  }
}
