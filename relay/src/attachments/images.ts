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
 * The share of the pixel limit each format may use, where its decoder costs
 * more per pixel than the others': libheif's AVIF decoder takes about ten
 * times a JPEG's time and holds about 20 bytes a pixel (a noisy AVIF of
 * 40 million pixels: 3.4 s of CPU and 800 MB), so an AVIF gets 40 % of the
 * limit (16 million pixels by default: a 12-megapixel phone photo passes).
 */
const PIXEL_SHARE: Readonly<Record<string, number>> = { heif: 0.4 }

/**
 * Whether an image decodes at a cost the relay takes, for a pixel limit of
 * `maxPixels`: at most what that many 8-bit RGBA pixels decode to, and a
 * quarter of that for an interlaced PNG, which libvips decodes whole (no
 * shrinking on load, no streaming) for the thumbnail and the clean copy each;
 * and, for a format whose decoder is costlier (see {@link PIXEL_SHARE}),
 * its share of the pixels.
 */
export function decodesAffordably(meta: Metadata, maxPixels: number): boolean {
  const budget = maxPixels * 4
  const interlacedPng = meta.format === "png" && meta.isProgressive === true
  const pixels = (meta.width ?? 0) * (meta.height ?? 0)
  return (
    decodedBytes(meta) <= (interlacedPng ? budget / 4 : budget) &&
    pixels <= maxPixels * (PIXEL_SHARE[meta.format ?? ""] ?? 1)
  )
}

/** What {@link describeImage} finds. */
export interface ImageFacts {
  /** As served: upright, and the clean copy's when there is one (which may be downscaled). */
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
 * How each still-image format is written again, and how many pixels of it
 * the relay writes at most (a share of the pixel limit): the same format, at
 * a quality that keeps a photo's look (a re-encode of a JPEG is lossy; PNG is
 * lossless), with the encoder's cheapest settings. Encoding costs far more per
 * pixel than decoding, and more in some formats than others: at AVIF's
 * default effort a 1.3 KB AVIF of 6300 × 6300 with EXIF cost 14 s of CPU and
 * 1.4 GB, at WebP's 10 s for a noisy 40-megapixel one. The shares keep the
 * worst (noise) near a JPEG's cost at the full limit, about a second; a larger
 * image with metadata is stored downscaled to its share. The colour profile
 * is kept: it is not about the person.
 */
const REENCODE: Readonly<
  Record<string, { readonly share: number; readonly write: (image: Sharp) => Sharp }>
> = {
  "image/jpeg": { share: 1, write: (image) => image.jpeg({ quality: 92 }) },
  "image/png": { share: 1, write: (image) => image.png({ compressionLevel: 3 }) },
  // Effort 2: at 0 and 1 libwebp fails to encode a large noisy image (its first partition overflows).
  "image/webp": { share: 0.3, write: (image) => image.webp({ quality: 92, effort: 2 }) },
  "image/avif": { share: 0.1, write: (image) => image.avif({ quality: 70, effort: 0 }) },
}

/** `width` × `height` scaled down to at most `pixels`, or undefined when it is not more. */
export function downscaled(
  width: number,
  height: number,
  pixels: number,
): { width: number; height: number } | undefined {
  if (width * height <= pixels) return undefined
  const scale = Math.sqrt(pixels / (width * height))
  return { width: Math.max(1, Math.floor(width * scale)), height: Math.max(1, Math.floor(height * scale)) }
}

/**
 * Turns at decoding, shared fairly: at most `atOnce` decodes run, at most one
 * per owner (the uploading user), and a freed turn goes to the waiting owner
 * whose last turn began longest ago (one with none running or waiting counts
 * as never served; ties in arrival order). So accounts completing image
 * uploads without end each hold at most one turn, and another user's image
 * waits at most for one running decode to end, not for their backlogs (before:
 * served in arrival order, two accounts with 4 uploads each kept both turns,
 * and a 70-byte PNG waited a minute).
 */
export class DecodeTurns {
  private readonly running = new Set<string>()
  private readonly waiting: { readonly owner: string; readonly start: () => void }[] = []
  /** When each owner with a decode running or waiting last began one (a count of turns given). */
  private readonly lastTurn = new Map<string, number>()
  private turnsGiven = 0

  constructor(private readonly atOnce: number) {}

