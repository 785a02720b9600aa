import { ErrorCode, inboxDocumentName, ParleyError, type UserId, UserLimit } from "@parley/shared"
import { afterEach, describe, expect, it, vi } from "vitest"
import type { Principal } from "../src/principal.js"
import {
  DEFAULT_USER_LIMITS,
  type HeldElsewhere,
  UserLedger,
  type UserLimits,
  type UserSocket,
} from "../src/user-limits.js"

const user = (name: string): Principal => ({ kind: "user", user: name as UserId })
const mallory = user("mallory")

function ledger(limits: Partial<UserLimits>) {
  let now = 0
  const refused: string[] = []
  const l = new UserLedger(
    { ...DEFAULT_USER_LIMITS, ...limits },
    () => now,
    (limit) => refused.push(limit),
  )
  return {
    l,
    refused,
    advance: (ms: number) => {
      now += ms
      vi.advanceTimersByTime(ms)
    },
  }
}

const socket = (buffered = 0, initial = 0): UserSocket & { closedWith?: string } => {
  const s: UserSocket & { closedWith?: string } = {
    buffered: () => buffered,
    initialSyncBytes: () => initial,
    closing: () => s.closedWith !== undefined,
    close: (_code, reason) => {
      s.closedWith = reason
    },
  }
  return s
}

function refusal(run: () => unknown): ParleyError {
  try {
    run()
  } catch (error) {
    if (error instanceof ParleyError) return error
    throw error
  }
  throw new Error("not refused")
}

afterEach(() => {
  vi.useRealTimers()
})

