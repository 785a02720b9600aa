import { isUserId, Limits } from "@parley/shared"

/** What a valid user id is, for people (see `parseUserId` in shared/src/ids.ts). */
export const USER_ID_RULE = "1–64 letters, digits or _ . @ - (no spaces)"

/**
 * The user ids typed in a "with" field: separated by commas or new lines
 * only, so that "Bad User" is one (invalid) name rather than two users "Bad"
 * and "User" created without a word. An invalid one is a problem to show.
 */
export function parseUserNames(input: string): { users: string[] } | { problem: string } {
  const users = input
    .split(/[,\n]+/)
    .map((u) => u.trim())
    .filter(Boolean)
  const invalid = users.filter((u) => !isUserId(u))
  if (invalid.length > 0)
    return {
      problem: `${invalid.map((u) => JSON.stringify(u)).join(", ")} ${invalid.length === 1 ? "is not a valid user name" : "are not valid user names"}: use ${USER_ID_RULE}, and separate names with commas.`,
    }
  return { users }
}

/** Why `title` cannot be a conversation's title, if it cannot: the limit and how far over it is. */
export function titleProblem(title: string): string | undefined {
  if (title.length <= Limits.titleLength) return undefined
  return `The title is too long: at most ${Limits.titleLength} characters (this one has ${title.length}).`
}
