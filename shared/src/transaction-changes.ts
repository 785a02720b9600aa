import * as Y from "yjs"

/**
 * Items a transaction inserted into, or deleted from, one array type. Yjs's own
 * `event.changes` walks the whole array to build a delta, which makes every
 * append to a 100,000-message conversation cost a full scan; these walk only
 * the structs the transaction created or deleted.
 */
export function addedItems(transaction: Y.Transaction, type: Y.AbstractType<unknown>): Y.Item[] {
  const added: Y.Item[] = []
  for (const [client, before] of writersOf(transaction)) {
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

const writers = new WeakMap<Y.Transaction, [client: number, before: number][]>()

/**
 * The clients a transaction added structs for, with their clock before it.
 * Comparing the state vectors costs one step per client the document has ever
 * seen (hundreds in a long conversation: every device session is one), so it is
 * done once per transaction, not once per observer.
 */
function writersOf(transaction: Y.Transaction): [number, number][] {
  let found = writers.get(transaction)
  if (!found) {
    found = []
    for (const [client, after] of transaction.afterState) {
      const before = transaction.beforeState.get(client) ?? 0
      if (after > before) found.push([client, before])
    }
    writers.set(transaction, found)
  }
  return found
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

/**
 * `items` (live items of one array) in the array's order, found by walking
 * the list from each run's first item rather than by scanning the array: an
 * offline burst arrives in clock order, but a deletion placeholder written
 * after later messages sits before them in the array, and the relay numbers
 * pending messages in the order their writer put them.
 */
export function inListOrder(items: readonly Y.Item[]): Y.Item[] {
  if (items.length <= 1) return [...items]
  const wanted = new Set(items)
  const isHead = (item: Y.Item) => {
    let left = item.left
    while (left?.deleted && !wanted.has(left)) left = left.left
    return !(left && wanted.has(left))
  }
  const ordered: Y.Item[] = []
  for (const head of items.filter(isHead)) {
    for (let item: Y.Item | null = head; item; item = item.right) {
      if (wanted.has(item)) ordered.push(item)
      else if (!item.deleted) break
    }
  }
  return ordered
}

/** The values held by `items`, in order. */
export const contentOf = <T>(items: readonly Y.Item[]): T[] =>
  items.flatMap((item) => item.content.getContent() as T[])
