import { ErrorCode, ParleyError } from "./errors.js"
import { plainJsonOf } from "./plain-json.js"
import { Limits, type Metadata } from "./schema.js"
import { checkMetadata, holdsNameControls, TITLE_CONTROLS } from "./validate.js"
import { assertWellFormed } from "./well-formed.js"

// Checks of what the write operations are given, before anything is written (not the package's API).

/** Throws unless `title` is a conversation's title: a string within the limit, without controls, well formed. */
export function assertTitle(title: unknown): asserts title is string {
  if (typeof title !== "string") throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "a title is a string")
  if (title.length > Limits.titleLength)
    throw new ParleyError(
      ErrorCode.TOO_LARGE,
      `the title is too long: at most ${Limits.titleLength} characters (this one has ${title.length})`,
    )
  if (holdsNameControls(title)) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, TITLE_CONTROLS)
  assertWellFormed(title, "title")
}

/**
 * `metadata` as it is written: checked (see `checkMetadata`), its `undefined`
 * keys left out, and refused unless the rest is plain JSON (see `plainJsonOf`).
 */
export function metadataOf(metadata: Metadata): Metadata {
  // Its depth and size first, as given (a value nested thousands deep is refused for that, by name).
  const given = checkMetadata(metadata)
  if (given !== undefined) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, given)
  // Then copied: what is checked is what is written (see `plainJsonOf`).
  const copy = plainJsonOf(metadata, "metadata")
  // Wrapped, so that a string cut inside a character is named from `metadata` on ("metadata.tags.1").
  assertWellFormed({ metadata: copy })
  const problem = checkMetadata(copy)
  if (problem !== undefined) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, problem)
  return copy
}
