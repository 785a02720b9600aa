import type { OpenAPIHono } from "@hono/zod-openapi"
import type { Env } from "hono"

/** Routes served beside the API, as the parts of an OpenAPI document the API's `openApiDocument` merges in. */
export interface OpenApiPart {
  readonly paths: Record<string, unknown>
  readonly securitySchemes: Record<string, unknown>
  readonly schemas: Record<string, unknown>
}

/** The OpenAPI part of `app`'s routes, generated from the schemas that validate them. */
export function openApiPartOf<E extends Env>(app: OpenAPIHono<E>): OpenApiPart {
  const doc = app.getOpenAPI31Document({ openapi: "3.1.0", info: { title: "", version: "1" } }) as {
    paths?: Record<string, unknown>
    components?: { securitySchemes?: Record<string, unknown>; schemas?: Record<string, unknown> }
  }
  return {
    paths: doc.paths ?? {},
    securitySchemes: doc.components?.securitySchemes ?? {},
    schemas: doc.components?.schemas ?? {},
  }
}

/** Stands in for every dependency of routes built only to describe them: never called. */
export const describeOnly = (): never => {
  throw new Error("the document is generated without serving requests")
}
