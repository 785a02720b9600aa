import { type ConversationInfo, ErrorCode, ParleyError } from "@parley/shared"
import { describe, expect, it } from "vitest"
import { type ConversationState, LoadingState, nextState } from "../src/conversation/loading.js"

const info = (title: string) =>
  ({
    id: "g~x",
    schemaVersion: 1,
    kind: "group",
    title,
    createdBy: "amy",
    createdAt: 1,
    metadata: {},
  }) as unknown as ConversationInfo

const loading: ConversationState = { state: "loading" }
const settled = (conversation: ConversationInfo | undefined, relaySynced = false, creating = false) =>
  ({ type: "settled", info: conversation, relaySynced, creating }) as const
const unavailable = (code: ErrorCode) =>
  ({ type: "unavailable", error: new ParleyError(code, String(code)) }) as const

describe("the conversation's loading state", () => {
  it("is ready once the replica holds the conversation, and follows its fields", () => {
    const ready = nextState(loading, settled(info("a")), "g~x", false)
    expect(ready).toEqual({ state: "ready", conversation: info("a") })
    expect(nextState(ready, settled(info("a")), "g~x", false)).toBe(ready)
    expect(nextState(ready, settled(info("b")), "g~x", false)).toEqual({
      state: "ready",
      conversation: info("b"),
    })
  })

  it("is not found when the relay's state arrived without it, unless the client is creating it", () => {
    expect(nextState(loading, settled(undefined), "g~x", false)).toBe(loading)
    expect(nextState(loading, settled(undefined, true, true), "g~x", false)).toBe(loading)
    const missing = nextState(loading, settled(undefined, true), "g~x", false)
    expect(missing).toMatchObject({ state: "unavailable", reason: ErrorCode.NOT_FOUND })
    // Created (or arrived) later: ready after all.
    expect(nextState(missing, settled(info("a")), "g~x", false).state).toBe("ready")
  })

  it("keeps other refusals for good, and leaves 'unauthorized' only once the connection is online", () => {
    const forbidden = nextState(loading, unavailable(ErrorCode.FORBIDDEN), "g~x", true)
    expect(nextState(forbidden, settled(info("a")), "g~x", true)).toBe(forbidden)
    expect(nextState(forbidden, unavailable(ErrorCode.NOT_FOUND), "g~x", true)).toBe(forbidden)
    const refused = nextState(loading, unavailable(ErrorCode.UNAUTHORIZED), "g~x", false)
    expect(nextState(refused, settled(info("a")), "g~x", false)).toBe(refused)
    expect(nextState(refused, settled(info("a")), "g~x", true).state).toBe("ready")
    // Too many conversations open: back once the connection gets in.
    const limited = nextState(loading, unavailable(ErrorCode.RATE_LIMITED), "g~x", false)
    expect(limited).toMatchObject({ state: "unavailable", reason: ErrorCode.RATE_LIMITED })
    expect(nextState(limited, settled(info("a")), "g~x", false)).toBe(limited)
    expect(nextState(limited, settled(info("a")), "g~x", true).state).toBe("ready")
  })

  it("reports changes, settles ready() and refuses writes until ready and after close", async () => {
    const seen: string[] = []
    const state = new LoadingState(
      "g~x",
      () => false,
      (next) => seen.push(next.state),
    )
    expect(() => state.assertWritable()).toThrow(/still loading/)
    state.apply(settled(info("a")))
    await state.whenReady
    expect(() => state.assertWritable()).not.toThrow()
    state.close()
    expect(() => state.assertWritable()).toThrow(/closed/)
    state.apply(unavailable(ErrorCode.FORBIDDEN))
    expect(seen).toEqual(["ready"])
  })

  it("rejects ready() with UNAVAILABLE when closed while loading", async () => {
    const state = new LoadingState(
      "g~x",
      () => false,
      () => {},
    )
    state.close()
    await expect(state.whenReady).rejects.toMatchObject({ code: ErrorCode.UNAVAILABLE })
    expect(state.state).toMatchObject({ state: "unavailable", reason: ErrorCode.UNAVAILABLE })
  })
})
