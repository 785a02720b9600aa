import * as Y from "yjs"

/**
 * Items a transaction inserted into, or deleted from, one array type. Yjs's own
 * `event.changes` walks the whole array to build a delta, which makes every
 * append to a 100,000-message conversation cost a full scan; these walk only
 * the structs the transaction created or deleted.
 */
export function addedItems(transaction: Y.Transaction, type: Y.AbstractType<unknown>): Y.Item[] {
  const added: Y.Item[] = []
  for (const [client, after] of transaction.afterState) {
    const before = transaction.beforeState.get(client) ?? 0
    if (after <= before) continue
    const structs = transaction.doc.store.clients.get(client)
    if (!structs) continue
    for (let i = Y.findIndexSS(structs, before); i < structs.length; i++) {
      const struct = structs[i]!
      if (
        struct instanceof Y.Item &&
        struct.parent === type &&
        !struct.deleted &&
        struct.id.clock >= before
      ) {
        added.push(struct)
      }
    }
  }
  return added
}

/** Items of `type` that existed before `transaction` and were deleted by it. */
export function deletedItems(transaction: Y.Transaction, type: Y.AbstractType<unknown>): Y.Item[] {
  const deleted: Y.Item[] = []
  Y.iterateDeletedStructs(transaction, transaction.deleteSet, (struct) => {
    if (
      struct instanceof Y.Item &&
      struct.parent === type &&
      struct.id.clock < (transaction.beforeState.get(struct.id.client) ?? 0)
    ) {
      deleted.push(struct)
    }
  })
  return deleted
}

/** The values held by `items`, in order. */
export const contentOf = <T>(items: readonly Y.Item[]): T[] =>
  items.flatMap((item) => item.content.getContent() as T[])
