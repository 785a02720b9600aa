import { type Decision, MetaKey, Rule, sequenceWriterIds, typesOf } from "@parley/shared"
import type * as Y from "yjs"
import type { LoadedDocument } from "../extension.js"
import type { ClientIdOwners, PolicyInput, UpdatePolicy } from "../policy.js"
import { checkUpdate } from "./check-update.js"
import { type ClientBinding, type ClientBindingStore, ClientBindings, RELAY_KEY } from "./client-bindings.js"

/**
 * The full per-update authorization as the relay's {@link UpdatePolicy}: every
 * update is judged by {@link checkUpdate} against the document rules, and the
 * client ids it writes under are bound to its sender (persisted in `store`
 * before the decision is returned, so before the update is stored).
 *
 * Bindings are loaded once per loaded document (keyed by the `Y.Doc`, so they
 * go when the document is unloaded). The relay's own writes (sequence numbers,
 * server-side changes) do not pass through a policy; the client id the relay's
 * document writes under, both ids its sequence writer alternates between
 * (shared `sequenceWriterIds`) and the id of the document's epoch (`meta.epoch`)
 * are bound to the relay at each check (in memory; stored before the relay first writes under
 * them), or, for the epoch's, before anyone else may.
 *
 * The same bindings are the owners awareness consults ({@link clientIdOwners}):
 * an id announced in awareness is bound to its user like an id written under,
 * so that no one else can write under it afterwards.
 *
 * Loading a document binds the relay's ids too, in memory only: that is what
 * keeps them from being claimed while the document stays loaded. They are
 * stored before the next append ({@link beforeAppend}: a device's change or
 * one the relay makes itself), so before anything is stored under them; a
 * load that writes nothing, or whose updates are all refused, stores nothing. (Each load
 * makes new ids: storing them at every load added two rows per load for good,
 * for readers, inbox refreshes and refused connects alike.) Reading a stored
 * conversation thus needs no write, and works while storage refuses writes.
 */
export class AuthorizationPolicy implements UpdatePolicy {
  readonly name = "policy"
  private readonly loaded = new WeakMap<Y.Doc, Promise<ClientBindings>>()
  /** Ids bound in memory only (the relay's at a load, see the class comment; anyone's whose storing failed): stored before the next append. */
  private readonly unstored = new WeakMap<Y.Doc, ClientBinding[]>()

  /** `close` releases the bindings' database when the relay stops. */
  constructor(
    private readonly store: ClientBindingStore,
    private readonly close?: () => Promise<void>,
  ) {}

  async checkUpdate(input: PolicyInput): Promise<Decision> {
    const { name, doc, update, principal } = input
    // Inboxes are checked by the membership policy that always runs first (checkInboxUpdate).
    if (name.kind === "inbox") return { allowed: true }
    const key = name.id
    const bindings = await this.bindingsOf(key, doc)
    // In memory: stored before the append (beforeAppend). A refused update stores nothing: storing them
    // here wrote two rows for good per made-up id a stranger sent a refused update to.
    this.bindRelayIdsInMemory(doc, bindings)
    const result = checkUpdate({
      doc,
      update,
      principal,
      bindings,
      conversation: name.id,
      ...(input.seen ? { seen: input.seen } : {}),
    })
    if (!result.allowed) return { allowed: false, rule: result.rule, reason: result.reason }
    if (result.newBindings && result.newBindings.length > 0) {
      bindings.bind(result.newBindings)
      let owners: Map<number, string>
      try {
        owners = await this.store.bind(key, result.newBindings)
      } catch (error) {
        // Storage failing: the update is refused (retryably), but memory holds the ids as the sender's,
        // so the next check finds nothing new to bind. They are stored before the next append.
        this.keepUnstored(doc, result.newBindings)
        throw error
      }
      bindings.record(owners)
      // Memory took these ids for free; storage, which every relay of a cluster shares, says who
      // bound each first. Another's id is refused as the check refuses one it knew of.
      const taken = result.newBindings.find(([clientId, owner]) => owners.get(clientId) !== owner)
      if (taken)
        return {
          allowed: false,
          rule: Rule.clientIdOwner,
          reason: `client id ${taken[0]} belongs to someone else`,
        }
    }
    return { allowed: true }
  }

  /** Conversations' owners are the bindings themselves; inboxes have none (their awareness stays in memory). */
  async clientIdOwners({ name, doc }: LoadedDocument): Promise<ClientIdOwners | undefined> {
    if (name.kind === "inbox") return undefined
    const key = name.id
    const bindings = await this.bindingsOf(key, doc)
    // Before any awareness frame: the relay's own ids are never anyone's to claim. In memory only
    // (stored before anything is stored under them, see the class).
    this.bindRelayIdsInMemory(doc, bindings)
    return {
      owner: (clientId) => bindings.get(clientId),
      claim: async (clientId, principal) => {
        // The relay's ids (bound in memory at the load, maybe not stored yet) are nobody's to claim.
        if (bindings.get(clientId) === RELAY_KEY) return RELAY_KEY
        const entries: [number, string][] = [[clientId, principal]]
        // A deleted group is never written to again: the claim need only hold against other claims while
        // the document is loaded, and a row stored now would outlive the purge that dropped the others.
        if (closedForGood(doc)) {
          bindings.bind(entries)
          return bindings.get(clientId) ?? principal
        }
        // Not bound in memory before storage answers: an update under the id checked meanwhile would
        // pass as the claimant's, though another relay's user may own it. Storage decides for both.
        let owners: Map<number, string>
        try {
          owners = await this.store.bind(key, entries)
        } catch (error) {
          // Storage failing: the claim holds in memory, and is stored before the next append.
          bindings.bind(entries)
          this.keepUnstored(doc, entries)
          throw error
        }
        bindings.record(owners)
        return owners.get(clientId) ?? principal
      },
    }
  }

