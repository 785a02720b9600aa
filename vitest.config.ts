import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: [
      "shared/test/**/*.test.ts",
      "relay/test/**/*.test.ts",
      "client/test/**/*.test.ts",
      "test/**/*.test.ts",
    ],
    testTimeout: 20_000,
    hookTimeout: 30_000,
    pool: "forks",
  },
})
