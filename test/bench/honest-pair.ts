/**
 * The honest pair the attack benchmarks time (`bench:costly-frames`,
 * `bench:many-users`): carol and dave, stock y-websocket providers in one
 * conversation, a message every 50 ms in turn, each timed from `sendMessage`
 * to the other replica having it.
 */
import { docUntil, stockProvider, synced } from "../../relay/test/helpers/clients.js"
import type { RelayProcess } from "../../relay/test/helpers/relay-process.js"
import {
  createConversation,
  listMessages,
  newConversationId,
  sendMessage,
  type UserId,
} from "../../shared/src/index.js"
import { distribution, sleep } from "./stats.js"

const carol = "carol" as UserId
const dave = "dave" as UserId

/** A running pair: take its latencies so far with {@link HonestPair.take}. */
export interface HonestPair {
  /** The latencies (ms) measured since the last call. */
  take(): number[]
  /** Stops the pair (after its message in flight, or 5 s) and closes its providers. */
  stop(): Promise<void>
}

/** Connects the pair to `relay`, creates their conversation and starts chatting. */
export async function startHonestPair(relay: RelayProcess): Promise<HonestPair> {
  const id = newConversationId()
  const c = stockProvider(relay.url, id, await relay.token(carol))
  const d = stockProvider(relay.url, id, await relay.token(dave))
  await Promise.all([synced(c), synced(d)])
  createConversation(c.doc, carol, { kind: "group", id, participants: [dave] })
  await docUntil(d.doc, () => d.doc.getMap("meta").has("createdAt"))
  const latencies: number[] = []
  let running = true
  const loop = (async () => {
    for (let i = 0; running; i++) {
      const [from, to, user] = i % 2 === 0 ? [c, d, carol] : [d, c, dave]
      const body = `honest ${i}`
      const sent = performance.now()
      sendMessage(from.doc, user, { body })
      await docUntil(to.doc, () => listMessages(to.doc, { last: 3 }).some((m) => m.body === body))
      latencies.push(performance.now() - sent)
      await sleep(50)
    }
  })()
  return {
    take: () => latencies.splice(0),
    stop: async () => {
      running = false
      await Promise.race([loop, sleep(5_000)])
      c.destroy()
      d.destroy()
    },
  }
}

const fmt = (ms: number) => ms.toFixed(1).padStart(7)

/** Prints the header of {@link printLatencies}' rows, its label column `width` wide. */
export function printLatencyHeader(width: number): void {
  console.log(
    `${"honest pair".padEnd(width)} ${"n".padStart(5)} ${"p50".padStart(7)} ${"p99".padStart(7)} ${"max".padStart(7)}  (ms)`,
  )
}

/** Prints one row: `label`, the count, p50, p99 and max of `samples`, and `extra`. */
export function printLatencies(width: number, label: string, samples: number[], extra = ""): void {
  const s = distribution(samples)
  console.log(
    `${label.padEnd(width)} ${String(s.count).padStart(5)} ${fmt(s.p50)} ${fmt(s.p99)} ${fmt(s.max)}  ${extra}`,
  )
}
