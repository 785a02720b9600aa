import type { Logger } from "../log.js"
import { InFlightLimit } from "../outbound.js"
import { RecentPurges } from "../purge/recent-purges.js"
import type { RedactionScope } from "../purge/redact.js"
import { respectRetryAfter } from "../retry-after.js"
import type { PushNotification } from "./notification.js"
import type { PushSubscriptionRecord, PushSubscriptionStore } from "./store.js"

/** One notification for one device: encrypted and sent at each try. */
export interface DeviceJob {
  readonly conversation: string
  readonly payload: string
  readonly notification: PushNotification
  /**
   * Log position of the change that sent the message, when known: a whole conversation's purge
   * drops only notifications of changes up to its own (not those of a reopened direct conversation).
   */
  readonly position?: number
  /** Its TTL's end (ms since epoch): the push service would have dropped it by then, so it is not sent later. */
  readonly expiresAt: number
}

/**
 * What one try to send a job to a device came to: `sent` (or refused for good: nothing to retry),
 * `gone` (the subscription was dropped: nothing more goes to it), or the failure to retry.
 */
export type SendOutcome = "sent" | "gone" | Error

/** Options of {@link DeviceSends}. */
export interface DeviceSendsOptions {
  /** One try; `signal` aborts at the per-device timeout (or when the delivery attempt ends). */
  send(sub: PushSubscriptionRecord, job: DeviceJob, signal: AbortSignal): Promise<SendOutcome>
  /** Read again before a device's retry: it may have been removed or re-registered meanwhile. */
  readonly store: PushSubscriptionStore
  /** Delay before a set-aside device's next try after `failures` failed ones; undefined to drop what it waits for. */
  retryDelay(failures: number): number | undefined
  /** Time allowed to one try, name resolution included. */
  readonly timeoutMs: number
  readonly log: Logger
  readonly now?: () => number
  /** Most payload bytes all set-aside devices wait with together (default {@link MAX_WAITING_BYTES}). */
  readonly maxWaitingBytes?: number
}

/** A device that failed is served in the background this long after its last failure, even once it answers again. */
export const SET_ASIDE_MS = 600_000
/** Longest a push service's `Retry-After` holds a device's next try back. */
export const MAX_PUSH_RETRY_AFTER_MS = 3_600_000
/** Most notifications a set-aside device waits with (one per conversation); beyond, the oldest is dropped. */
export const MAX_WAITING_PER_DEVICE = 64
/** Most payload bytes all set-aside devices wait with together; beyond, new ones are dropped. */
export const MAX_WAITING_BYTES = 16 * 1024 * 1024
/**
 * Most tries of set-aside devices in flight at once: their retries never take more than this of
 * the relay's requests to user-chosen addresses (`USER_CHOSEN_REQUESTS_IN_FLIGHT`), so that fresh
 * notifications to devices in good standing always find one.
 */
export const MAX_ASIDE_TRIES_IN_FLIGHT = 16
/**
 * Most first tries of one user's devices in flight at once; the others wait for them. A user whose
 * devices hang sets them all aside at the first failure: twenty devices on hanging endpoints took
 * twenty of the relay's outbound slots for a timeout each (an outside probe: a few such accounts
 * delayed everyone's notifications by 5–10 s).
 */
export const MAX_FRESH_TRIES_PER_USER = 4

interface Device {
  sub: PushSubscriptionRecord
  /** One per conversation, oldest first: a newer one replaces it, as the request's `Topic` does on the push service. */
  readonly waiting: Map<string, DeviceJob>
  failures: number
  /** Until then, set aside even when nothing waits. */
  until: number
  sending: boolean
  timer?: NodeJS.Timeout
}

const keyOf = (sub: PushSubscriptionRecord) => `${sub.user}\u0000${sub.device}`

