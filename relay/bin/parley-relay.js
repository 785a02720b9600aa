#!/usr/bin/env node
// The relay is TypeScript run directly (no build step): register tsx, then start it.
import { register } from "tsx/esm/api"

register()
await import("../src/main.ts")
