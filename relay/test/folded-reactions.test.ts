import { describe, expect, it } from "vitest"
import {
  decodeFoldedReactions,
  encodeFoldedReactions,
  FoldDirectory,
  type FoldedReaction,
  FoldedReactions,
} from "../src/history/folded-reactions.js"

const folds: FoldedReaction[] = [
  { client: 7, clock: 3, key: "m1\u001fbob\u001f👍", record: { client: 9, clock: 40 } },
  { client: 7, clock: 4, key: "m2\u001fbob\u001f🎉", record: { client: 9, clock: 41 } },
  { client: 8, clock: 0, key: "m2\u001fcarol\u001f🎉", record: { client: 9, clock: 41 } },
]

/** A delete set deleting `ranges` ([client, clock, len]), as Yjs decodes one. */
const deleteSet = (...ranges: [number, number, number][]) => {
  const clients = new Map<number, { clock: number; len: number }[]>()
  for (const [client, clock, len] of ranges)
    clients.set(client, [...(clients.get(client) ?? []), { clock, len }])
  return { clients } as Parameters<FoldedReactions["removedBy"]>[0]
}

describe("folded reactions as the history store keeps them", () => {
  it("read back as written; bytes that are not such a row read as none", () => {
    expect(decodeFoldedReactions(encodeFoldedReactions(folds))).toEqual(folds)
    expect(decodeFoldedReactions(encodeFoldedReactions([]))).toEqual([])
    expect(decodeFoldedReactions(new Uint8Array([9, 1, 2]))).toEqual([])
    expect(decodeFoldedReactions(encodeFoldedReactions(folds).slice(0, 6))).toEqual([])
  })

  it("held twice (read back after this process's own seal remembered them) are told once", () => {
    const held = new FoldedReactions()
    held.hold(folds)
    held.hold(folds)
    // Bob's device removed his 👍 (item 7:3) without knowing of the seal (record 9:40 not deleted).
    expect(held.removedBy(deleteSet([7, 3, 1]), "bob")).toEqual(["m1\u001fbob\u001f👍"])
    expect(held.removedBy(deleteSet([7, 3, 1]), "bob")).toEqual([])
    // A device that knew of the seal deletes the record too; carol's reaction is not bob's to remove.
    expect(held.removedBy(deleteSet([7, 4, 1], [9, 41, 1]), "bob")).toEqual([])
    expect(held.removedBy(deleteSet([8, 0, 1]), "bob")).toEqual([])
  })
})

describe("the fold directory", () => {
  it("lists each client's segments once, ascending, read back as written in its epoch; another epoch's or bytes that are not one read as empty", () => {
    const directory = FoldDirectory.empty(41)
    expect(directory.add(12, folds)).toBe(true)
    expect(directory.add(3, folds.slice(0, 1))).toBe(true)
    // Nothing new: the caller need not write the row again.
    expect(directory.add(12, folds)).toBe(false)
    expect(directory.segmentsOf(7)).toEqual([3, 12])
    expect(directory.segmentsOf(8)).toEqual([12])
    expect(directory.segmentsOf(9)).toEqual([])
    const read = FoldDirectory.decode(directory.encode(), 41)
    expect([7, 8, 9].map((client) => read.segmentsOf(client))).toEqual([[3, 12], [12], []])
    // A fresh epoch starts it empty: its devices of earlier epochs rebase their work instead.
    expect(FoldDirectory.decode(directory.encode(), 42).segmentsOf(7)).toEqual([])
    expect(FoldDirectory.decode(new Uint8Array([9, 1, 2]), 41).segmentsOf(7)).toEqual([])
    expect(FoldDirectory.decode(directory.encode().slice(0, 4), 41).segmentsOf(7)).toEqual([])
  })
})
