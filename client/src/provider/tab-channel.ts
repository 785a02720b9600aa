import {
  encodeAwareness,
  encodeQueryAwareness,
  encodeSyncStep1,
  encodeSyncStep2,
  encodeSyncUpdate,
  readFrame,
} from "@parley/shared"
import * as bc from "lib0/broadcastchannel"
import { type Awareness, applyAwarenessUpdate, encodeAwarenessUpdate } from "y-protocols/awareness"
import * as Y from "yjs"
import { RELAY_ORIGIN } from "./sync-session.js"

/**
 * Shares a document with the same user's other tabs (and other clients in
 * this JavaScript realm) over a BroadcastChannel, online or not, with the
 * frames of the relay protocol: on joining it asks for what it lacks (sync
 * step 1), offers what it has (step 2) and its awareness. Updates that arrive
 * from a tab carry this channel as their origin; the document's connection
 * forwards them to the relay, since the tab they came from may be offline.
 *
 * lib0's broadcastchannel (not the bare BroadcastChannel) because it also
 * delivers to subscribers in the same realm, and falls back to localStorage
 * where there is no BroadcastChannel.
 */
/**
 * First byte of a frame that carries a relay's live update from another tab:
 * no message type of the protocol (which {@link readFrame} reads); a tab of
 * an older build ignores it as unreadable.
 */
const FROM_RELAY = 0xf5

export class TabChannel {
  private readonly onTab = (data: unknown, origin: unknown) => {
    if (origin === this) return
    const bytes = new Uint8Array(data as ArrayBuffer)
    if (bytes[0] === FROM_RELAY) this.receivedFromRelay(bytes.subarray(1))
    else this.received(bytes)
  }

  private readonly onUpdate = (update: Uint8Array, origin: unknown) => {
    // What came from the relay reaches the other tabs through their own connections.
    if (origin === this || origin === RELAY_ORIGIN) return
    this.publish(encodeSyncUpdate(update))
  }

  private readonly onAwareness = ({ added, updated, removed }: Record<string, number[]>) => {
    const own = this.awareness.clientID
    if (added!.includes(own) || updated!.includes(own) || removed!.includes(own)) this.publishOwnAwareness()
  }

  /** `name`: one channel per document and user (another user's tab must go through the relay's checks). */
  constructor(
    private readonly name: string,
    private readonly doc: Y.Doc,
    private readonly awareness: Awareness,
  ) {
    bc.subscribe(name, this.onTab)
    doc.on("update", this.onUpdate)
    awareness.on("update", this.onAwareness)
    this.publish(encodeSyncStep1(Y.encodeStateVector(doc)))
    this.publish(encodeSyncStep2(Y.encodeStateAsUpdate(doc)))
    this.publish(encodeQueryAwareness())
    this.publishOwnAwareness()
  }

  /**
   * Hands a live update of the relay to the other tabs: one offline sees what
   * the relay did with what this tab forwarded for it (the sequence numbers
   * that make its messages `sent`) and what others wrote. Only live updates
   * (small): every tab online gets the relay's sync answer on its own.
   */
  fromRelay(update: Uint8Array): void {
    const frame = new Uint8Array(update.length + 1)
    frame[0] = FROM_RELAY
    frame.set(update, 1)
    bc.publish(this.name, frame, this)
  }

  /** Leaves the channel; the other tabs learn that this one's user left (awareness). */
  destroy(): void {
    this.doc.off("update", this.onUpdate)
    this.awareness.off("update", this.onAwareness)
    this.publish(encodeAwareness(encodeAwarenessUpdate(this.awareness, [this.awareness.clientID], new Map())))
    bc.unsubscribe(this.name, this.onTab)
  }

  private received(bytes: Uint8Array): void {
    let frame: ReturnType<typeof readFrame>
    try {
      frame = readFrame(bytes)
    } catch {
      return
    }
    try {
      if (frame.type === "sync") {
        const message = frame.message
        if (message.type === "syncStep1")
          this.publish(encodeSyncStep2(Y.encodeStateAsUpdate(this.doc, message.stateVector)))
        else Y.applyUpdate(this.doc, message.update, this)
      } else if (frame.type === "awareness") applyAwarenessUpdate(this.awareness, frame.update, this)
      else if (frame.type === "queryAwareness") this.publishOwnAwareness()
    } catch (error) {
      console.error("parley: applying what another tab sent failed", error)
    }
  }

  /**
   * Applied as the relay's: this tab's connection does not send it back to
   * the relay (which has it), nor this channel to the tabs (the sender did).
   */
  private receivedFromRelay(update: Uint8Array): void {
    try {
      Y.applyUpdate(this.doc, update, RELAY_ORIGIN)
    } catch (error) {
      console.error("parley: applying the relay's update another tab handed over failed", error)
    }
  }

  private publishOwnAwareness(): void {
    this.publish(encodeAwareness(encodeAwarenessUpdate(this.awareness, [this.awareness.clientID])))
  }

  private publish(frame: Uint8Array): void {
    bc.publish(this.name, frame, this)
  }
}