/**
 * Sends push notifications device by device, so that a device whose push service fails or hangs
 * (its endpoint is any member's choice) delays nobody else's notifications: a device in good
 * standing is sent to at once and its answer awaited (at most `timeoutMs`), so that the event is
 * delivered at least once to it; a device that failed is *set aside*: what it is owed waits in
 * memory, the newest per conversation, and is retried on the device's own schedule, never awaited
 * by an event's delivery, until its retries are spent or its TTL ends (then it is dropped, as the
 * push service would). A set-aside device stays so for {@link SET_ASIDE_MS} after its last failure,
 * so that one answering its retries but hanging on fresh notifications costs a conversation at most
 * one timeout per 10 minutes. So is every other device of the same user (device ids are the user's
 * to make: fresh ones on a hanging endpoint would each cost a timeout). What a set-aside device
 * waits for is lost with the process, and
 * bounded: {@link MAX_WAITING_PER_DEVICE} per device, {@link MAX_WAITING_BYTES} for all of them.
 */
export class DeviceSends {
  private readonly devices = new Map<string, Device>()
  /** Users with a device that failed, and until when all their devices are served in the background. */
  private readonly usersAside = new Map<string, number>()
  private readonly now: () => number
  /** Payload bytes of every device's waiting jobs, against {@link MAX_WAITING_BYTES}. */
  private bytes = 0
  private dropped = 0
  /** Conversations (ids) and messages purged in the last minutes: never sent, nor kept to send later. */
  private readonly purges = new RecentPurges()
  /** Slots of set-aside devices' tries (see {@link MAX_ASIDE_TRIES_IN_FLIGHT}). */
  private readonly asideTries = new InFlightLimit(MAX_ASIDE_TRIES_IN_FLIGHT)
  /** Each user's slots of first tries, while any is in flight (see {@link MAX_FRESH_TRIES_PER_USER}). */
  private readonly freshTries = new Map<string, { limit: InFlightLimit; users: number }>()

  constructor(private readonly options: DeviceSendsOptions) {
    this.now = options.now ?? Date.now
  }

  /**
   * Sends `job` to `sub` now, or hands it to the device's own retries. Resolves once the push
   * service took it, refused it for good, or the device was set aside; rejects only when `signal`
   * (the delivery attempt's) aborted first.
   */
  async offer(sub: PushSubscriptionRecord, job: DeviceJob, signal: AbortSignal): Promise<void> {
    if (this.isPurged(job)) return
    const key = keyOf(sub)
    const aside = this.devices.get(key)
    if (aside) {
      this.wait(key, aside, job, sub)
      return
    }
    // A user with a device that failed lately: their other devices are served in the background too.
    // Set-aside is per device, and device ids are the user's to make: one registering a fresh device
    // on a hanging endpoint before each message cost the conversation a timeout per message.
    if (this.setAsideWithUser(key, sub, job)) return
    const outcome = await this.freshTry(sub, job, signal)
    if (outcome === undefined) {
      // Another device of the user failed while this one waited for its turn: served in the background.
      const other = this.devices.get(key)
      if (other) this.wait(key, other, job, sub)
      else if (!this.setAsideWithUser(key, sub, job)) await this.offer(sub, job, signal)
      return
    }
    if (!(outcome instanceof Error)) return
    if (signal.aborted) throw outcome
    this.userFailed(sub.user)
    this.options.log.warn(
      { user: sub.user, device: sub.device, err: outcome },
      "push to a device failed: it is retried on its own schedule, and no other notification waits for it",
    )
    // Another conversation's notification may have set it aside meanwhile: join what it waits for.
    const other = this.devices.get(key)
    if (other) {
      this.wait(key, other, job, sub)
      return
    }
    const device: Device = { sub, waiting: new Map(), failures: 0, until: 0, sending: false }
    this.devices.set(key, device)
    this.put(device, job)
    this.failed(key, device, outcome)
  }

  /**
   * A purge removed content of `conversation` (all of it, or some messages): a notification of it
   * that a device waits with is dropped, and so is one offered over the next minutes (built from an
   * event before the purge reached it).
   */
  purged(conversation: string, scope: RedactionScope): void {
    this.purges.note(conversation, scope)
    for (const device of this.devices.values()) {
      const job = device.waiting.get(conversation)
      if (job && this.isPurged(job)) this.take(device, conversation, job)
    }
  }

