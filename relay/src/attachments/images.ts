import { Readable } from "node:stream"
import { pipeline } from "node:stream/promises"
import sharp, { type Metadata, type Sharp, type SharpOptions } from "sharp"

/** The longest side of a thumbnail, in pixels. */
export const THUMBNAIL_SIZE = 320
/** The most pixels the relay decodes of one image (width × height): a decompression bomb stops there. */
export const DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

/** Bytes per sample of each libvips band format (`Metadata.depth`). */
const SAMPLE_BYTES: Readonly<Record<string, number>> = {
  uchar: 1,
  char: 1,
  ushort: 2,
  short: 2,
  uint: 4,
  int: 4,
  float: 4,
  complex: 8,
  double: 8,
  dpcomplex: 16,
}

/**
 * What decoding an image holds in memory at once, in bytes: every pixel of
 * every page, at its bands and sample size. The pixel limit alone let a 16-bit
 * RGBA image under it decode to 8 bytes a pixel (a 308 KB PNG of 6300 × 6300:
 * 317 MB and 1.7 s of CPU).
 */
export function decodedBytes(meta: Metadata): number {
  const sample = SAMPLE_BYTES[meta.depth ?? "uchar"] ?? 16
  return (meta.width ?? 0) * (meta.height ?? 0) * (meta.channels ?? 4) * sample * (meta.pages ?? 1)
}

/**
 * Whether an image decodes at a cost the relay takes, for a pixel limit of
 * `maxPixels`: at most what that many 8-bit RGBA pixels decode to, and a
 * quarter of that for an interlaced PNG, which libvips decodes whole (no
 * shrinking on load, no streaming) for the thumbnail and the clean copy each.
 */
export function decodesAffordably(meta: Metadata, maxPixels: number): boolean {
  const budget = maxPixels * 4
  const interlacedPng = meta.format === "png" && meta.isProgressive === true
  return decodedBytes(meta) <= (interlacedPng ? budget / 4 : budget)
}

/** What {@link describeImage} finds. */
export interface ImageFacts {
  readonly width: number
  readonly height: number
  readonly thumbnail: { readonly bytes: Uint8Array; readonly width: number; readonly height: number }
  /**
   * The image again without its metadata, upright, when it carried any
   * (see {@link carriesMetadata}); undefined when it carried none, or is
   * animated or of a format not re-encoded (GIF).
   */
  readonly clean?: Uint8Array
}

/**
 * Whether an image carries more than its pixels: EXIF (a phone's GPS
 * position, its make and serial, the time), XMP, IPTC, or text comments.
 * Chat recipients see a photo, not where it was taken: such images are
 * stored again without them.
 */
export const carriesMetadata = (meta: Metadata): boolean =>
  Boolean(meta.exif || meta.xmp || meta.iptc || (meta.comments && meta.comments.length > 0))

/**
 * How each still-image format is written again: the same format, at a
 * quality that keeps a photo's look (a re-encode of a JPEG is lossy; PNG is
 * lossless). The colour profile is kept: it is not about the person.
 */
const REENCODE: Readonly<Record<string, (image: Sharp) => Sharp>> = {
  "image/jpeg": (image) => image.jpeg({ quality: 92 }),
  "image/png": (image) => image.png(),
  "image/webp": (image) => image.webp({ quality: 92 }),
  "image/avif": (image) => image.avif({ quality: 70 }),
}

/**
 * Turns at decoding, shared fairly: at most `atOnce` decodes run, and at most
 * one per owner (the uploading user), so that one account completing image
 * uploads without end holds one turn, and every other user's images pass it
 * (each decode of a large image costs 100–200 ms of CPU). Waiting owners are
 * served in arrival order, skipping any whose decode is running.
 */
export class DecodeTurns {
  private readonly running = new Set<string>()
  private readonly waiting: { readonly owner: string; readonly start: () => void }[] = []

  constructor(private readonly atOnce: number) {}

  /** Runs `work` in `owner`'s turn, when one is free. */
  async run<T>(owner: string, work: () => Promise<T>): Promise<T> {
    if (!this.free(owner)) await new Promise<void>((start) => this.waiting.push({ owner, start }))
    this.running.add(owner)
    try {
      return await work()
    } finally {
      this.running.delete(owner)
      this.next()
    }
  }

  private free(owner: string): boolean {
    return this.running.size < this.atOnce && !this.running.has(owner)
  }

  private next(): void {
    const at = this.waiting.findIndex((w) => this.free(w.owner))
    if (at < 0) return
    const [turn] = this.waiting.splice(at, 1)
    // Taken now, so that a second release in the same turn does not hand it out twice.
    this.running.add(turn!.owner)
    turn!.start()
  }
}

/** Two images decode at once on a relay, one per user: several large uploads completing together stay bounded. */
const turns = new DecodeTurns(2)

async function decode(bytes: () => AsyncIterable<Uint8Array>, image: Sharp): Promise<void> {
  await pipeline(Readable.from(bytes()), image)
}

/**
 * The dimensions of an image as shown (EXIF orientation applied), a WebP
 * thumbnail of at most {@link THUMBNAIL_SIZE} px a side, and, when it
 * carries metadata, a copy without it, with `sharp` (libvips). Decoding
 * stops past `maxPixels`, and an image whose pixels would take more memory
 * than {@link decodesAffordably} allows is not decoded at all; either, and an
 * image that does not decode, rejects (the caller
 * refuses the upload: its signature lied). `type` is the sniffed type;
 * `owner` (the uploader) whose turn at decoding it takes (see {@link DecodeTurns}).
 */
export function describeImage(
  bytes: () => AsyncIterable<Uint8Array>,
  type: string,
  maxPixels: number = DEFAULT_MAX_IMAGE_PIXELS,
  owner = "",
): Promise<ImageFacts> {
  return turns.run(owner, async () => {
    const options: SharpOptions = { limitInputPixels: maxPixels, failOn: "error", sequentialRead: true }
    const probe = sharp(options)
    const [meta] = await Promise.all([probe.metadata(), decode(bytes, probe)])
    if (!meta.width || !meta.height) throw new Error("the image has no dimensions")
    // Before any pixel is decoded (the probe reads the header only).
    if (!decodesAffordably(meta, maxPixels))
      throw new Error(`the image decodes to ${decodedBytes(meta)} bytes, more than the relay decodes`)
    const rotated = (meta.orientation ?? 1) >= 5
    const thumb = sharp(options)
      .rotate()
      .resize(THUMBNAIL_SIZE, THUMBNAIL_SIZE, { fit: "inside", withoutEnlargement: true })
      .webp({ quality: 70 })
    const [out] = await Promise.all([thumb.toBuffer({ resolveWithObject: true }), decode(bytes, thumb)])
    const reencode = REENCODE[type]
    let clean: Uint8Array | undefined
    // An animated image would lose its frames here: left as it is (README, "Attachments").
    if (reencode && carriesMetadata(meta) && (meta.pages ?? 1) <= 1) {
      // sharp writes no metadata unless asked: only the pixels, upright, and the colour profile.
      const copy = reencode(sharp(options).rotate().keepIccProfile())
      ;[clean] = await Promise.all([copy.toBuffer(), decode(bytes, copy)])
    }
    return {
      width: rotated ? meta.height : meta.width,
      height: rotated ? meta.width : meta.height,
      thumbnail: { bytes: out.data, width: out.info.width, height: out.info.height },
      ...(clean ? { clean } : {}),
    }
  })
}