describe("UserLedger", () => {
  it("grants a user's sealed segment reads from a per-minute budget of their own, fewer once it is spent", () => {
    const { l, refused, advance } = ledger({ userSealedReadsPerMinute: 60 })
    vi.useFakeTimers()
    expect(l.takeSealedReads(mallory, 50)).toBe(50)
    expect(refused).toEqual([])
    // What is left, and the meeting of the limit counted.
    expect(l.takeSealedReads(mallory, 20)).toBe(10)
    expect(refused).toEqual([UserLimit.sealedReads])
    expect(l.takeSealedReads(mallory, 1)).toBe(0)
    // A second's refill is one read.
    advance(1000)
    expect(l.takeSealedReads(mallory, 5)).toBe(1)
    // Another user's budget is untouched; services and the relay are not limited per user.
    expect(l.takeSealedReads(user("alice"), 60)).toBe(60)
    expect(l.takeSealedReads({ kind: "service", subject: "audit" }, 1000)).toBe(1000)
    // Off: every read granted.
    expect(ledger({ userSealedReadsPerMinute: 0 }).l.takeSealedReads(mallory, 1000)).toBe(1000)
    // Once refilled, the user's entry is forgotten.
    advance(61_000)
    expect(l.size).toBe(0)
  })

  it("serves a user's waiting answers in the order asked, one timer for all of them, as the budget refills", () => {
    const { l, refused, advance } = ledger({ userAnswerBytesPerSecond: 1000, userAnswerBurstBytes: 1000 })
    vi.useFakeTimers()
    const served: string[] = []
    const answer = (name: string) => () => {
      served.push(name)
      l.answered(mallory, 500)
    }
    // Nothing spent: answered at once.
    expect(l.whenAnswerable(mallory, answer("first"))).toBeUndefined()
    expect(served).toEqual(["first"])
    // Overdrawn by 500 bytes: four connections' answers wait, on one timer, the limit counted once.
    l.answered(mallory, 1000)
    const timers = vi.getTimerCount()
    const withdraw = ["a", "b", "c", "d"].map((name) => l.whenAnswerable(mallory, answer(name)))
    expect(served).toEqual(["first"])
    expect(vi.getTimerCount()).toBe(timers + 1)
    expect(refused).toEqual([UserLimit.answers])
    // b's connection closes: its answer is withdrawn.
    withdraw[1]!()
    advance(499)
    expect(served).toEqual(["first"])
    advance(1)
    expect(served).toEqual(["first", "a"])
    advance(500)
    expect(served).toEqual(["first", "a", "c"])
    // A request arriving now waits behind d, even once the budget is back for one answer.
    l.whenAnswerable(mallory, answer("late"))
    advance(500)
    expect(served).toEqual(["first", "a", "c", "d"])
    advance(500)
    expect(served).toEqual(["first", "a", "c", "d", "late"])
    expect(refused).toEqual([UserLimit.answers])
    // Other users, and services, wait for nobody.
    expect(l.whenAnswerable(user("alice"), () => served.push("alice"))).toBeUndefined()
    expect(
      l.whenAnswerable({ kind: "service", subject: "audit" }, () => served.push("audit")),
    ).toBeUndefined()
    expect(served.slice(-2)).toEqual(["alice", "audit"])
  })

  it("makes a user's answers wait while the bytes answered overdraw the budget, and counts each wait", () => {
    const { l, refused, advance } = ledger({ userAnswerBytesPerSecond: 1000, userAnswerBurstBytes: 2000 })
    vi.useFakeTimers()
    // A user never answered waits for nothing; an answer larger than what is left overdraws the budget.
    expect(l.answerDelay(mallory)).toBe(0)
    l.answered(mallory, 1500)
    expect(l.answerDelay(mallory)).toBe(0)
    l.answered(mallory, 1500)
    expect(l.answerDelay(mallory)).toBe(1000)
    expect(refused).toEqual([UserLimit.answers])
    advance(600)
    expect(l.answerDelay(mallory)).toBe(400)
    advance(400)
    expect(l.answerDelay(mallory)).toBe(0)
    // Another user's budget is their own; services are not limited per user.
    l.answered(user("alice"), 100)
    expect(l.answerDelay(user("alice"))).toBe(0)
    l.answered({ kind: "service", subject: "audit" }, 1_000_000)
    expect(l.answerDelay({ kind: "service", subject: "audit" })).toBe(0)
    // Once refilled, the user's entry is forgotten.
    advance(3000)
    expect(l.size).toBe(0)
  })

  it("refuses a user's connection beyond the limit, and takes one again once another closed", () => {
    const { l } = ledger({ maxSocketsPerUser: 2 })
    const first = l.addSocket(mallory, socket())
    l.addSocket(mallory, socket())
    expect(refusal(() => l.addSocket(mallory, socket()))).toMatchObject({
      code: ErrorCode.RATE_LIMITED,
      rule: UserLimit.sockets,
    })
    // Another user is not affected.
    l.addSocket(user("alice"), socket())
    first()
    l.addSocket(mallory, socket())
  })

  it("counts documents, not connections to one document", () => {
    const { l } = ledger({ maxDocumentsPerUser: 2 })
    const closeA = l.openDocument(mallory, "g~a")
    l.openDocument(mallory, "g~a")
    l.openDocument(mallory, "g~b")
    expect(refusal(() => l.openDocument(mallory, "g~c")).rule).toBe(UserLimit.documents)
    closeA()
    // g~a is still open once.
    expect(refusal(() => l.openDocument(mallory, "g~c")).rule).toBe(UserLimit.documents)
  })

  it("does not count the user's own inbox among their documents, but does count another user's", () => {
    const { l } = ledger({ maxDocumentsPerUser: 2 })
    const closeInbox = l.openDocument(mallory, inboxDocumentName("mallory" as UserId))
    l.openDocument(mallory, "g~a")
    l.openDocument(mallory, "g~b")
    expect(refusal(() => l.openDocument(mallory, "g~c")).rule).toBe(UserLimit.documents)
    // An inbox name is no way around the limit: only the user's own is free.
    expect(refusal(() => l.openDocument(mallory, inboxDocumentName("alice" as UserId))).rule).toBe(
      UserLimit.documents,
    )
    closeInbox()
    closeInbox()
    expect(refusal(() => l.openDocument(mallory, "g~c")).rule).toBe(UserLimit.documents)
  })

  it("shares one update budget across a user's connections, charging large updates more, and refills it", () => {
    vi.useFakeTimers()
    const { l, advance } = ledger({ userUpdatesPerSecond: 10, userUpdateBurst: 20 })
    for (let i = 0; i < 20; i++) l.admitUpdate(mallory, 100)()
    expect(refusal(() => l.admitUpdate(mallory, 100)).rule).toBe(UserLimit.updates)
    advance(500)
    // Five tokens back: a 64 KiB update costs five.
    l.admitUpdate(mallory, 64 * 1024)()
    expect(refusal(() => l.admitUpdate(mallory, 1)).rule).toBe(UserLimit.updates)
  })

  it("charges an update for the connections it is sent to, and for its values once checked", () => {
    vi.useFakeTimers()
    const { l, advance } = ledger({ userUpdatesPerSecond: 10, userUpdateBurst: 20 })
    // A room with 1,000 connections: each update costs 11.
    l.admitUpdate(mallory, 100, 1000)()
    expect(refusal(() => l.admitUpdate(mallory, 100, 1000)).rule).toBe(UserLimit.updates)
    // Back to a full budget; a small frame of 320 values (messages, reactions) costs 20,
    // the first of which it paid on arrival.
    advance(2000)
    l.admitUpdate(mallory, 500)()
    l.chargeValues(mallory, 320, 500)
    expect(refusal(() => l.admitUpdate(mallory, 100)).rule).toBe(UserLimit.updates)
    // A message's few values cost nothing more; another user's budget is their own.
    advance(2000)
    l.admitUpdate(mallory, 100)()
    l.chargeValues(mallory, 5, 100)
    for (let i = 0; i < 19; i++) l.admitUpdate(mallory, 100)()
    expect(refusal(() => l.admitUpdate(mallory, 100)).rule).toBe(UserLimit.updates)
    l.chargeValues(user("alice"), 320, 500)
    l.admitUpdate(user("alice"), 100)()
  })

  it("bounds the bytes a user has waiting, and frees them when the update is done", () => {
    const { l } = ledger({ maxPendingBytesPerUser: 1000 })
    const done = l.admitUpdate(mallory, 800)
    expect(refusal(() => l.admitUpdate(mallory, 300)).rule).toBe(UserLimit.pendingBytes)
    done()
    l.admitUpdate(mallory, 300)
  })

  it("refuses a user's changes once they spent the day's stored bytes, until the budget refilled enough, and remembers them that long", () => {
    vi.useFakeTimers()
    const { l, advance, refused } = ledger({ userUpdateBytesPerDay: 86_400 })
    // A change of the whole budget fits; the next byte does not.
    l.checkStored(mallory, 86_400)
    l.chargeStored(mallory, 86_400)
    const refusedChange = refusal(() => l.checkStored(mallory, 100))
    expect(refusedChange.rule).toBe(UserLimit.updateBytesPerDay)
    expect(refusedChange.message).toContain("86400 bytes a day")
    expect(refused).toEqual([UserLimit.updateBytesPerDay])
    // Another user's budget is their own; service principals are not counted.
    l.checkStored(user("alice"), 1000)
    l.checkStored({ kind: "service", subject: "bot" }, 1_000_000)
    // A byte a second: 100 bytes after 100 s.
    advance(99_000)
    expect(refusal(() => l.checkStored(mallory, 100)).rule).toBe(UserLimit.updateBytesPerDay)
    advance(1_000)
    l.checkStored(mallory, 100)
    // Closing every connection does not reset it: the entry stays until the budget is full again.
    expect(l.size).toBe(1)
    advance(86_400_000)
    expect(l.size).toBe(0)
  })

  it("paces what a user's connections send once their receive burst is spent, across connections", () => {
    vi.useFakeTimers()
    const { l, advance, refused } = ledger({ userReceiveBytesPerSecond: 1000, userReceiveBurstBytes: 4000 })
    // Within the burst, from any number of connections: read at once.
    expect(l.received(mallory, 2500)).toBe(0)
    expect(l.received(mallory, 1500)).toBe(0)
    // Over it: the connection that went over waits until the debt is paid.
    expect(l.received(mallory, 500)).toBe(500)
    expect(refused).toEqual([UserLimit.receivedBytes])
    advance(500)
    expect(l.received(mallory, 100)).toBe(100)
    // Another user's budget is their own; services are not paced.
    expect(l.received(user("alice"), 4000)).toBe(0)
    expect(l.received({ kind: "service", subject: "bot" }, 1_000_000)).toBe(0)
  })

  it("refuses a creation with too many participants whole, without spending the conversation budget", () => {
    const { l } = ledger({ userConversationsPerMinute: 1, userParticipantsPerMinute: 10 })
    l.chargeGrowth(mallory, { creates: false, participantsAdded: 1 })
    expect(refusal(() => l.chargeGrowth(mallory, { creates: true, participantsAdded: 10 })).rule).toBe(
      UserLimit.participants,
    )
    l.chargeGrowth(mallory, { creates: true, participantsAdded: 9 })
    expect(refusal(() => l.chargeGrowth(mallory, { creates: true, participantsAdded: 0 })).rule).toBe(
      UserLimit.conversations,
    )
  })

  it("takes a group larger than a minute's participants whole from a full budget, then holds the user until it is paid for", () => {
    // Refused as retryable for ever before: a stock client reconnected every 200 ms for good (an outside probe).
    vi.useFakeTimers()
    const { l, advance } = ledger({ userParticipantsPerMinute: 10 })
    l.chargeGrowth(mallory, { creates: true, participantsAdded: 25 })
    // 25 is 2.5 minutes of the budget: a minute later it is still in debt.
    advance(60_000)
    expect(refusal(() => l.chargeGrowth(mallory, { creates: false, participantsAdded: 1 })).rule).toBe(
      UserLimit.participants,
    )
    advance(60_000 + 6_000)
    l.chargeGrowth(mallory, { creates: false, participantsAdded: 1 })
  })

  it("closes the user's connection holding the most once their unread bytes pass the limit, not counting the largest initial sync", () => {
    const { l, refused } = ledger({ maxQueuedBytesPerUser: 1000 })
    const downloading = socket(5000, 5000)
    const small = socket(400)
    l.addSocket(mallory, downloading)
    l.addSocket(mallory, small)
    // One download of any size is allowed.
    expect(l.checkQueued(mallory)).toBe(false)
    const second = socket(3000, 3000)
    l.addSocket(mallory, second)
    expect(l.checkQueued(mallory)).toBe(true)
    expect(downloading.closedWith).toBe(UserLimit.queuedBytes)
    expect(refused).toEqual([UserLimit.queuedBytes])
  })

  it("forgets a user once their last connection closed and their budgets refilled", () => {
    vi.useFakeTimers()
    const { l, advance } = ledger({ userConversationsPerMinute: 6 })
    const closeSocket = l.addSocket(mallory, socket())
    const closeDoc = l.openDocument(mallory, "g~a")
    l.chargeGrowth(mallory, { creates: true, participantsAdded: 1 })
    closeDoc()
    closeSocket()
    // Closing every connection does not reset a spent budget...
    expect(l.size).toBe(1)
    advance(10_001)
    // ...but once it refilled, nothing of the user is left.
    expect(l.size).toBe(0)
    // A user who spent nothing is forgotten at once.
    l.addSocket(user("alice"), socket())()
    expect(l.size).toBe(0)
  })

  it("does not limit service tokens or the relay", () => {
    const { l } = ledger({ maxSocketsPerUser: 1 })
    const service: Principal = { kind: "service", subject: "audit" }
    l.addSocket(service, socket())
    l.addSocket(service, socket())
    l.addSocket({ kind: "relay" }, socket())
    expect(l.size).toBe(0)
  })

  describe("in a cluster", () => {
    /** Two relays' ledgers over one clock, and what each last heard of the other's held sockets and documents. */
    function pair(limits: Partial<UserLimits>) {
      let now = 0
      const relays = [0, 1].map(() => {
        const heard = new Map<UserId, HeldElsewhere>()
        const l = new UserLedger({ ...DEFAULT_USER_LIMITS, ...limits }, () => now)
        l.shareWith({ held: (u) => heard.get(u), changed: () => {} })
        return { l, heard }
      })
      /** One round of reports: each relay's report reaches the other (what ClusterUsage does over Redis). */
      const exchange = () => {
        for (const [from, to] of [
          [relays[0]!, relays[1]!],
          [relays[1]!, relays[0]!],
        ] as const)
          for (const r of from.l.takeReport()) {
            to.heard.set(r.user, { sockets: r.sockets, documents: r.documents })
            to.l.spentElsewhere(r.user, r)
          }
      }
      return { a: relays[0]!.l, b: relays[1]!.l, exchange, advance: (ms: number) => (now += ms) }
    }

    it("holds a user's update rate across relays to the limit, not the limit times the relays", () => {
      const { a, b, exchange, advance } = pair({ userUpdatesPerSecond: 10, userUpdateBurst: 20 })
      for (let i = 0; i < 15; i++) a.admitUpdate(mallory, 10)()
      for (let i = 0; i < 5; i++) b.admitUpdate(mallory, 10)()
      exchange()
      // Twenty spent across both: each relay knows, and refuses the next.
      expect(refusal(() => a.admitUpdate(mallory, 10)).rule).toBe(UserLimit.updates)
      expect(refusal(() => b.admitUpdate(mallory, 10)).rule).toBe(UserLimit.updates)
      // The budget refills at the user's rate once, not once per relay.
      advance(500)
      for (let i = 0; i < 5; i++) a.admitUpdate(mallory, 10)()
      exchange()
      expect(refusal(() => b.admitUpdate(mallory, 10)).rule).toBe(UserLimit.updates)
      // Alice spends nothing of mallory's budget.
      b.admitUpdate(user("alice"), 10)()
    })

    it("holds the bytes a user is answered across relays to one budget", () => {
      const { a, b, exchange, advance } = pair({ userAnswerBytesPerSecond: 1000, userAnswerBurstBytes: 4000 })
      a.answered(mallory, 3000)
      b.answered(mallory, 1500)
      // Each relay alone is within the burst; together they are not, once they have heard of each other.
      expect(a.answerDelay(mallory)).toBe(0)
      exchange()
      expect(a.answerDelay(mallory)).toBe(500)
      expect(b.answerDelay(mallory)).toBe(500)
      advance(500)
      expect(a.answerDelay(mallory)).toBe(0)
      expect(b.answerDelay(user("alice"))).toBe(0)
    })

    it("holds the bytes a user stores across relays to one daily budget", () => {
      const { a, b, exchange } = pair({ userUpdateBytesPerDay: 10_000 })
      a.chargeStored(mallory, 6_000)
      b.chargeStored(mallory, 3_000)
      // Each relay alone has room for 2,000 more; together they have 1,000, once they heard of each other.
      a.checkStored(mallory, 2_000)
      exchange()
      expect(refusal(() => a.checkStored(mallory, 2_000)).rule).toBe(UserLimit.updateBytesPerDay)
      expect(refusal(() => b.checkStored(mallory, 2_000)).rule).toBe(UserLimit.updateBytesPerDay)
      b.checkStored(mallory, 900)
    })

    it("counts the connections and documents a user holds on the other relays, and reports one no longer held", () => {
      const { a, b, exchange } = pair({ maxSocketsPerUser: 3, maxDocumentsPerUser: 2 })
      a.addSocket(mallory, socket())
      const second = a.addSocket(mallory, socket())
      a.openDocument(mallory, "g~a")
      exchange()
      b.addSocket(mallory, socket())
      expect(refusal(() => b.addSocket(mallory, socket())).rule).toBe(UserLimit.sockets)
      b.openDocument(mallory, "g~b")
      expect(refusal(() => b.openDocument(mallory, "g~c")).rule).toBe(UserLimit.documents)
      second()
      exchange()
      b.addSocket(mallory, socket())
    })

    it("closes the newest connections beyond the share it is left", () => {
      const { a } = pair({ maxSocketsPerUser: 4 })
      const sockets = [socket(), socket(), socket()]
      for (const s of sockets) a.addSocket(mallory, s)
      a.trimSockets("mallory" as UserId, 1)
      expect(sockets.map((s) => s.closedWith)).toEqual([undefined, UserLimit.sockets, UserLimit.sockets])
    })
  })
})
