import { MemoryStorage } from "../src/storage/memory.js"
import { runStorageConformance } from "./conformance/storage.js"

runStorageConformance("memory", async () => ({ open: async () => new MemoryStorage(), persistent: false }))
