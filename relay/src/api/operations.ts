import { createHash } from "node:crypto"
import {
  addParticipants,
  allMarkers,
  assertAllowed,
  type ConversationChange,
  type ConversationId,
  canChangeRole,
  canCreateWithId,
  canDeleteMessage,
  canRemoveParticipant,
  canUnpinMessage,
  canWriteConversation,
  changeRole,
  createConversation,
  type DeletedMessageRecord,
  DIRECT_PREFIX,
  deleteConversation,
  deleteMessage,
  directConversationId,
  ErrorCode,
  editMessage,
  getConversation,
  getMessage,
  isDeletedRecord,
  isReactionEmoji,
  lastMessage,
  lastSequence,
  listParticipants,
  listProfiles,
  type MessageId,
  type MessageRecord,
  type MessageView,
  markDelivered,
  markersOf,
  markRead,
  messageIndex,
  newConversationId,
  ParleyError,
  pinnedMessages,
  type Role,
  Rule,
  react,
  removeParticipants,
  reopenConversation,
  roleOf,
  type SendMessageInput,
  sealedHistory,
  sealedThrough,
  sendMessage,
  typesOf,
  type UserId,
  unpinMessage,
  unreact,
  updateConversation,
} from "@parley/shared"
import type * as Y from "yjs"
import type { RunningCore, ServerWriteOptions } from "../extension.js"
import { SealedReads } from "../history/sealed-reads.js"
import { derivedInbox, inboxSummary } from "../inbox/summary.js"
import type { Principal } from "../principal.js"
import type { IdempotencyStore } from "./idempotency.js"
import { type FoundSealed, type MessagePage, type MessagePageQuery, MessagePages } from "./message-pages.js"

/** Who a request acts as: the principal events name, and the participant the document rules check. */
export interface Actor {
  readonly principal: Principal
  readonly user: UserId
}

/** A conversation as `GET /v1/conversations/{id}` shows it. */
export function conversationView(doc: Y.Doc) {
  const info = getConversation(doc)
  if (!info) return undefined
  const last = lastMessage(doc)
  return {
    id: info.id,
    kind: info.kind,
    title: info.title,
    metadata: info.metadata,
    createdBy: info.createdBy,
    createdAt: info.createdAt,
    ...(info.deletedAt !== undefined ? { deletedAt: info.deletedAt } : {}),
    ...(info.deletedBy !== undefined ? { deletedBy: info.deletedBy } : {}),
    ...(info.reopenedAt !== undefined ? { reopenedAt: info.reopenedAt, reopenedBy: info.reopenedBy } : {}),
    ...(info.fleetingSeconds !== undefined ? { fleetingSeconds: info.fleetingSeconds } : {}),
    participants: listParticipants(doc),
    markers: allMarkers(doc),
    profiles: listProfiles(doc),
    ...(last ? { lastMessage: last } : {}),
    lastSequence: lastSequence(doc),
  }
}

/** A conversation view. */
export type ConversationView = NonNullable<ReturnType<typeof conversationView>>

const notFound = (id: string) => new ParleyError(ErrorCode.NOT_FOUND, `no conversation ${JSON.stringify(id)}`)

/**
 * A message id derived from the API key and an `Idempotency-Key`: a key names
 * one message per conversation, whose idempotency record (see
 * {@link IdempotencyStore}) is kept under this id.
 */
export function idempotentMessageId(keyId: string, idempotencyKey: string): MessageId {
  const digest = createHash("sha256").update(`${keyId}\u0000${idempotencyKey}`).digest("base64url")
  return `ik_${digest.slice(0, 32)}` as MessageId
}

/**
 * What a write tells of the message or participant it names. `precise`, to a key that may read it
 * (`messages:read`, `conversations:read`), is the shared operations' own refusals: no such message,
 * another's, not pinned, not a participant. `blind`, to a key without that read scope, is one NOT_FOUND
 * for every target the actor may not act on, after the checks of the actor alone (a participant, the
 * conversation not deleted, a manager where the write needs one), each with its own error: so the
 * answer is the same whether the target exists, whoever wrote it and whatever its state, and a write
 * scope reads nothing (a refused write's 403 or 422 told a key that may only post who wrote a guessed
 * message id, or whether it is pinned; an outside tester's finding). What stays is what a write's own
 * success needs: that there is a target the actor may act on (see relay/API.md, "Keys and scopes").
 */
