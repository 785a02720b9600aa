import {
  ErrorCode,
  InboxTopLevel,
  inboxDocumentName,
  isConversationId,
  ParleyError,
  parseUserId,
  type UserId,
} from "@parley/shared"
import * as bc from "lib0/broadcastchannel"
import type * as Y from "yjs"
import { LocalDatabase, readStored, replicaName } from "./storage.js"

/**
 * Where a deletion of `user`'s local data is announced: the clients of that
 * user in other tabs (and in this page) stop at once, so that none writes a
 * database back after it was deleted.
 */
export const localDataChannel = (user: UserId): string => `${replicaName(user, "")}#deleted`

/**
 * Removes everything the SDK stored on this device for `user`: every IndexedDB
 * database it made for them (conversation replicas, inbox, inbox changes not
 * sent yet, the list of known conversations and profile, cached history,
 * files waiting to upload). Other users' data on the device stays. For a
 * sign-out on a shared device; usable without a client (a sign-out page).
 *
 * Work the relay had not saved is lost with it: to keep it, `await
 * client.flush()` first (or use `client.destroy({ deleteLocalData: true })`,
 * which waits for it a while and tells what was lost). The user's clients
 * still open, in other tabs or in this page, stop first (their
 * `localDataDeleted` event, then destroyed, their own unsaved work lost), so
 * that none writes the data back; a tab that starts afterwards creates it
 * anew, so the app must not sign that user in again without asking.
 *
 * Uses `indexedDB.databases()` where the browser has it; elsewhere, the
 * conversations recorded on the device (known, in the inbox, changed here).
 * Resolves at once where there is no IndexedDB. Rejects with
 * STORAGE_UNAVAILABLE when a database could not be deleted (call it again),
 * or INVALID_ARGUMENT for an invalid user id.
 */
export async function deleteLocalData(user: string): Promise<void> {
  const id = parseUserId(user)
  bc.publish(localDataChannel(id), "deleted", deleteLocalData)
  await deleteDatabasesOf(id)
}

/** Deletes `user`'s databases, without telling their clients (see {@link deleteLocalData}). */
export async function deleteDatabasesOf(user: UserId): Promise<void> {
  if (typeof indexedDB === "undefined") return
  const names = await databasesOf(user)
  const failures: unknown[] = []
  await Promise.all(names.map((name) => deleteDatabase(name).catch((error: unknown) => failures.push(error))))
  if (failures.length > 0)
    throw new ParleyError(
      ErrorCode.STORAGE_UNAVAILABLE,
      `could not delete ${failures.length} of ${names.length} local databases of ${user}`,
      { cause: failures[0] },
    )
}

/** The names of `user`'s databases on this device. */
async function databasesOf(user: UserId): Promise<string[]> {
  // The prefix is unambiguous: a user id has no ":".
  const prefix = replicaName(user, "")
  if (typeof indexedDB.databases === "function") {
    try {
      const listed = await indexedDB.databases()
      return listed.flatMap(({ name }) => (name?.startsWith(prefix) ? [name] : []))
    } catch {
      // Listing refused: the recorded names below.
    }
  }
  const inbox = inboxDocumentName(user)
  const documents = new Set<string>([...Object.values(LocalDatabase), inbox])
  // Every conversation whose replica this device may hold: opened (known), purged, in the inbox, changed here.
  const sources: [string, readonly string[]][] = [
    [LocalDatabase.directory, ["conversations", "purged"]],
    [inbox, [InboxTopLevel.entries, InboxTopLevel.muted]],
    [LocalDatabase.pendingInbox, ["entries", "unsent", "purgeOwed"]],
  ]
  for (const [document, maps] of sources) {
    let doc: Y.Doc | undefined
    try {
      doc = await readStored(replicaName(user, document))
    } catch {
      // Unreadable: what the other records name is still deleted.
    }
    for (const map of maps)
      for (const key of doc?.getMap(map).keys() ?? []) if (isConversationId(key)) documents.add(key)
    doc?.destroy()
  }
  return [...documents].map((document) => replicaName(user, document))
}

function deleteDatabase(name: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const request = indexedDB.deleteDatabase(name)
    // Every connection the SDK opens closes when asked (versionchange): a blocked deletion completes
    // once they have, so "blocked" is not an end.
    request.onsuccess = () => resolve()
    request.onerror = () => reject(request.error)
  })
}