  private isPurged(job: DeviceJob): boolean {
    return (
      this.purges.size > 0 && this.purges.covers(job.conversation, job.notification.messageId, job.position)
    )
  }

  /** Sets `sub`'s device aside with `job` if its user has a device that failed lately; true when it did. */
  private setAsideWithUser(key: string, sub: PushSubscriptionRecord, job: DeviceJob): boolean {
    const userAside = this.usersAside.get(sub.user)
    if (userAside === undefined || userAside <= this.now()) return false
    const device: Device = { sub, waiting: new Map(), failures: 0, until: userAside, sending: false }
    this.devices.set(key, device)
    this.wait(key, device, job, sub)
    return true
  }

  /**
   * A first try to a device in good standing, once one of its user's {@link MAX_FRESH_TRIES_PER_USER}
   * slots is free; undefined, untried, when the user's devices were set aside meanwhile.
   */
  private async freshTry(
    sub: PushSubscriptionRecord,
    job: DeviceJob,
    signal: AbortSignal,
  ): Promise<SendOutcome | undefined> {
    let slots = this.freshTries.get(sub.user)
    if (!slots) {
      slots = { limit: new InFlightLimit(MAX_FRESH_TRIES_PER_USER), users: 0 }
      this.freshTries.set(sub.user, slots)
    }
    slots.users++
    try {
      return await slots.limit.run(signal, async () => {
        const aside = this.usersAside.get(sub.user)
        if (aside !== undefined && aside > this.now()) return undefined
        return this.tryOnce(sub, job, signal)
      })
    } finally {
      if (--slots.users === 0) this.freshTries.delete(sub.user)
    }
  }

  /** Devices set aside (for metrics and tests). */
  setAside(): number {
    return this.devices.size
  }

  /** A device of `user` failed: their devices are served in the background for {@link SET_ASIDE_MS}. */
  private userFailed(user: string): void {
    const now = this.now()
    // Kept in the order of their last failure (deleted and set again), so the expired ones lead: the map
    // holds the users whose devices failed in the last 10 minutes, and pruning costs what it removes.
    for (const [other, until] of this.usersAside) {
      if (until > now) break
      this.usersAside.delete(other)
    }
    this.usersAside.delete(user)
    this.usersAside.set(user, now + SET_ASIDE_MS)
  }

  /** Bytes of payload all set-aside devices wait with. */
  waitingBytes(): number {
    return this.bytes
  }

  private wait(key: string, device: Device, job: DeviceJob, sub: PushSubscriptionRecord): void {
    device.sub = sub
    this.put(device, job)
    // Answering again (only set aside for a while): sent now, in the background. Failing: at its retry.
    if (!device.sending && device.failures === 0) this.arm(key, device, 0)
  }

  /**
   * Makes `job` the newest the device waits with for its conversation. Beyond
   * {@link MAX_WAITING_PER_DEVICE} the device's oldest is dropped; beyond {@link MAX_WAITING_BYTES}
   * for all devices together, `job` itself is (set-aside devices are ones whose push service
   * failed; what they would be sent is not worth the relay's memory).
   */
  private put(device: Device, job: DeviceJob): void {
    this.take(device, job.conversation)
    if (this.isPurged(job)) return
    const most = this.options.maxWaitingBytes ?? MAX_WAITING_BYTES
    if (this.bytes + job.payload.length > most) {
      if (this.dropped++ % 1000 === 0)
        this.options.log.warn(
          { user: device.sub.user, device: device.sub.device, dropped: this.dropped },
          `push: failing devices already wait with ${most} bytes of notifications; this one is dropped`,
        )
      return
    }
    device.waiting.set(job.conversation, job)
    this.bytes += job.payload.length
    if (device.waiting.size > MAX_WAITING_PER_DEVICE) this.take(device, device.waiting.keys().next().value!)
  }