export type TargetRefusals = "precise" | "blind"

/**
 * The one refusal of a blind write (see {@link TargetRefusals}): NOT_FOUND, as a message the relay
 * does not hold yet is refused with, so that the update path still reads the sealed segment that
 * holds a message named and tries again.
 */
const noTarget = (what: string) => new ParleyError(ErrorCode.NOT_FOUND, what)

/** Rules whose refusal depends on the target of a write rather than on the actor alone. */
const TARGET_RULES: ReadonlySet<string> = new Set([
  Rule.authorOnly,
  Rule.authorOrAdmin,
  Rule.unpinAuthorOrAdmin,
  Rule.ownerOnly,
])

/**
 * Runs `write`, the part of a blind write that looks at its target, turning each refusal that
 * depends on the target (none there, another's, an owner; and errors of code `also`, such as a
 * message that is not pinned) into `refusal`. Whatever depends on the actor alone is checked before
 * it, and keeps its own error.
 */
function blindly<T>(refusal: () => ParleyError, write: () => T, also?: ErrorCode): T {
  try {
    return write()
  } catch (error) {
    if (
      error instanceof ParleyError &&
      (error.code === ErrorCode.NOT_FOUND ||
        error.code === also ||
        (error.code === ErrorCode.FORBIDDEN && error.rule !== undefined && TARGET_RULES.has(error.rule)))
    )
      throw refusal()
    throw error
  }
}

/**
 * Refuses any write to a deleted conversation (rule `conversation-deleted`), as the shared operations
 * do once they found their target: a blind write checks it first, so it does not depend on the target.
 */
function assertWritable(doc: Y.Doc): void {
  assertAllowed(canWriteConversation(getConversation(doc)?.deletedAt !== undefined))
}

/** A send, as the API received it. */
export interface SendRequest extends SendMessageInput {
  readonly id: MessageId
  /** Whether the id was the client's (`id` or `Idempotency-Key`): a retry may follow, so it is recorded. */
  readonly idempotent: boolean
}

/** A send's answer: the message, and whether this request sent it (201) or found it sent (200). */
export interface SendResult {
  readonly message: MessageView
  readonly created: boolean
}

const reused = () =>
  new ParleyError(
    ErrorCode.CONFLICT,
    "this Idempotency-Key (or message id) was used for a different message: another body, author or field",
  )

/** True when the stored `record` is what `request` by `author` would have written. */
function sameSend(record: MessageRecord, author: UserId, request: SendRequest): boolean {
  const same = (a: unknown, b: unknown) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null)
  const emptyToUndefined = <T>(v: T | undefined, empty: (v: T) => boolean) =>
    v === undefined || empty(v) ? undefined : v
  return (
    record.author === author &&
    record.body === request.body &&
    (record.type ?? "text") === (request.type ?? "text") &&
    (record.priority ?? "normal") === (request.priority ?? "normal") &&
    record.replyTo === request.replyTo &&
    same(
      emptyToUndefined(record.metadata, (m) => Object.keys(m).length === 0),
      emptyToUndefined(request.metadata, (m) => Object.keys(m).length === 0),
    ) &&
    same(
      emptyToUndefined(record.attachments, (a) => a.length === 0),
      emptyToUndefined(request.attachments, (a) => a.length === 0),
    )
  )
}

/**
 * Whether a message found under the request's id is what `request` by
 * `author` would have written: compared field by field while its content is
 * there, by author once deleted (its content is gone).
 */
function sameAsFound(
  found: MessageRecord | DeletedMessageRecord,
  author: UserId,
  request: SendRequest,
): boolean {
  return isDeletedRecord(found) ? found.author === author : sameSend(found, author, request)
}

/**
 * The HTTP API's operations over the running core: every write is one
 * `core.write` (the one update path, as hooks use) running the shared document
 * operations as the actor's participant, so the same rules decide as for a
 * client's update; every read is `core.read`.
 */
