import { describe, expect, it } from "vitest"
import { ExitCode, storageFailure } from "../src/startup-error.js"

describe("a start-up failure of SQLite", () => {
  it("names an unbuilt better-sqlite3 as such, not as a data directory to make writable", () => {
    // What `bindings` throws when the install skipped better-sqlite3's build script.
    const unbuilt = new Error(
      "Could not locate the bindings file. Tried:\n → /app/node_modules/better-sqlite3/build/better_sqlite3.node",
    )
    const failure = storageFailure(unbuilt, { kind: "sqlite", dataDir: "./data" })
    expect(failure.exitCode).toBe(ExitCode.STORAGE)
    expect(failure.message).toMatch(/^cannot open SQLite: better-sqlite3's native module is missing/)
    expect(failure.message).toContain("npm rebuild better-sqlite3")
    expect(failure.message).not.toContain("make it a directory")
    // Another Node.js's build.
    const other = Object.assign(new Error("The module was compiled against a different Node.js version"), {
      code: "ERR_DLOPEN_FAILED",
    })
    expect(storageFailure(other, { kind: "sqlite", dataDir: "./data" }).message).toContain("native module")
  })
})
