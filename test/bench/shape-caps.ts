/**
 * The smallest per-update caps (`--max-update-values`, `--max-update-structs`)
 * under which each honest frame shape of the frame-cost benchmark passes the
 * relay's cost check, against the bench conversation: what lowering the caps
 * would refuse. Prints one line per shape; asserts nothing.
 *
 *   node --conditions=parley-source --import tsx test/bench/shape-caps.ts
 */
import { newConversationId } from "@parley/shared"
import * as Y from "yjs"
import { checkUpdateCost, DEFAULT_UPDATE_COST_LIMITS } from "../../relay/src/update-cost.js"
import { honestShapes, seedConversation } from "../../relay/test/helpers/frame-shapes.js"

const passes = (doc: Y.Doc, update: Uint8Array, values: number, structs: number) => {
  try {
    checkUpdateCost(doc, update, {
      ...DEFAULT_UPDATE_COST_LIMITS,
      maxUpdateValues: values,
      maxUpdateStructs: structs,
    })
    return true
  } catch {
    return false
  }
}
/** The least n in [1, max] for which `ok(n)`, by bisection (ok is monotonic). */
const least = (ok: (n: number) => boolean, max = 1 << 20) => {
  let lo = 1
  let hi = max
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (ok(mid)) hi = mid
    else lo = mid + 1
  }
  return lo
}
for (const shape of honestShapes) {
  const id = newConversationId()
  const seed = seedConversation(id, 1_000)
  const relay = new Y.Doc()
  Y.applyUpdate(relay, seed.stored)
  const update = shape.build(relay, seed)
  const big = 1 << 20
  const values = least((n) => passes(relay, update, n, big))
  const structs = least((n) => passes(relay, update, big, n))
  console.log(`${shape.name}: ${update.length} bytes, needs values ≥ ${values}, structs ≥ ${structs}`)
}