export class ApiOperations {
  private readonly pages: MessagePages

  /** Idempotent sends are recorded in `records` (the backend's), `now` dates them. */
  constructor(
    private readonly core: RunningCore,
    private readonly records: IdempotencyStore,
    private readonly now: () => number = Date.now,
  ) {
    this.pages = new MessagePages(core)
  }

  /** Runs `change` through the update path; a document's refusal of a well-formed request is a 422. */
  private async write<T>(
    name: string,
    actor: Actor,
    change: (doc: Y.Doc) => T,
    options?: ServerWriteOptions,
  ): Promise<T> {
    let result: T | undefined
    try {
      await this.core.write(
        name,
        actor.principal,
        (doc) => {
          result = change(doc)
        },
        options,
      )
    } catch (error) {
      if (error instanceof ParleyError && error.code === ErrorCode.INVALID_ARGUMENT)
        throw new ParleyError(ErrorCode.INVALID_UPDATE, error.message, { cause: error })
      throw error
    }
    return result as T
  }

  /**
   * Refuses `user` unless a participant, as the relay refuses a non-participant's write; first thing
   * of every write, so that a non-participant gets this one answer whatever the conversation's state:
   * one that does not exist (no participants), is empty, deleted, or holds the messages the request
   * names or not, and a write that would change nothing (a role set to the one it is, a marker
   * already there), which no check of the relay sees.
   */
  private static assertParticipant(doc: Y.Doc, user: UserId): void {
    if (!listParticipants(doc).some((p) => p.user === user))
      throw new ParleyError(
        ErrorCode.FORBIDDEN,
        "only participants may change a conversation (the actor is not one of this one, or it does not exist)",
        { rule: Rule.participantOnly },
      )
  }

  private async view(id: string): Promise<ConversationView> {
    const view = await this.core.read(id, conversationView, { failFast: true })
    if (!view) throw notFound(id)
    return view
  }

  /** The conversation, or NOT_FOUND. */
  get(id: ConversationId): Promise<ConversationView> {
    return this.view(id)
  }

  /** Creates a group with the actor as owner and each participant with their role; CONFLICT when the id exists. */
  async createGroup(
    actor: Actor,
    input: {
      readonly id?: string | undefined
      readonly title?: string | undefined
      readonly metadata?: Record<string, unknown> | undefined
      readonly participants: readonly { readonly user: string; readonly role: Role }[]
    },
  ): Promise<ConversationView> {
    const id = (input.id ?? newConversationId()) as ConversationId
    // A `dm~` id is never a group's: refused before the document is read, the same whether the two users
    // talk or not (a 409 for an existing one told a key without read rights who talks to whom).
    if (id.startsWith(DIRECT_PREFIX)) {
      const decision = canCreateWithId(actor.user, {
        id,
        kind: "group",
        roles: new Map(),
        distinctKey: undefined,
      })
      if (!decision.allowed)
        throw new ParleyError(ErrorCode.FORBIDDEN, decision.reason, { rule: decision.rule })
    }
    await this.write(id, actor, (doc) => {
      if (getConversation(doc))
        throw new ParleyError(ErrorCode.CONFLICT, `conversation ${JSON.stringify(id)} already exists`)
      createConversation(doc, actor.user, {
        kind: "group",
        id,
        participants: input.participants.map((p) => p.user as UserId),
        ...(input.title !== undefined ? { title: input.title } : {}),
        ...(input.metadata !== undefined ? { metadata: input.metadata as never } : {}),
      })
      for (const { user, role } of input.participants)
        if (role !== "member" && user !== actor.user) changeRole(doc, actor.user, user as UserId, role)
    })
    return this.view(id)
  }

  /** The direct conversation of the actor and `other`, created when missing; `created` says which. */
  async direct(actor: Actor, other: UserId): Promise<{ conversation: ConversationView; created: boolean }> {
    if (other === actor.user)
      throw new ParleyError(ErrorCode.INVALID_UPDATE, "a direct conversation has two different users")
    const id = directConversationId([actor.user, other])
    const created = await this.write(id, actor, (doc) => {
      const existing = getConversation(doc)
      // Deleted: reopened, empty (its history was purged with the deletion), as the SDK does.
      if (existing?.deletedAt !== undefined) reopenConversation(doc, actor.user)
      else createConversation(doc, actor.user, { kind: "direct", participants: [other] })
      return existing === undefined
    })
    return { conversation: await this.view(id), created }
  }

