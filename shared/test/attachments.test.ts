import { describe, expect, it } from "vitest"
import {
  checkAttachment,
  checkStoredRecord,
  encodeStoredRecord,
  getMessage,
  isAttachmentId,
  newAttachmentId,
  sendMessage,
  uploadedAttachmentIds,
} from "../src/index.js"
import { alice, groupDoc } from "./helpers.js"

const uploadedId = newAttachmentId()

describe("attachment kinds", () => {
  it("keeps records written before kinds existed valid (an external file URL)", () => {
    const old = {
      url: "https://cdn.example/a.png",
      name: "a.png",
      mimeType: "image/png",
      size: 3,
      width: 1,
      height: 2,
    }
    expect(checkAttachment(old)).toBeUndefined()
    const stored = encodeStoredRecord({
      id: "msg-0000000001",
      author: alice,
      body: "x",
      createdAt: 1,
      attachments: [old],
    } as never)
    expect(checkStoredRecord(stored)).toBeUndefined()
  })

  it("accepts an uploaded file with its id and thumbnail", () => {
    expect(isAttachmentId(uploadedId)).toBe(true)
    const file = {
      kind: "file",
      id: uploadedId,
      url: `/v1/attachments/${uploadedId}`,
      name: "cat.jpg",
      mimeType: "image/jpeg",
      size: 1234,
      width: 800,
      height: 600,
      thumbnail: { url: `/v1/attachments/${uploadedId}/thumbnail`, width: 320, height: 240 },
    }
    expect(checkAttachment(file)).toBeUndefined()
    const doc = groupDoc()
    const m = sendMessage(doc, alice, { body: "look", attachments: [file as never] })
    expect(getMessage(doc, m.id)?.attachments).toEqual([file])
  })

  it("refuses malformed files: bad id, unknown keys, bad thumbnail", () => {
    expect(checkAttachment({ url: "/v1/attachments/x", id: "att_short" })).toMatch(/id/)
    expect(checkAttachment({ url: "https://x", title: "no" })).toMatch(/unknown field "title"/)
    expect(checkAttachment({ url: "https://x", thumbnail: { url: "/t", width: -1, height: 2 } })).toMatch(
      /thumbnail/,
    )
    expect(
      checkAttachment({ url: "https://x", thumbnail: { url: "/t", width: 1, height: 2, x: 1 } }),
    ).toMatch(/thumbnail/)
  })

  it("refuses file and thumbnail urls an app's href or src would run or read locally", () => {
    // An outside probe stored these through the API; every participant's app would render them.
    for (const url of [
      "javascript:alert(1)",
      "data:text/html,<script>x</script>",
      "file:///etc/passwd",
      "//evil.example/x",
      "/v1/attachments/../admin",
    ]) {
      expect(checkAttachment({ url })).toMatch(/http\(s\) URL or the relay's/)
      expect(
        checkAttachment({ url: "https://cdn.example/a.png", thumbnail: { url, width: 1, height: 1 } }),
      ).toMatch(/thumbnail url/)
    }
    expect(checkAttachment({ url: "HTTPS://cdn.example/a.png" })).toBeUndefined()
    // Shown as another address: a bidirectional override, or a control character, inside an http(s) URL.
    for (const url of ["https://bank.example/\u202Emoc.live", "https://a\u0001b.example/"]) {
      expect(checkAttachment({ url })).toMatch(/http\(s\) URL/)
      expect(checkAttachment({ kind: "link", url })).toMatch(/http\(s\) URL/)
    }
  })

  it("keeps the message type readers see for deleted messages to deleted ones", () => {
    const doc = groupDoc()
    expect(() => sendMessage(doc, alice, { body: "not really", type: "deleted" })).toThrow(/reserved/)
  })

  it("accepts links with http(s) urls only and strict keys", () => {
    expect(
      checkAttachment({ kind: "link", url: "https://example.com/a", title: "A", description: "d" }),
    ).toBe(undefined)
    expect(checkAttachment({ kind: "link", url: "javascript:alert(1)" })).toMatch(/http/)
    expect(checkAttachment({ kind: "link", url: "ftp://example.com" })).toMatch(/http/)
    expect(checkAttachment({ kind: "link", url: "https://example.com", name: "x" })).toMatch(/unknown field/)
    expect(checkAttachment({ kind: "link", url: "https://e.com", title: "t".repeat(301) })).toMatch(/title/)
  })

  it("accepts object references within 128 characters", () => {
    expect(
      checkAttachment({ kind: "object", objectType: "order", objectId: "o-42", title: "Order 42" }),
    ).toBe(undefined)
    expect(checkAttachment({ kind: "object", objectType: "order", objectId: "x".repeat(129) })).toMatch(
      /objectId/,
    )
    expect(checkAttachment({ kind: "object", objectType: "", objectId: "1" })).toMatch(/objectType/)
    expect(checkAttachment({ kind: "object", objectType: "o", objectId: "1", url: "https://x" })).toMatch(
      /unknown field/,
    )
    expect(checkAttachment({ kind: "video", url: "https://x" })).toMatch(/kind/)
  })

  it("lists the uploaded attachment ids a message references, not external files, links or objects", () => {
    const other = newAttachmentId()
    expect(
      uploadedAttachmentIds([
        { id: uploadedId, url: `/v1/attachments/${uploadedId}` },
        { kind: "file", id: other, url: `/v1/attachments/${other}` },
        { url: "https://cdn.example/a.png" },
        { kind: "link", url: "https://e.com" },
        { kind: "object", objectType: "o", objectId: uploadedId },
      ]),
    ).toEqual([uploadedId, other])
  })
})
