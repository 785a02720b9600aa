import { readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"
import { openApiDocument } from "../../src/api/app.js"

const isAttachmentPath = (path: string) =>
  path.endsWith("/uploads") ||
  path.startsWith("/v1/uploads/") ||
  path.startsWith("/v1/attachments/") ||
  path === "/v1/link-preview"

describe("OpenAPI document", () => {
  it("is checked in as generated from the schemas (npm run openapi -w @parley/relay rewrites it)", () => {
    const checkedIn = JSON.parse(readFileSync(new URL("../../openapi.json", import.meta.url), "utf8"))
    expect(checkedIn).toEqual(JSON.parse(JSON.stringify(openApiDocument())))
  })

  it("documents every operation with its key scope and its problem answers", () => {
    const doc = openApiDocument() as {
      openapi: string
      paths: Record<string, Record<string, { security?: { apiKey?: string[] }[]; responses: object }>>
    }
    expect(doc.openapi).toBe("3.1.0")
    // The devices' push routes and the attachment routes take the user's own token instead (next tests).
    const operations = Object.entries(doc.paths)
      .filter(
        ([path]) => !path.startsWith("/v1/me/") && !path.startsWith("/v1/push/") && !isAttachmentPath(path),
      )
      .flatMap(([, path]) => Object.values(path))
    expect(operations.length).toBeGreaterThanOrEqual(17)
    for (const operation of operations) {
      expect(operation.security?.[0]?.apiKey?.length).toBe(1)
      expect(Object.keys(operation.responses)).toEqual(
        expect.arrayContaining(["400", "401", "403", "413", "429"]),
      )
    }
  })

  it("documents the push registration routes as taken with the user's own token", () => {
    const doc = openApiDocument() as {
      paths: Record<string, Record<string, { security?: Record<string, string[]>[] }>>
      components: { securitySchemes: Record<string, { scheme?: string }> }
    }
    expect(Object.keys(doc.paths["/v1/me/push-subscriptions"]!).sort()).toEqual(["get", "post"])
    expect(doc.paths["/v1/me/push-subscriptions/{device}"]!.delete!.security).toEqual([{ userToken: [] }])
    expect(doc.paths["/v1/push/public-key"]!.get!.security).toBeUndefined()
    expect(doc.components.securitySchemes.userToken?.scheme).toBe("bearer")
  })

  it("documents the attachment routes as taken with a user's token or an API key, downloads by signed URL too", () => {
    const doc = openApiDocument() as {
      paths: Record<string, Record<string, { security?: Record<string, string[]>[]; responses: object }>>
    }
    expect(Object.keys(doc.paths["/v1/uploads/{uploadId}"]!).sort()).toEqual(["head", "patch"])
    expect(doc.paths["/v1/conversations/{conversationId}/uploads"]!.post!.security).toEqual([
      { userToken: [] },
      { apiKey: ["messages:write"] },
    ])
    expect(Object.keys(doc.paths["/v1/uploads/{uploadId}"]!.patch!.responses)).toEqual(
      expect.arrayContaining(["201", "204", "409", "413", "415", "429"]),
    )
    expect(doc.paths["/v1/attachments/{id}"]!.get!.security).toEqual([
      { userToken: [] },
      { apiKey: ["messages:read"] },
      {},
    ])
  })
})
