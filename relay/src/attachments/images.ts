import { Readable } from "node:stream"
import { pipeline } from "node:stream/promises"
import sharp, { type Metadata, type Sharp, type SharpOptions } from "sharp"

/** The longest side of a thumbnail, in pixels. */
export const THUMBNAIL_SIZE = 320
/** The most pixels the relay decodes of one image (width × height): a decompression bomb stops there. */
export const DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

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

/** At most this many images decode at once, so that several large uploads completing together stay bounded. */
const DECODERS = 2
let decoding = 0
const waiting: (() => void)[] = []
async function slot<T>(run: () => Promise<T>): Promise<T> {
  if (decoding >= DECODERS) await new Promise<void>((resolve) => waiting.push(resolve))
  decoding++
  try {
    return await run()
  } finally {
    decoding--
    waiting.shift()?.()
  }
}

async function decode(bytes: () => AsyncIterable<Uint8Array>, image: Sharp): Promise<void> {
  await pipeline(Readable.from(bytes()), image)
}

/**
 * The dimensions of an image as shown (EXIF orientation applied), a WebP
 * thumbnail of at most {@link THUMBNAIL_SIZE} px a side, and, when it
 * carries metadata, a copy without it, with `sharp` (libvips). Decoding
 * stops past `maxPixels`; an image that does not decode rejects (the caller
 * refuses the upload: its signature lied). `type` is the sniffed type.
 */
export function describeImage(
  bytes: () => AsyncIterable<Uint8Array>,
  type: string,
  maxPixels: number = DEFAULT_MAX_IMAGE_PIXELS,
): Promise<ImageFacts> {
  return slot(async () => {
    const options: SharpOptions = { limitInputPixels: maxPixels, failOn: "error", sequentialRead: true }
    const probe = sharp(options)
    const [meta] = await Promise.all([probe.metadata(), decode(bytes, probe)])
    if (!meta.width || !meta.height) throw new Error("the image has no dimensions")
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
