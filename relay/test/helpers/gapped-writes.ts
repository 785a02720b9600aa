import { sendMessage, type UserId } from "@parley/shared"
import * as Y from "yjs"

/**
 * `user` writes two messages on a copy of `replica` ("lost on the way", then
 * "sent next"). `gapped` holds the second only: it follows a change of its
 * client the relay never got. `whole` holds both: the pending work a client
 * sends again.
 */
export function gappedWrites(replica: Y.Doc, user: UserId): { gapped: Uint8Array; whole: Uint8Array } {
  const device = new Y.Doc()
  Y.applyUpdate(device, Y.encodeStateAsUpdate(replica))
  const stored = Y.encodeStateVector(device)
  sendMessage(device, user, { body: "lost on the way" })
  const between = Y.encodeStateVector(device)
  sendMessage(device, user, { body: "sent next" })
  return {
    gapped: Y.encodeStateAsUpdate(device, between),
    whole: Y.encodeStateAsUpdate(device, stored),
  }
}
