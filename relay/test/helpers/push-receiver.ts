import { createECDH, randomBytes } from "node:crypto"
import { createServer, type IncomingHttpHeaders, type Server } from "node:http"
import { createRequire } from "node:module"
import type { AddressInfo } from "node:net"
import { importJWK, jwtVerify } from "jose"
import webpush from "web-push"

// http_ece is the reference implementation of RFC 8188 (the one web-push itself builds on); it has no types.
const ece = createRequire(import.meta.url)("http_ece") as {
  decrypt(body: Buffer, params: { version: "aes128gcm"; privateKey: unknown; authSecret: string }): Buffer
}

/**
 * The flags of a relay that sends Web Push with VAPID key pair `vapid` (a
 * fresh one by default; `insecure`: to a receiver on 127.0.0.1, which a relay
 * refuses otherwise).
 */
export function pushRelayArgs(
  insecure = true,
  vapid: { readonly publicKey: string; readonly privateKey: string } = webpush.generateVAPIDKeys(),
): string[] {
  return [
    "--vapid-public-key",
    vapid.publicKey,
    "--vapid-private-key",
    vapid.privateKey,
    "--vapid-subject",
    "mailto:ops@example.com",
    ...(insecure ? ["--push-allow-insecure-endpoints"] : []),
  ]
}

/** What a browser hands its app after `PushManager.subscribe`: `PushSubscription.toJSON()`. */
export interface TestSubscription {
  readonly endpoint: string
  readonly keys: { readonly p256dh: string; readonly auth: string }
}

/** One push request as the receiver understood it. */
export interface ReceivedPush {
  readonly subscription: string
  readonly headers: IncomingHttpHeaders
  /** The payload decrypted with the subscription's private key (JSON-parsed). */
  // biome-ignore lint/suspicious/noExplicitAny: tests read whatever the relay sent
  readonly payload: any
  /** The VAPID token's claims, verified with the key it names. */
  readonly vapid: { readonly aud: string; readonly sub: string; readonly exp: number; readonly k: string }
  /** The status answered. */
  readonly status: number
}

/**
 * A stand-in for a Web Push service on 127.0.0.1: each subscription it makes
 * has its own endpoint and its own keys (P-256 pair + auth secret, made here,
 * as a browser would); every request is checked (VAPID token signed by the
 * key it names, for this origin, unexpired) and its aes128gcm payload
 * decrypted with the subscription's private key. A request it cannot check or
 * decrypt is answered 400 and recorded in `rejected`.
 */
export async function startPushReceiver() {
  const subscriptions = new Map<
    string,
    { ecdh: ReturnType<typeof createECDH>; auth: string; answers: number[] }
  >()
  const received: ReceivedPush[] = []
  const rejected: { subscription: string; reason: string }[] = []
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      void (async () => {
        const id = (req.url ?? "").replace(/^\/push\//, "")
        const sub = subscriptions.get(id)
        if (!sub) {
          res.statusCode = 404
          return res.end()
        }
        try {
          const auth = /^vapid t=([^,\s]+),\s*k=([A-Za-z0-9_-]+)$/.exec(String(req.headers.authorization))
          if (!auth) throw new Error(`no VAPID authorization: ${req.headers.authorization}`)
          const [, token, k] = auth as unknown as [string, string, string]
          const point = Buffer.from(k, "base64url")
          const key = await importJWK(
            {
              kty: "EC",
              crv: "P-256",
              x: point.subarray(1, 33).toString("base64url"),
              y: point.subarray(33, 65).toString("base64url"),
            },
            "ES256",
          )
          const { payload: claims } = await jwtVerify(token, key, { audience: origin() })
          if (req.headers["content-encoding"] !== "aes128gcm")
            throw new Error(`content-encoding ${req.headers["content-encoding"]}`)
          const plain = ece.decrypt(Buffer.concat(chunks), {
            version: "aes128gcm",
            privateKey: sub.ecdh,
            authSecret: sub.auth,
          })
          const status = sub.answers.length > 1 ? sub.answers.shift()! : (sub.answers[0] ?? 201)
          received.push({
            subscription: id,
            headers: req.headers,
            payload: JSON.parse(plain.toString("utf8")),
            vapid: { ...(claims as { aud: string; sub: string; exp: number }), k },
            status,
          })
          res.statusCode = status
          res.end()
        } catch (error) {
          rejected.push({ subscription: id, reason: (error as Error).message })
          res.statusCode = 400
          res.end()
        }
      })()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const origin = () => `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return {
    received,
    rejected,
    /**
     * A new subscription, as a browser would make it. `answers`: the statuses to
     * answer in turn (the last one repeats); default 201.
     */
    subscribe(name: string, answers: number[] = [201]): TestSubscription {
      const ecdh = createECDH("prime256v1")
      ecdh.generateKeys()
      const auth = randomBytes(16).toString("base64url")
      subscriptions.set(name, { ecdh, auth, answers: [...answers] })
      return {
        endpoint: `${origin()}/push/${name}`,
        keys: { p256dh: ecdh.getPublicKey().toString("base64url"), auth },
      }
    },
    /** Changes what a subscription answers from now on. */
    answer(name: string, answers: number[]): void {
      subscriptions.get(name)!.answers = [...answers]
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  }
}
