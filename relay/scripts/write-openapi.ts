// Writes relay/openapi.json from the API's schemas: `npm run openapi -w @parley/relay`.
import { writeFileSync } from "node:fs"
import { openApiDocument } from "../src/api/app.js"

writeFileSync(new URL("../openapi.json", import.meta.url), `${JSON.stringify(openApiDocument(), null, 2)}\n`)