  /** Runs `work` in `owner`'s turn, when one is free. */
  async run<T>(owner: string, work: () => Promise<T>): Promise<T> {
    if (this.free(owner)) this.begin(owner)
    else await new Promise<void>((start) => this.waiting.push({ owner, start }))
    try {
      return await work()
    } finally {
      this.running.delete(owner)
      if (!this.waiting.some((w) => w.owner === owner)) this.lastTurn.delete(owner)
      this.next()
    }
  }

  private free(owner: string): boolean {
    return this.running.size < this.atOnce && !this.running.has(owner)
  }

  /** Taken at once, so that a second release in the same turn does not hand it out twice. */
  private begin(owner: string): void {
    this.running.add(owner)
    this.lastTurn.set(owner, ++this.turnsGiven)
  }

  private next(): void {
    let at = -1
    for (let i = 0; i < this.waiting.length; i++) {
      const { owner } = this.waiting[i]!
      if (!this.free(owner)) continue
      if (at < 0 || (this.lastTurn.get(owner) ?? 0) < (this.lastTurn.get(this.waiting[at]!.owner) ?? 0))
        at = i
    }
    if (at < 0) return
    const [turn] = this.waiting.splice(at, 1)
    this.begin(turn!.owner)
    turn!.start()
  }
}

/** Two images decode at once on a relay, one per user: several large uploads completing together stay bounded. */
const turns = new DecodeTurns(2)

async function decode(bytes: () => AsyncIterable<Uint8Array>, image: Sharp): Promise<void> {
  await pipeline(Readable.from(bytes()), image)
}

/** sharp (libvips) runs each image on one thread: two turns use at most two cores, whatever the machine. */
let oneThreadEach = false

/**
 * The dimensions of an image as shown (EXIF orientation applied), a WebP
 * thumbnail of at most {@link THUMBNAIL_SIZE} px a side, and, when it
 * carries metadata, a copy without it (see {@link REENCODE}; downscaled past
 * its format's share of `maxPixels`), with `sharp` (libvips). Decoding
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
  if (!oneThreadEach) {
    sharp.concurrency(1)
    oneThreadEach = true
  }
  return turns.run(owner, async () => {
    const options: SharpOptions = { limitInputPixels: maxPixels, failOn: "error", sequentialRead: true }
    const probe = sharp(options)
    const [meta] = await Promise.all([probe.metadata(), decode(bytes, probe)])
    if (!meta.width || !meta.height) throw new Error("the image has no dimensions")
    // Before any pixel is decoded (the probe reads the header only).
    if (!decodesAffordably(meta, maxPixels))
      throw new Error(
        `the image decodes to ${decodedBytes(meta)} bytes (${meta.width} × ${meta.height} ${meta.format}), more than the relay decodes`,
      )
    const rotated = (meta.orientation ?? 1) >= 5
    let width = rotated ? meta.height : meta.width
    let height = rotated ? meta.width : meta.height
    const reencode = REENCODE[type]
    let clean: Uint8Array | undefined
    // An animated image would lose its frames here: left as it is (README, "Attachments").
    if (reencode && carriesMetadata(meta) && (meta.pages ?? 1) <= 1) {
      // sharp writes no metadata unless asked: only the pixels, upright, and the colour profile.
      let copy = sharp(options).rotate().keepIccProfile()
      const smaller = downscaled(width, height, maxPixels * reencode.share)
      if (smaller) copy = copy.resize(smaller.width, smaller.height, { fit: "inside" })
      copy = reencode.write(copy)
      const [out] = await Promise.all([copy.toBuffer({ resolveWithObject: true }), decode(bytes, copy)])
      clean = out.data
      width = out.info.width
      height = out.info.height
    }
    // Of what is served: from the clean copy when there is one, which is smaller than the upload
    // may be (an AVIF's second full decode would cost as much again).
    const thumb = sharp(options)
      .rotate()
      .resize(THUMBNAIL_SIZE, THUMBNAIL_SIZE, { fit: "inside", withoutEnlargement: true })
      .webp({ quality: 70 })
    const thumbSource = clean
      ? async function* () {
          yield clean!
        }
      : bytes
    const [out] = await Promise.all([thumb.toBuffer({ resolveWithObject: true }), decode(thumbSource, thumb)])
    return {
      width,
      height,
      thumbnail: { bytes: out.data, width: out.info.width, height: out.info.height },
      ...(clean ? { clean } : {}),
    }
  })
}
