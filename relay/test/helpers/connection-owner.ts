import type { ConnectionOwner } from "../../src/connection.js"
import type { DocumentHost } from "../../src/document-host.js"

/** A connection's owner that does nothing, answers at once and takes every update; `parts` replace its members. */
export function stubOwner(parts: Partial<ConnectionOwner<DocumentHost>> = {}): ConnectionOwner<DocumentHost> {
  return {
    maxPendingBytes: 1024,
    submit: async () => undefined,
    detach: () => {},
    awareness: () => {},
    refused: () => {},
    history: () => {},
    directory: () => {},
    epochRecord: () => {},
    whenAnswerable: (_connection, answer) => {
      answer()
      return undefined
    },
    answered: () => {},
    ...parts,
  }
}
