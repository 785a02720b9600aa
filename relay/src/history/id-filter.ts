import * as decoding from "lib0/decoding"
import * as encoding from "lib0/encoding"

/** Version of the id filter encoding (first field); another version is rebuilt from its segment. */
export const ID_FILTER_FORMAT = 1

/**
 * Bits per id and probes: a false positive about once in 70,000 checks per
 * segment (measured; 1.5 KB for a segment of 500), so that a conversation of
 * 100,000 messages (200 segments) reads a segment for about one new message
 * in 400, and one of 1,000,000 for one in 40 (a segment read stays held).
 */
const BITS_PER_ID = 24
const PROBES = 16
/**
 * Smallest filter, in bits (a segment of a few messages): double hashing
 * gives `size²` probe sequences, so a small filter answers yes to about
 * `ids / size²` others whatever its fill.
 */
const MIN_BITS = 512

/**
 * The two 32-bit hashes of `id` the probes are derived from (cyrb53's
 * mixing: two multiplicative lanes crossed at the end). Persisted filters
 * depend on it: changing it needs a new {@link ID_FILTER_FORMAT}.
 */
export function idHashes(id: string): readonly [number, number] {
  let h1 = 0xdeadbeef
  let h2 = 0x41c6ce57
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i)
    h1 = Math.imul(h1 ^ c, 2654435761)
    h2 = Math.imul(h2 ^ c, 1597334677)
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507)
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909)
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507)
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909)
  return [h1 >>> 0, h2 >>> 0]
}

/**
 * A Bloom filter of one sealed segment's message ids: says for certain that
 * an id is not in the segment, or that it may be (then the segment itself
 * says). Never a false negative: every id it was built from answers true.
 * Probes by enhanced double hashing of {@link idHashes} (Dillinger and
 * Manolios): the first is bit `x = h1 mod size`; with `y = h2 mod size`,
 * each next one adds `y` to `x` and then the probe's number to `y` (mod
 * size). Plain `h1 + i·h2` repeats bits when `h2` shares factors with the
 * size (one filter in ten answered yes to 1 id in 100).
 */
export class IdFilter {
  private constructor(
    /** Length in bits. */
    readonly size: number,
    readonly probes: number,
    private readonly bits: Uint8Array,
  ) {}

  /** The filter of `ids`. */
  static of(ids: readonly string[]): IdFilter {
    const size = Math.max(MIN_BITS, Math.ceil((ids.length * BITS_PER_ID) / 8) * 8)
    const filter = new IdFilter(size, PROBES, new Uint8Array(size / 8))
    for (const id of ids) filter.add(id)
    return filter
  }

  /** Whether `id` may be among the filter's ids (false: it certainly is not). */
  mayHold(id: string): boolean {
    const [h1, h2] = idHashes(id)
    return this.mayHoldHashed(h1, h2)
  }

  /** {@link mayHold} of an id whose {@link idHashes} are `h1`, `h2` (hashed once for many filters). */
  mayHoldHashed(h1: number, h2: number): boolean {
    return this.mayHoldFrom(h1 % this.size, h2 % this.size)
  }

  /**
   * {@link mayHoldHashed} from `h1 mod size` and `h2 mod size`: computed once
   * for many filters of one size (a conversation's full segments), since a
   * remainder of a 32-bit hash is the costly part of a probe that stops at
   * its first or second bit.
   */
  mayHoldFrom(first: number, second: number): boolean {
    const size = this.size
    let bit = first
    let step = second
    for (let i = 0; i < this.probes; i++) {
      if ((this.bits[bit >>> 3]! & (1 << (bit & 7))) === 0) return false
      bit = (bit + step) % size
      step = (step + i) % size
    }
    return true
  }

  /**
   * Sets `mask` in `words[p · stride + slot]` for every bit `p` set here: the
   * bit-sliced layout of `SealedIdFilters` (one word per bit and group of 32
   * segments, the groups' words for one bit side by side).
   */
  sliceInto(words: Int32Array, slot: number, stride: number, mask: number): void {
    const bits = this.bits
    for (let byte = 0; byte < bits.length; byte++) {
      let value = bits[byte]!
      for (let bit = byte * 8; value !== 0; bit++, value >>>= 1)
        if (value & 1) words[bit * stride + slot]! |= mask
    }
  }

  /** Format, probes, size in bits (var-uints), then the bits. */
  encode(): Uint8Array {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, ID_FILTER_FORMAT)
    encoding.writeVarUint(encoder, this.probes)
    encoding.writeVarUint(encoder, this.size)
    encoding.writeUint8Array(encoder, this.bits)
    return encoding.toUint8Array(encoder)
  }

  /** The filter `bytes` encode; undefined when they are not one of this format (rebuilt from the segment). */
  static decode(bytes: Uint8Array): IdFilter | undefined {
    try {
      const decoder = decoding.createDecoder(bytes)
      if (decoding.readVarUint(decoder) !== ID_FILTER_FORMAT) return undefined
      const probes = decoding.readVarUint(decoder)
      const size = decoding.readVarUint(decoder)
      if (probes < 1 || size < 8 || size % 8 !== 0) return undefined
      const bits = decoding.readUint8Array(decoder, size / 8)
      return decoding.hasContent(decoder) ? undefined : new IdFilter(size, probes, bits.slice())
    } catch {
      return undefined
    }
  }

  private add(id: string): void {
    const [h1, h2] = idHashes(id)
    const size = this.size
    let bit = h1 % size
    let step = h2 % size
    for (let i = 0; i < this.probes; i++) {
      this.bits[bit >>> 3]! |= 1 << (bit & 7)
      bit = (bit + step) % size
      step = (step + i) % size
    }
  }
}