  /** Removes what the device waits with for `conversation`, if it is still `only` (when given). */
  private take(device: Device, conversation: string, only?: DeviceJob): void {
    const job = device.waiting.get(conversation)
    if (job === undefined || (only !== undefined && job !== only)) return
    device.waiting.delete(conversation)
    this.bytes -= job.payload.length
  }

  private clear(device: Device): void {
    for (const conversation of [...device.waiting.keys()]) this.take(device, conversation)
  }

  private arm(key: string, device: Device, ms: number): void {
    clearTimeout(device.timer)
    device.timer = setTimeout(() => void this.tick(key, device), ms)
    device.timer.unref?.()
  }

  /**
   * Counts a failed try and arms the next (no sooner than the push service's `Retry-After` asked,
   * within {@link MAX_PUSH_RETRY_AFTER_MS}), or drops what the device waits for once its retries
   * are spent.
   */
  private failed(key: string, device: Device, error?: unknown): void {
    device.failures++
    device.until = this.now() + SET_ASIDE_MS
    this.userFailed(device.sub.user)
    const delay = this.options.retryDelay(device.failures)
    if (delay !== undefined) {
      this.arm(key, device, respectRetryAfter(delay, error, MAX_PUSH_RETRY_AFTER_MS))
      return
    }
    this.options.log.warn(
      { user: device.sub.user, device: device.sub.device, dropped: device.waiting.size },
      "push to a device kept failing: its notifications were dropped",
    )
    this.clear(device)
    device.failures = 0
    this.arm(key, device, device.until - this.now())
  }

  /** Sends what the device waits for, oldest first; forgets the device once nothing waits and its time aside is over. */
  private async tick(key: string, device: Device): Promise<void> {
    device.timer = undefined
    if (this.devices.get(key) !== device) return
    if (device.waiting.size === 0) {
      const left = device.until - this.now()
      if (left <= 0) this.devices.delete(key)
      else this.arm(key, device, left)
      return
    }
    device.sending = true
    let failed: unknown = false
    try {
      const current = (await this.options.store.list(device.sub.user)).find(
        (s) => s.device === device.sub.device,
      )
      if (!current) this.clear(device)
      else device.sub = current
      for (const [conversation, job] of [...device.waiting]) {
        if (!current) break
        // A purge may have come while an earlier one of these was sent.
        if (device.waiting.get(conversation) !== job) continue
        const outcome =
          job.expiresAt > this.now()
            ? await this.asideTries.run(undefined, () => this.tryOnce(current, job))
            : "sent"
        if (outcome instanceof Error) {
          failed = outcome
          break
        }
        this.take(device, conversation, job)
        if (outcome === "gone") this.clear(device)
      }
    } catch (error) {
      this.options.log.warn({ err: error }, "push retry of a device failed")
      failed = true
    } finally {
      device.sending = false
    }
    if (failed !== false) {
      this.failed(key, device, failed)
      return
    }
    device.failures = 0
    this.arm(key, device, 0)
  }

  /** One try, bounded by the per-device timeout (and `signal`); a throw counts as the failure to retry. */
  private async tryOnce(
    sub: PushSubscriptionRecord,
    job: DeviceJob,
    signal?: AbortSignal,
  ): Promise<SendOutcome> {
    const timeout = AbortSignal.timeout(this.options.timeoutMs)
    const bounded = signal ? AbortSignal.any([signal, timeout]) : timeout
    let stop: (() => void) | undefined
    // Raced, not only passed on: name resolution before the request does not take a signal.
    const expired = new Promise<Error>((resolve) => {
      stop = () => resolve(new Error(`push service did not answer within ${this.options.timeoutMs} ms`))
      bounded.addEventListener("abort", stop, { once: true })
    })
    try {
      return await Promise.race([
        this.options
          .send(sub, job, bounded)
          .catch((error: unknown) => (error instanceof Error ? error : new Error(String(error)))),
        expired,
      ])
    } finally {
      bounded.removeEventListener("abort", stop!)
    }
  }
}
