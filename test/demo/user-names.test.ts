import { ErrorCode, Limits, ParleyError } from "@parley/shared"
import { describe, expect, it } from "vitest"
import { explain } from "../../client/demo/src/errors.js"
import { parseUserNames, titleProblem } from "../../client/demo/src/user-names.js"

describe("the demo's new-conversation form", () => {
  it("takes a name with a space as one invalid name, saying what a user name is, not as two users", () => {
    expect(parseUserNames("Bad User")).toEqual({
      problem:
        '"Bad User" is not a valid user name: use 1–64 letters, digits or _ . @ - (no spaces), and separate names with commas.',
    })
    expect(parseUserNames("bob, carol\ndave,,")).toEqual({ users: ["bob", "carol", "dave"] })
    expect(parseUserNames("  ")).toEqual({ users: [] })
  })

  it("says a title is too long with the limit, before and after the SDK refuses it", () => {
    expect(titleProblem("x".repeat(Limits.titleLength))).toBeUndefined()
    expect(titleProblem("x".repeat(300))).toBe(
      `The title is too long: at most ${Limits.titleLength} characters (this one has 300).`,
    )
    // What the SDK says of it is shown as it says it (before: "it is too large").
    const refused = new ParleyError(ErrorCode.TOO_LARGE, "the title is too long: at most 200 characters")
    expect(explain(refused)).toBe("the title is too long: at most 200 characters")
  })
})
