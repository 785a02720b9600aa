import { encodeSyncStep1, type ParleyError, parseDocumentName, type UserId } from "@parley/shared"
import { describe, expect, it } from "vitest"
import { Connection, type ConnectionOwner, type Session } from "../src/connection.js"
import { DocumentHost } from "../src/document-host.js"

/**
 * A connection's answers that wait (for the user's answer budget, or for a
 * change to be durable) run outside the handling of the frame that asked:
 * whatever goes wrong there must end that connection, never the process.
 */
describe("answers sent after the frame that asked for them", () => {
  function setUp(answerDelay: () => number) {
    const host = new DocumentHost("g~deferred", parseDocumentName("g~deferred"))
    // Any answer to an empty state vector encodes the whole document: make that fail.
    host.coldJoinFrame = () => {
      throw new Error("encoding failed")
    }
    const refused: ParleyError[] = []
    const closed: number[] = []
    const owner: ConnectionOwner<DocumentHost> = {
      maxPendingBytes: 1024,
      submit: async () => undefined,
      detach: () => {},
      awareness: () => {},
      refused: (_connection, error) => refused.push(error),
      history: () => {},
      directory: () => {},
      epochRecord: () => {},
      answerDelay,
      answered: () => {},
    }
    const session: Session = {
      principal: { kind: "user", user: "alice" as UserId },
      wantsParley: true,
      send: () => {},
      close: (code) => closed.push(code),
    }
    const connection = new Connection(host, session, "write", owner)
    return { host, connection, refused, closed }
  }

  it("closes the connection with 4500 when an answer sent from the budget's timer fails", async () => {
    let delay = 20
    const { connection, refused, closed } = setUp(() => {
      const wait = delay
      delay = 0
      return wait
    })
    connection.receive(encodeSyncStep1(new Uint8Array([0])))
    expect(closed).toEqual([])
    await new Promise((r) => setTimeout(r, 60))
    expect(closed).toEqual([4500])
    expect(refused.map((e) => e.code)).toEqual(["INTERNAL"])
  })

  it("closes the connection with 4500 when an answer sent once a change is durable fails", async () => {
    const { host, connection, refused, closed } = setUp(() => 0)
    const release = host.holdUnsaved()
    connection.receive(encodeSyncStep1(new Uint8Array([0])))
    expect(closed).toEqual([])
    release()
    await new Promise((r) => setTimeout(r, 10))
    expect(closed).toEqual([4500])
    expect(refused.map((e) => e.code)).toEqual(["INTERNAL"])
  })
})
