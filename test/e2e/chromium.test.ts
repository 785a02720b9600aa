import { describe, expect, it } from "vitest"
import { findChromium, INSTALL_HINT } from "./chromium.js"

describe("finding Chromium for the browser tests", () => {
  it("fails naming the install command when there is no browser", () => {
    expect(() => findChromium({}, ["/nonexistent/chromium"])).toThrow(INSTALL_HINT)
  })

  it("fails when CHROME_PATH names a missing file, instead of using another browser", () => {
    expect(() => findChromium({ CHROME_PATH: "/nonexistent/chrome" }, [process.execPath])).toThrow(
      /CHROME_PATH is set to \/nonexistent\/chrome/,
    )
  })

  it("prefers CHROME_PATH, then the first candidate that exists", () => {
    expect(findChromium({ CHROME_PATH: process.execPath }, [])).toBe(process.execPath)
    expect(findChromium({}, ["/nonexistent/chromium", process.execPath])).toBe(process.execPath)
  })
})
