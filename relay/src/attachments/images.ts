import { Readable } from "node:stream"
import { pipeline } from "node:stream/promises"
import sharp, { type Sharp, type SharpOptions } from "sharp"

/** The longest side of a thumbnail, in pixels. */
export const THUMBNAIL_SIZE = 320
/** The most pixels the relay decodes of one image (width × height): a decompression bomb stops there. */
export const DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

/** What {@link describeImage} finds. */
export interface ImageFacts {
  readonly width: number
  readonly height: number
  readonly thumbnail: { readonly bytes: Uint8Array; readonly width: number; readonly height: number }
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
 * The dimensions of an image as shown (EXIF orientation applied) and a WebP
 * thumbnail of at most {@link THUMBNAIL_SIZE} px a side, with `sharp`
 * (libvips). Decoding stops past `maxPixels`; an image that does not decode
 * rejects (the caller refuses the upload: its signature lied).
 */
export function describeImage(
  bytes: () => AsyncIterable<Uint8Array>,
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
    return {
      width: rotated ? meta.height : meta.width,
      height: rotated ? meta.width : meta.height,
      thumbnail: { bytes: out.data, width: out.info.width, height: out.info.height },
    }
  })
}
