import { type MessageId, newMessageId, sendMessage, type UserId } from "@parley/shared"
import * as Y from "yjs"
import { TestClient } from "../helpers/clients.js"

/**
 * A participant that keeps writing across relay deaths, as the SDK does: one
 * replica; when its connection closes it reconnects (to `next()`) with the
 * same replica, whose first sync re-sends whatever was not acknowledged.
 * Records which of its messages a "saved" acknowledged, and when.
 */
export class Writer {
  readonly doc = new Y.Doc()
  client: TestClient | undefined
  /** Message ids acknowledged as saved, with the time of the acknowledgement. */
  readonly acked = new Map<MessageId, number>()
  readonly sent: { id: MessageId; clock: number; at: number }[] = []
  reconnects = 0
  /** Every connection this writer opened, in order. */
  readonly clients: TestClient[] = []
  private stopped = false
  private seen = 0
  private readonly timer: NodeJS.Timeout

  constructor(
    readonly user: UserId,
    private readonly name: string,
    private readonly token: string,
    private readonly next: () => string,
  ) {
    this.timer = setInterval(() => this.scan(), 10)
  }

  connect(url = this.next()): TestClient {
    const client = new TestClient(url, this.name, this.token, { doc: this.doc })
    this.client = client
    this.clients.push(client)
    this.seen = 0
    void client.closed.then(() => {
      this.scan(client)
      if (this.stopped || this.client !== client) return
      this.reconnects++
      setTimeout(() => {
        if (!this.stopped && this.client === client) this.connect()
      }, 50)
    })
    return client
  }

  send(body: string): MessageId {
    const id = newMessageId()
    sendMessage(this.doc, this.user, { id, body })
    this.sent.push({ id, clock: Y.getState(this.doc.store, this.doc.clientID), at: Date.now() })
    return id
  }

  private scan(client = this.client): void {
    if (!client) return
    for (; this.seen < client.saves.length; this.seen++) {
      const reached = Y.decodeStateVector(client.saves[this.seen]!).get(this.doc.clientID) ?? 0
      for (const { id, clock } of this.sent)
        if (clock <= reached && !this.acked.has(id)) this.acked.set(id, Date.now())
    }
  }

  /**
   * Resolves once a connection of this writer finished its first sync, or
   * once it holds an acknowledgement of everything in the replica (`saved`),
   * following reconnects: a load balancer may close the first connection
   * (a relay marked down) before either happens, and the next one does it.
   */
  async ready(what: "synced" | "saved", timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const client = this.client
      if (!client) throw new Error(`${this.user}: not connected`)
      const left = deadline - Date.now()
      if (left <= 0)
        throw new Error(`${this.user}: not ${what} within ${timeoutMs} ms (${this.reconnects} reconnects)`)
      let timer: NodeJS.Timeout | undefined
      const outcome = await Promise.race([
        (what === "synced" ? client.synced() : client.allSaved()).then(() => "done" as const),
        client.closed.then(() => "closed" as const),
        new Promise<"late">((resolve) => {
          timer = setTimeout(() => resolve("late"), left)
        }),
      ])
      clearTimeout(timer)
      if (outcome === "done") return
      // Closed: the writer reconnects in a moment; wait for its next connection.
      while (this.client === client && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    }
  }

  /**
   * What the relay refused on any of this writer's connections: the typed
   * errors and the close codes other than the test's own (1000/1005). A
   * relay may answer a change with an error on the socket or by closing it.
   */
  refusals(): { errors: TestClient["errors"]; closes: number[] } {
    return {
      errors: this.clients.flatMap((c) => c.errors),
      closes: this.clients.flatMap((c) =>
        c.closeEvent && c.closeEvent.code >= 4000 ? [c.closeEvent.code] : [],
      ),
    }
  }

  /** Resolves once every message sent is acknowledged (reconnecting as needed). */
  async settled(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (this.acked.size < this.sent.length) {
      if (Date.now() > deadline)
        throw new Error(`${this.user}: ${this.sent.length - this.acked.size} messages never acknowledged`)
      this.scan()
      await new Promise((r) => setTimeout(r, 20))
    }
  }

  stop(): void {
    this.stopped = true
    clearInterval(this.timer)
    this.client?.close()
  }
}
