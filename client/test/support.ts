import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import type { MessageId } from "@parley/shared"
import { expect, vi } from "vitest"
import WebSocket from "ws"
import { relayEntry, TEST_RELAY_ENV } from "../../relay/test/helpers/relay-process.js"
import {
  type ChatClient,
  type ChatClientOptions,
  type ChatMessage,
  type Conversation,
  createChatClient,
} from "../src/index.js"

const root = fileURLToPath(new URL("../..", import.meta.url))

/** A relay running in its own process. */
export interface RelayProcess {
  readonly port: number
  readonly url: string
  readonly httpUrl: string
  readonly dataDir: string
  /** SIGTERM, then wait for the process to exit. */
  stop(): Promise<void>
}

/**
 * Starts a relay process (`relay/bin/parley-relay.js`, or the relay compiled for the test run: see
 * `relayEntry`), without its start-up warm-up, and waits for its "listening" log line.
 * `--port 0` unless a port is given (a restart reuses the first port).
 */
export async function startRelay(
  options: { port?: number; dataDir?: string; args?: readonly string[] } = {},
): Promise<RelayProcess> {
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "parley-client-test-"))
  const flags = options.args ?? ["--dev"]
  const args = [
    relayEntry(flags),
    "--port",
    String(options.port ?? 0),
    "--storage",
    "sqlite",
    "--data-dir",
    dataDir,
    ...flags,
  ]
  // Without the start-up warm-up, as every test's relay (see TEST_RELAY_ENV).
  const child = spawn(process.execPath, args, {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...TEST_RELAY_ENV },
  })
  let stderr = ""
  child.stderr.on("data", (chunk) => {
    stderr += chunk
  })
  const port = await new Promise<number>((resolve, reject) => {
    let buffered = ""
    child.stdout.on("data", (chunk: Buffer) => {
      buffered += chunk.toString()
      for (const line of buffered.split("\n")) {
        const match = /"msg":"listening"/.test(line) ? /"port":(\d+)/.exec(line) : null
        if (match) resolve(Number(match[1]))
      }
    })
    child.on("exit", (code) => reject(new Error(`relay exited (${code}) before listening: ${stderr}`)))
  })
  return {
    port,
    url: `ws://127.0.0.1:${port}`,
    httpUrl: `http://127.0.0.1:${port}`,
    dataDir,
    stop: () => stopProcess(child),
  }
}

function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 5_000)
    child.once("exit", () => {
      clearTimeout(kill)
      resolve()
    })
    child.kill("SIGTERM")
  })
}

/** A dev token from the relay's `/dev/token`. */
export async function devToken(relay: RelayProcess, user: string): Promise<string> {
  const response = await fetch(`${relay.httpUrl}/dev/token?user=${encodeURIComponent(user)}`)
  if (!response.ok) throw new Error(`dev token: HTTP ${response.status}`)
  return ((await response.json()) as { token: string }).token
}

/** Clients made by {@link connectClient}, destroyed by {@link destroyClients}. */
const made: ChatClient[] = []

/** A client of `user` on `relay`, with dev tokens, `ws` and quick reconnects. */
export async function connectClient(
  relay: RelayProcess,
  user: string,
  options: Partial<ChatClientOptions> = {},
): Promise<ChatClient> {
  const client = await createChatClient({
    url: relay.url,
    token: () => devToken(relay, user),
    user,
    storage: "memory",
    WebSocket: WebSocket as never,
    reconnect: { minDelay: 50, maxDelay: 400 },
    deliveredDelay: 100,
    ...options,
  })
  made.push(client)
  return client
}

/** Destroys every client made by {@link connectClient}. */
export async function destroyClients(): Promise<void> {
  await Promise.all(made.splice(0).map((client) => client.destroy()))
}

/** Polls `assertion` until it passes (or the test times out on its own). */
export const eventually = (assertion: () => void, timeout = 15_000) =>
  vi.waitFor(assertion, { timeout, interval: 20 })

/** The statuses of a message the relay stored: a recipient's device online may move it past "sent" at once. */
export const SAVED = ["sent", "delivered", "read"]

/** Sends `count` messages on `chat` (offline: they stay pending), each marked read: their ids in order. */
export function sendEachRead(chat: Conversation, count: number): MessageId[] {
  const sent: MessageId[] = []
  for (let i = 0; i < count; i++) {
    sent.push(chat.send(`offline ${i}`).id)
    chat.markRead()
  }
  return sent
}

/**
 * Every message of conversation `id` as `user` sees it on a new device once
 * `last` has arrived, the older ones paged back from the sealed history,
 * oldest first.
 */
export async function everyMessage(
  relay: RelayProcess,
  user: string,
  id: string,
  last: MessageId,
): Promise<ChatMessage[]> {
  const client = await connectClient(relay, user)
  const chat = await client.conversation(id).ready()
  await eventually(() => expect(chat.messages().at(-1)?.id).toBe(last), 60_000)
  while (chat.hasOlder) await chat.loadOlder(500)
  return [...chat.olderMessages(), ...chat.messages({ last: Number.MAX_SAFE_INTEGER })]
}
