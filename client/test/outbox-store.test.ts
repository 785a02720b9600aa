import "fake-indexeddb/auto"
import type { ConversationId, MessageId } from "@parley/shared"
import { describe, expect, it } from "vitest"
import { type OutboxEntry, type OutboxStore, openOutboxStore } from "../src/attachments/outbox-store.js"

const conversation = "g_outboxtest0000001" as ConversationId
let users = 0

function entry(id: string, createdAt: number, files = 2, conversationId = conversation): OutboxEntry {
  return {
    messageId: id.padEnd(16, "0") as MessageId,
    conversationId,
    body: `body ${id}`,
    createdAt,
    files: Array.from({ length: files }, (_, i) => ({ name: `f${i}.txt`, mimeType: "text/plain", size: 3 })),
  }
}

const text = async (blob: Blob | undefined) => (blob ? await blob.text() : undefined)

// One suite, run by both stores: the upload queue relies on nothing else.
for (const kind of ["memory", "indexeddb"] as const) {
  describe(`outbox store (${kind})`, () => {
    const open = (): OutboxStore => openOutboxStore(kind, `outbox-user-${++users}`)

    it("keeps entries with their bytes, lists a conversation's oldest first", async () => {
      const store = open()
      await store.add(entry("b", 20), [new Blob(["b-0"]), new Blob(["b-1"])])
      await store.add(entry("a", 10), [new Blob(["a-0"]), new Blob(["a-1"])])
      await store.add(entry("c", 5, 1, "g_othertest00000001" as ConversationId), [new Blob(["c-0"])])
      const listed = await store.list(conversation)
      expect(listed.map((e) => e.body)).toEqual(["body a", "body b"])
      expect(await text(await store.blob(listed[1]!.messageId, 1))).toBe("b-1")
      store.close()
    })

    it("updates an entry's fields without touching its bytes, and frees bytes one file or all at a time", async () => {
      const store = open()
      const e = entry("u", 1)
      await store.add(e, [new Blob(["u-0"]), new Blob(["u-1"])])
      await store.update({ ...e, files: [{ ...e.files[0]!, uploadId: "up1" }, e.files[1]!] })
      expect((await store.list(conversation))[0]!.files[0]!.uploadId).toBe("up1")
      expect(await text(await store.blob(e.messageId, 0))).toBe("u-0")
      await store.freeBlobs(e.messageId, [0])
      expect(await store.blob(e.messageId, 0)).toBeUndefined()
      expect(await text(await store.blob(e.messageId, 1))).toBe("u-1")
      await store.freeBlobs(e.messageId)
      expect(await store.blob(e.messageId, 1)).toBeUndefined()
      expect(await store.list(conversation)).toHaveLength(1)
      store.close()
    })

    it("removes an entry with its bytes; an update after the removal does not bring it back", async () => {
      const store = open()
      const e = entry("r", 1)
      await store.add(e, [new Blob(["r-0"]), new Blob(["r-1"])])
      await store.remove(e.messageId)
      await store.update({ ...e, body: "late" })
      expect(await store.list(conversation)).toEqual([])
      expect(await store.blob(e.messageId, 0)).toBeUndefined()
      store.close()
    })

    if (kind === "indexeddb")
      it("survives closing and opening again (a reload)", async () => {
        const user = `outbox-user-${++users}`
        const first = openOutboxStore(kind, user)
        const e = entry("p", 1, 1)
        await first.add(e, [new Blob(["persisted bytes"], { type: "text/plain" })])
        first.close()
        const second = openOutboxStore(kind, user)
        expect((await second.list(conversation)).map((x) => x.messageId)).toEqual([e.messageId])
        const blob = await second.blob(e.messageId, 0)
        expect(await text(blob)).toBe("persisted bytes")
        expect(blob?.type).toBe("text/plain")
        second.close()
      })
  })
}