  async update(
    id: ConversationId,
    actor: Actor,
    change: {
      readonly title?: string | undefined
      readonly metadata?: Record<string, unknown> | undefined
      readonly fleetingSeconds?: number | null | undefined
    },
  ): Promise<ConversationView> {
    await this.write(id, actor, (doc) => {
      ApiOperations.assertParticipant(doc, actor.user)
      // All or nothing: every part checked before any is written (a 422 used to keep the new title).
      updateConversation(doc, actor.user, change as ConversationChange)
    })
    return this.view(id)
  }

  async delete(id: ConversationId, actor: Actor): Promise<void> {
    await this.write(id, actor, (doc) => {
      ApiOperations.assertParticipant(doc, actor.user)
      deleteConversation(doc, actor.user)
    })
  }

  addParticipants(id: ConversationId, actor: Actor, users: readonly UserId[], role: Role): Promise<UserId[]> {
    return this.write(id, actor, (doc) => {
      ApiOperations.assertParticipant(doc, actor.user)
      return addParticipants(doc, actor.user, users, role)
    })
  }

  /**
   * Removes `user` (anyone may remove themselves: leaving). Blind (see {@link TargetRefusals}): the
   * actor's own rights first (a direct conversation keeps its two, only owners and admins remove
   * others), then one NOT_FOUND for a user who is not a participant or whom the actor may not remove
   * (an owner, for an admin): a plain member is refused `admin-only` whoever they name.
   */
  removeParticipant(
    id: ConversationId,
    actor: Actor,
    user: UserId,
    refusals: TargetRefusals = "precise",
  ): Promise<UserId[]> {
    return this.write(id, actor, (doc) => {
      ApiOperations.assertParticipant(doc, actor.user)
      if (refusals === "precise") return removeParticipants(doc, actor.user, [user])
      const info = getConversation(doc)!
      // Leaving stays possible once the conversation is deleted, as in removeParticipants.
      if (user !== actor.user) assertWritable(doc)
      // As if `user` were a member: what the actor may not do to anyone, refused as the rules name it.
      assertAllowed(
        canRemoveParticipant(
          actor.user,
          roleOf(doc, actor.user),
          info.kind,
          user,
          "member",
          info.deletedAt !== undefined,
        ),
      )
      const refusal = () => noTarget(`no participant ${JSON.stringify(user)} that ${actor.user} may remove`)
      // Removing nobody answered 200 with no users, removing an owner 403: both as one refusal.
      if (!typesOf(doc).participants.has(user)) throw refusal()
      return blindly(refusal, () => removeParticipants(doc, actor.user, [user]))
    })
  }

  /**
   * Changes `user`'s role. Blind (see {@link TargetRefusals}): the actor's own rights first (roles in
   * a direct conversation are fixed, only owners and admins change them, only owners make owners),
   * then one NOT_FOUND for a user who is not a participant or whose role the actor may not change
   * (an owner's, for an admin). A role already set stays a success, as a change is.
   */
  async changeRole(
    id: ConversationId,
    actor: Actor,
    user: UserId,
    role: Role,
    refusals: TargetRefusals = "precise",
  ): Promise<ConversationView> {
    await this.write(id, actor, (doc) => {
      ApiOperations.assertParticipant(doc, actor.user)
      if (refusals === "blind") {
        assertWritable(doc)
        // As if `user` were a member: refused for what the actor may not do to anyone.
        assertAllowed(canChangeRole(roleOf(doc, actor.user), getConversation(doc)!.kind, "member", role))
        const refusal = () =>
          noTarget(`no participant ${JSON.stringify(user)} whose role ${actor.user} may change`)
        return blindly(refusal, () => changeRole(doc, actor.user, user, role))
      }
      changeRole(doc, actor.user, user, role)
    })
    return this.view(id)
  }

