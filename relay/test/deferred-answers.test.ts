import { encodeSyncStep1, type ParleyError, parseDocumentName, type UserId } from "@parley/shared"
import * as encoding from "lib0/encoding"
import { describe, expect, it } from "vitest"
import { Connection, type ConnectionOwner, type Session } from "../src/connection.js"
import { DocumentHost } from "../src/document-host.js"
import { stubOwner } from "./helpers/connection-owner.js"

/** An owner's `whenAnswerable` that answers once `answerDelay` says 0, asking it again after each wait. */
function answeringAfter(answerDelay: () => number): ConnectionOwner<DocumentHost>["whenAnswerable"] {
  return (_connection, answer) => {
    const first = answerDelay()
    if (first <= 0) {
      answer()
      return undefined
    }
    let timer: NodeJS.Timeout
    const retry = () => {
      const wait = answerDelay()
      if (wait <= 0) answer()
      else timer = setTimeout(retry, wait)
    }
    timer = setTimeout(retry, first)
    return () => clearTimeout(timer)
  }
}

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
    const owner = stubOwner({
      refused: (_connection, error) => refused.push(error),
      whenAnswerable: answeringAfter(answerDelay),
    })
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

/** A state vector listing `clients` made-up clients (clock 1 each). */
function madeUpStateVector(clients: number): Uint8Array {
  const encoder = encoding.createEncoder()
  encoding.writeVarUint(encoder, clients)
  for (let i = 0; i < clients; i++) {
    encoding.writeVarUint(encoder, 1_000_000 + i)
    encoding.writeVarUint(encoder, 1)
  }
  return encoding.toUint8Array(encoder)
}

describe("sync requests against the user's answer budget", () => {
  function setUp(budgetBytes: number, access: "write" | "pending" = "write") {
    const host = new DocumentHost("g~requests", parseDocumentName("g~requests"))
    host.doc.getMap("m").set("k", "v")
    let spent = 0
    const answers: Uint8Array[] = []
    const closed: number[] = []
    const owner = stubOwner({
      // The budget refills at once after 30 ms: enough for the frames below to arrive meanwhile.
      whenAnswerable: answeringAfter(() => (spent > budgetBytes ? 30 : 0)),
      answered: (_connection, bytes) => {
        spent += bytes
      },
    })
    const session: Session = {
      principal: { kind: "user", user: "mallory" as UserId },
      wantsParley: true,
      send: (frame) => {
        if (frame[0] === 0 && frame[1] === 1) answers.push(frame)
      },
      close: (code) => closed.push(code),
    }
    const connection = new Connection(host, session, access, owner)
    return {
      connection,
      closed,
      answers,
      spent: () => spent,
      refill: () => {
        spent = 0
      },
    }
  }

  it("charges a request for its state vector's decoding, and folds requests arriving while one waits into the latest", async () => {
    const { connection, answers, spent, refill } = setUp(64 * 1024)
    const stateVector = madeUpStateVector(4_000)
    connection.receive(encodeSyncStep1(stateVector))
    expect(answers).toHaveLength(1)
    // About 32 answer bytes per byte of the state vector (12 KB): the budget is spent by one.
    expect(spent()).toBeGreaterThanOrEqual(stateVector.length * 32)
    // A flood while the budget is spent: answered once, not once per frame.
    for (let i = 0; i < 200; i++) connection.receive(encodeSyncStep1(stateVector))
    refill()
    await new Promise((r) => setTimeout(r, 80))
    expect(answers).toHaveLength(2)
  })

  it("closes a connection whose waiting request turns out malformed when answered (4400)", async () => {
    const { connection, closed, answers, refill } = setUp(0)
    connection.receive(encodeSyncStep1(madeUpStateVector(10)))
    expect(answers).toHaveLength(1)
    // Waits for the budget, replaced by a malformed one: decoded when its answer is due.
    connection.receive(encodeSyncStep1(madeUpStateVector(10)))
    connection.receive(encodeSyncStep1(new Uint8Array([5, 1])))
    refill()
    await new Promise((r) => setTimeout(r, 60))
    expect(closed).toEqual([4400])
    expect(answers).toHaveLength(1)
  })

  it("answers a pending connection's first request only, however many it sends", () => {
    const { connection, answers, spent } = setUp(0, "pending")
    for (let i = 0; i < 100; i++) connection.receive(encodeSyncStep1(madeUpStateVector(4_000)))
    expect(answers).toHaveLength(1)
    expect(spent()).toBe(0)
  })
})
