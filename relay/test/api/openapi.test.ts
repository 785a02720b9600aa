import { readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"
import { openApiDocument } from "../../src/api/app.js"

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
    const operations = Object.values(doc.paths).flatMap((path) => Object.values(path))
    expect(operations.length).toBeGreaterThanOrEqual(17)
    for (const operation of operations) {
      expect(operation.security?.[0]?.apiKey?.length).toBe(1)
      expect(Object.keys(operation.responses)).toEqual(
        expect.arrayContaining(["400", "401", "403", "413", "429"]),
      )
    }
  })
})