  /**
   * Sends a message. With a client's id (`request.idempotent`: a message `id`
   * or an `Idempotency-Key`) the send is recorded, and a replay — racing the
   * first attempt, on another relay, after a restart, or once the message was
   * sealed into history — answers the message with `created: false`, or
   * CONFLICT when the id was used for a different message; it never writes a
   * second one. A first attempt costs a record and its completion; a replay
   * reads the message where its record says it is (one segment at most).
   * Segments searched for an earlier attempt are granted by `reads` (paid
   * for by the key).
   */
  async send(
    id: ConversationId,
    actor: Actor,
    request: SendRequest,
    reads: SealedReads = SealedReads.relay(),
  ): Promise<SendResult> {
    // A non-participant is refused before anything is read or recorded for the ids it names.
    const since = await this.core.read(
      id,
      (doc) => {
        ApiOperations.assertParticipant(doc, actor.user)
        return lastSequence(doc)
      },
      { failFast: true },
    )
    // A sealed message under this id is found (a replay, or CONFLICT), never written over a second time.
    await this.core.settleSealedIds?.(id, [request.id], actor.principal)
    if (!request.idempotent) {
      const outcome = await this.sendOnce(id, actor, request, Number.POSITIVE_INFINITY)
      return { message: await this.sent(id, request.id), created: outcome === "created" }
    }
    const record = await this.records.begin(id, request.id, since, this.now())
    // Sealed history is searched only for an attempt that began before this one (it may have stored the
    // message, then failed, crashed or is still running, here or on another relay): above its `since`.
    let searched = Number.POSITIVE_INFINITY
    if (record?.seq !== undefined) {
      const replay = await this.replay(id, actor, request, record.seq, reads)
      if (replay) return replay
      // Not at its number any more: gone with its deleted conversation's content. The write decides.
    } else if (record) {
      const search = await this.pages.findSealed(
        id,
        { after: record.since },
        (e) => e.record.id === request.id,
        reads,
      )
      if (search.found) return this.replayed(id, actor, request, search.found, false)
      searched = search.sealedThrough
    }
    let outcome = await this.sendOnce(id, actor, request, searched)
    while (outcome === "sealed") {
      // Sealed since the search: what was sealed meanwhile is searched too, before writing.
      const search = await this.pages.findSealed(
        id,
        { after: searched },
        (e) => e.record.id === request.id,
        reads,
      )
      if (search.found) return this.replayed(id, actor, request, search.found, false)
      searched = search.sealedThrough
      outcome = await this.sendOnce(id, actor, request, searched)
    }
    const message = await this.sent(id, request.id)
    if (message.seq !== undefined) await this.records.complete(id, request.id, message.seq)
    return { message, created: outcome === "created" }
  }

  /**
   * The write of {@link sendOnce}: forwarded in a cluster without holding it
   * to its copy's state, as the rules check again what it checks (see
   * `ServerWriteOptions.checkedByRules`). Where the rules find the id taken
   * after all (a retry of a send the copy did not hold yet), it is made again
   * held to that state, which finds the message.
   */
  private async sendChecked(
    id: ConversationId,
    actor: Actor,
    request: SendRequest,
    searched: number,
    absent: (through: number) => void,
  ): Promise<"created" | "found" | "sealed"> {
    const send = (doc: Y.Doc): "created" | "found" | "sealed" => {
      ApiOperations.assertParticipant(doc, actor.user)
      if (sealedThrough(doc) > searched) return "sealed"
      const index = messageIndex(doc)
      const found =
        index.records.get(request.id) ??
        index.deleted.get(request.id) ??
        sealedHistory(doc).entry(request.id)?.record
      if (found) {
        if (!sameAsFound(found, actor.user, request)) throw reused()
        return "found"
      }
      absent(lastSequence(doc))
      sendMessage(doc, actor.user, request)
      return "created"
    }
    try {
      return await this.write(id, actor, send, { checkedByRules: true })
    } catch (error) {
      const taken =
        error instanceof ParleyError &&
        (error.rule === Rule.immutable || error.rule === Rule.messageIdTaken) &&
        error.message.includes(request.id)
      if (!taken) throw error
      return this.write(id, actor, send)
    }
  }

