import { ErrorCode, ParleyError } from "@parley/shared"
import webpush from "web-push"
import type { VapidKeys } from "./push-target.js"

/** A fresh VAPID key pair (P-256, base64url) with `subject`: `parley-relay vapid-keys`, and dev mode's throwaway keys. */
export function generateVapidKeys(subject: string): VapidKeys {
  const { publicKey, privateKey } = webpush.generateVAPIDKeys()
  return { publicKey, privateKey, subject }
}

/** Throws INVALID_ARGUMENT, naming the problem, unless `keys` can sign VAPID requests (checked at start, not at the first message). */
export function checkVapidKeys(keys: VapidKeys): void {
  try {
    webpush.getVapidHeaders(
      "https://push.invalid",
      keys.subject,
      keys.publicKey,
      keys.privateKey,
      "aes128gcm",
    )
  } catch (error) {
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, `unusable VAPID keys: ${(error as Error).message}`)
  }
}