  /**
   * A deleted group's purge: its bindings are dropped from storage, since nobody (the relay aside,
   * whose writes pass no policy) can write to it again, and an id nobody can write under needs no
   * owner. Memory keeps them while the document stays loaded (stricter than storage, never looser).
   *
   * A deleted direct conversation keeps its bindings: either of its two users may reopen it, and
   * their devices write on under the client ids they had (the SDK reopens the replica it holds).
   * Dropped, the first of the pair to write under the other's id after a reload would own it, and
   * the other's next change under it, at a clock the relay then has, would be taken as known and
   * stored nowhere. Those rows were charged to their users' daily bytes when they were bound.
   */
  async conversationPurged({ name, doc }: LoadedDocument): Promise<void> {
    if (name.kind !== "conversation" || !closedForGood(doc)) return
    await this.store.drop(name.id)
  }

  /** Stores the ids bound in memory only (the relay's, and any whose storing failed), before anything is appended under them. */
  beforeAppend({ name, doc }: LoadedDocument): undefined | Promise<void> {
    if (name.kind === "inbox" || !this.unstored.has(doc)) return undefined
    return this.bindingsOf(name.id, doc).then((bindings) => this.bindRelayIds(name.id, doc, bindings))
  }

  async stop(): Promise<void> {
    await this.close?.()
  }

  /** Ids of `doc` bound in memory whose storing failed: stored with the relay's before the next append. */
  private keepUnstored(doc: Y.Doc, entries: readonly ClientBinding[]): void {
    this.unstored.set(doc, [...(this.unstored.get(doc) ?? []), ...entries])
  }

  /** Binds the relay's ids of `doc` not bound yet, in memory only: they join those to store. */
  private bindRelayIdsInMemory(doc: Y.Doc, bindings: ClientBindings): ClientBinding[] | undefined {
    const relayIds = [doc.clientID, ...sequenceWriterIds(doc)]
    // The id a fresh epoch wrote everything under (`meta.epoch`) is the relay's too: unbound, it was
    // anyone's to write under (and to be taken for).
    const epoch = typesOf(doc).meta.get(MetaKey.epoch)
    if (typeof epoch === "number") {
      relayIds.push(epoch)
      // A relay before this rule stored the first writer under it as its owner: the relay's all the
      // same (in memory: the stored row is never consulted again while the document is loaded).
      const owner = bindings.get(epoch)
      if (owner !== undefined && owner !== RELAY_KEY) bindings.record(new Map([[epoch, RELAY_KEY]]))
    }
    const unbound = relayIds.filter((id, i) => bindings.get(id) === undefined && relayIds.indexOf(id) === i)
    const unstored = this.unstored.get(doc)
    // Every update's check comes here: nothing is allocated when nothing is to be bound.
    if (unbound.length === 0) return unstored
    const fresh = unbound.map((id): [number, string] => [id, RELAY_KEY])
    bindings.bind(fresh)
    const entries = unstored ? [...unstored, ...fresh] : fresh
    this.unstored.set(doc, entries)
    return entries
  }

  /**
   * Binds the relay's ids of `doc` not bound yet, and stores them with those bound in memory only;
   * a failure rejects, and they stay to be stored by the next call.
   */
  private async bindRelayIds(key: string, doc: Y.Doc, bindings: ClientBindings): Promise<void> {
    const entries = this.bindRelayIdsInMemory(doc, bindings)
    if (!entries) return
    await this.store.bind(key, entries)
    // Only what was stored: ids bound meanwhile (a later call) stay to be stored.
    if (this.unstored.get(doc) === entries) this.unstored.delete(doc)
  }

  private bindingsOf(key: string, doc: Y.Doc): Promise<ClientBindings> {
    let bindings = this.loaded.get(doc)
    if (!bindings) {
      bindings = this.store.load(key).then((entries) => new ClientBindings(entries))
      this.loaded.set(doc, bindings)
      // A failed load is retried on the next update rather than cached.
      bindings.catch(() => this.loaded.delete(doc))
    }
    return bindings
  }
}

/** True for a deleted group: nobody but the relay can write to it again (a direct conversation may be reopened). */
function closedForGood(doc: Y.Doc): boolean {
  const meta = typesOf(doc).meta
  return typeof meta.get(MetaKey.deletedAt) === "number" && meta.get(MetaKey.kind) !== "direct"
}