  /**
   * One write of a send: `created` when it wrote the message; `found` when
   * the conversation has it already (live, or in a segment the relay holds),
   * or CONFLICT when that one differs; `sealed`, writing nothing, when the
   * conversation was sealed beyond `searched` (the caller searched its sealed
   * history that far). A write that fails after it saw the message absent
   * moves the record's `since` up to where it was seen absent, so that a
   * retry searches only what was sealed after that.
   */
  private async sendOnce(
    id: ConversationId,
    actor: Actor,
    request: SendRequest,
    searched: number,
  ): Promise<"created" | "found" | "sealed"> {
    let absentThrough: number | undefined
    try {
      return await this.sendChecked(id, actor, request, searched, (seen) => {
        absentThrough = seen
      })
    } catch (error) {
      // Not moved (storage failing too), the record keeps an older `since`: a retry searches more, as correctly.
      if (request.idempotent && absentThrough !== undefined)
        await this.records.advance(id, request.id, absentThrough).catch(() => {})
      // Written in memory, then storage failed: the change may be held and stored once storage is back
      // (see `writeOnServer`). A retry under the same id finds it instead of sending it twice.
      if (
        absentThrough !== undefined &&
        error instanceof ParleyError &&
        error.code === ErrorCode.STORAGE_UNAVAILABLE
      )
        throw new ParleyError(
          ErrorCode.STORAGE_UNAVAILABLE,
          `storage is failing: message ${JSON.stringify(request.id)} may be held and stored once storage answers again; to send it exactly once, retry with "id": ${JSON.stringify(request.id)}${request.idempotent ? " (or the same Idempotency-Key)" : ""}`,
          { cause: error },
        )
      throw error
    }
  }

  /**
   * The replay of a send whose message was numbered `seq`: the message read
   * there (live, or from the one segment that holds it), or undefined when
   * the conversation no longer has it (its content was purged).
   */
  private async replay(
    id: ConversationId,
    actor: Actor,
    request: SendRequest,
    seq: number,
    reads: SealedReads,
  ): Promise<SendResult | undefined> {
    const live = await this.core.read(
      id,
      (doc) => {
        // A sender removed since gets no view of the message as it is now (reactions, edits since).
        ApiOperations.assertParticipant(doc, actor.user)
        const index = messageIndex(doc)
        const found = index.records.get(request.id) ?? index.deleted.get(request.id)
        return found ? { found, view: getMessage(doc, request.id) } : "sealed"
      },
      { failFast: true },
    )
    if (live !== "sealed") {
      if (!sameAsFound(live.found, actor.user, request)) throw reused()
      return live.view && { message: live.view, created: false }
    }
    const search = await this.pages.findSealed(
      id,
      { after: seq - 1, through: seq },
      (e) => e.record.id === request.id,
      reads,
    )
    return search.found && this.replayed(id, actor, request, search.found, true)
  }

  /** The answer to a replay whose message was found sealed; records its number unless `numbered` already. */
  private async replayed(
    id: ConversationId,
    actor: Actor,
    request: SendRequest,
    found: FoundSealed,
    numbered: boolean,
  ): Promise<SendResult> {
    if (!sameAsFound(found.entry.record, actor.user, request)) throw reused()
    if (!numbered) await this.records.complete(id, request.id, found.entry.seq)
    return { message: found.view, created: false }
  }

  /** The message `messageId` just sent (or found sent). */
  private async sent(id: ConversationId, messageId: MessageId): Promise<MessageView> {
    const message = await this.core.read(id, (doc) => getMessage(doc, messageId), { failFast: true })
    if (!message) throw new ParleyError(ErrorCode.INTERNAL, "the message sent is not in the conversation")
    return message
  }

  /**
   * Edits a message (its author only). The message after it, or undefined when `blind` (see
   * {@link TargetRefusals}): then one NOT_FOUND for a message that is not there, deleted, or another's.
   */
  async edit(
    id: ConversationId,
    actor: Actor,
    messageId: MessageId,
    body: string,
    refusals: TargetRefusals = "precise",
  ): Promise<MessageView | undefined> {
    await this.write(id, actor, (doc) => {
      ApiOperations.assertParticipant(doc, actor.user)
      if (refusals === "precise") return editMessage(doc, actor.user, messageId, body)
      assertWritable(doc)
      blindly(
        () => noTarget(`no message ${JSON.stringify(messageId)} that ${actor.user} may edit`),
        () => editMessage(doc, actor.user, messageId, body),
      )
    })
    return refusals === "precise" ? this.message(id, messageId) : undefined
  }

