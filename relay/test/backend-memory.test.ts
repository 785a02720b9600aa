import { MemoryBackend } from "../src/backend/memory.js"
import type { MemoryData } from "../src/storage/memory.js"
import { runBackendConformance } from "./conformance/backend.js"

runBackendConformance("memory", async () => {
  const data: MemoryData = { documents: new Map(), catalog: new Map() }
  const doc = (name: string) => {
    const found = data.documents.get(name)
    if (!found) throw new Error(`no data for ${name}`)
    return found
  }
  return {
    open: async () => new MemoryBackend(data),
    persistent: false,
    tamper: {
      deleteUpdates: async (name, positions) => {
        doc(name).updates = doc(name).updates.filter((e) => !positions.includes(e.position))
      },
      overwriteUpdate: async (name, position, bytes) => {
        const entry = doc(name).updates.find((e) => e.position === position)
        if (entry) entry.update = bytes.slice()
      },
      overwriteSnapshot: async (name, bytes) => {
        doc(name).snapshot = bytes.slice()
      },
      deleteData: async (name) => {
        data.documents.delete(name)
      },
    },
  }
})