  /**
   * Deletes a message (its author, owners and admins); deleting twice is a no-op. Blind (see
   * {@link TargetRefusals}): one NOT_FOUND for a message that is not there or that the actor may not
   * delete (another's, to a plain member), deleted or not.
   */
  async deleteMessage(
    id: ConversationId,
    actor: Actor,
    messageId: MessageId,
    refusals: TargetRefusals = "precise",
  ): Promise<void> {
    await this.write(id, actor, (doc) => {
      ApiOperations.assertParticipant(doc, actor.user)
      const message = getMessage(doc, messageId)
      if (refusals === "precise") {
        if (!message) throw new ParleyError(ErrorCode.NOT_FOUND, `no message ${messageId}`)
        return deleteMessage(doc, actor.user, messageId)
      }
      assertWritable(doc)
      // Another's message deleted already was a 204 to anyone, while it refused a member as long as it
      // was there: whether the actor may delete it is asked of the author whatever its state.
      if (!message || !canDeleteMessage(actor.user, roleOf(doc, actor.user), message.author).allowed)
        throw noTarget(`no message ${JSON.stringify(messageId)} that ${actor.user} may delete`)
      deleteMessage(doc, actor.user, messageId)
    })
  }

  /** The pinned (sticky, not unpinned) messages, oldest first; NOT_FOUND for an unknown conversation. */
  async pinned(id: ConversationId): Promise<{ messages: MessageView[]; lastSequence: number }> {
    const result = await this.core.read(
      id,
      (doc) =>
        getConversation(doc) ? { messages: pinnedMessages(doc), lastSequence: lastSequence(doc) } : undefined,
      { failFast: true },
    )
    if (!result) throw notFound(id)
    return result
  }

  /**
   * Unpins a sticky message (its author, owners and admins); unpinning twice is a no-op. Blind (see
   * {@link TargetRefusals}): one NOT_FOUND for a message that is not there, deleted, not sticky, or
   * not the actor's to unpin; unpinned already, a no-op only for one who may unpin it.
   */
  async unpin(
    id: ConversationId,
    actor: Actor,
    messageId: MessageId,
    refusals: TargetRefusals = "precise",
  ): Promise<void> {
    await this.write(id, actor, (doc) => {
      ApiOperations.assertParticipant(doc, actor.user)
      if (refusals === "precise") return unpinMessage(doc, actor.user, messageId)
      assertWritable(doc)
      const refusal = () =>
        noTarget(`no pinned message ${JSON.stringify(messageId)} that ${actor.user} may unpin`)
      if (typesOf(doc).unpinned.has(messageId)) {
        // A second unpin was a 204 to anyone: it told a member that a message was once pinned.
        const message = getMessage(doc, messageId)
        if (!message || !canUnpinMessage(actor.user, roleOf(doc, actor.user), message.author).allowed)
          throw refusal()
        return
      }
      // "The message is not pinned" (INVALID_ARGUMENT) named a message that is there.
      blindly(refusal, () => unpinMessage(doc, actor.user, messageId), ErrorCode.INVALID_ARGUMENT)
    })
  }

  /**
   * Adds (or removes) the actor's reaction: the message after it, or undefined when `blind` (see
   * {@link TargetRefusals}). Blind, a reaction is added only to a message that is there, so its
   * success tells that much (one NOT_FOUND otherwise, deleted or not there); removing one that is
   * not there, on any id, is the no-op it is for a message without it.
   */
  async react(
    id: ConversationId,
    actor: Actor,
    messageId: MessageId,
    emoji: string,
    add: boolean,
    refusals: TargetRefusals = "precise",
  ): Promise<MessageView | undefined> {
    if (refusals === "precise") {
      await this.write(id, actor, (doc) => {
        ApiOperations.assertParticipant(doc, actor.user)
        if (!getMessage(doc, messageId)) throw new ParleyError(ErrorCode.NOT_FOUND, `no message ${messageId}`)
        if (add) react(doc, actor.user, messageId, emoji)
        else unreact(doc, actor.user, messageId, emoji)
      })
      return this.message(id, messageId)
    }
    let unknown = false
    try {
      await this.write(id, actor, (doc) => {
        ApiOperations.assertParticipant(doc, actor.user)
        assertWritable(doc)
        // An emoji that is no reaction was refused only once the message was found.
        if (!isReactionEmoji(emoji)) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "invalid reaction")
        unknown = false
        const refusal = () => {
          unknown = true
          return noTarget(`no message ${JSON.stringify(messageId)} that ${actor.user} may react to`)
        }
        if (add) blindly(refusal, () => react(doc, actor.user, messageId, emoji))
        else blindly(refusal, () => unreact(doc, actor.user, messageId, emoji))
      })
    } catch (error) {
      // Thrown out of the write, not caught in it: the update path first reads the sealed segment
      // that may hold the message, and tries again.
      if (!add && unknown && error instanceof ParleyError && error.code === ErrorCode.NOT_FOUND)
        return undefined
      throw error
    }
    return undefined
  }

  async message(id: ConversationId, messageId: MessageId): Promise<MessageView> {
    const message = await this.core.read(id, (doc) => getMessage(doc, messageId), { failFast: true })
    if (!message) throw new ParleyError(ErrorCode.NOT_FOUND, `no message ${messageId}`)
    return message
  }

  /**
   * Moves the actor's read (or delivered) marker to `upTo` (default: the
   * latest message); reading implies delivery.
   */
  async mark(
    which: "read" | "delivered",
    id: ConversationId,
    actor: Actor,
    upTo: number | string | undefined,
    refusals: TargetRefusals = "precise",
  ): Promise<{ user: UserId; readUpTo: number; deliveredUpTo: number; moved: boolean }> {
    const moved = await this.write(id, actor, (doc) => {
      ApiOperations.assertParticipant(doc, actor.user)
      const target = (upTo ?? "latest") as number | MessageId | "latest"
      const mark = () =>
        which === "read" ? markRead(doc, actor.user, target) : markDelivered(doc, actor.user, target)
      if (refusals === "precise") return mark()
      // Refused only when the marker moved: whether it would have depended on where the message is.
      assertWritable(doc)
      return blindly(
        () => noTarget(`no message ${JSON.stringify(upTo)} that ${actor.user} may mark ${which} up to`),
        mark,
      )
    })
    const markers = await this.core.read(id, (doc) => markersOf(doc, actor.user), { failFast: true })
    return { user: actor.user, readUpTo: markers.read, deliveredUpTo: markers.delivered, moved }
  }

  /**
   * A page of the conversation's messages by sequence number, through its
   * sealed history as well as its live document (see {@link MessagePages}):
   * after `after` (the first `limit`), else before `before` (the last
   * `limit`), else the latest `limit`; only those of `type` when given. In
   * sequence order, with the cursor of the next page when there is one.
   * Bounded in the sealed segments it looks at by `reads` (see
   * {@link MessagePages.list}).
   */
  messages(id: ConversationId, query: MessagePageQuery, reads?: SealedReads): Promise<MessagePage> {
    return this.pages.list(id, query, reads)
  }

  /**
   * A page of `user`'s conversations, newest activity first, with unread
   * counts: derived from the conversations (the relay keeps inboxes current
   * only for connected users), so exact at any time.
   */
  async inbox(user: UserId, offset: number, limit: number) {
    const items = await derivedInbox(this.core, user, { failFast: true })
    return {
      conversations: items.slice(offset, offset + limit),
      total: items.length,
      ...(offset + limit < items.length ? { nextOffset: offset + limit } : {}),
    }
  }

  /** `user`'s unread messages: in all and per conversation (derived, like {@link inbox}). */
  async unread(user: UserId) {
    const summary = await inboxSummary(this.core, user, { failFast: true })
    return { total: summary.totalUnread, conversations: summary.unread }
  }
}
