import type { IncomingMessage, ServerResponse } from "node:http"
import { ErrorCode, ParleyError } from "@parley/shared"
import { sendJson } from "../http-json.js"
import { type DeadLetter, type DeadLetterFilter, type Delivery, describeDeadLetter } from "./outbox.js"

/** What the admin endpoint needs: the dead letters, a replay, and who is asking. */
export interface DeadLetterAdmin {
  deadLetters(): Promise<DeadLetter[]>
  replay(filter?: DeadLetterFilter): Promise<Delivery[]>
  /** Resolves with the caller's principal kind; throws UNAUTHORIZED for a bad token. */
  verify(token: string | null | undefined): Promise<{ readonly kind: string }>
}

const PATH = "/admin/dead-letters"
const REPLAY = `${PATH}/replay`
const MAX_BODY = 64 * 1024

const send = sendJson

/**
 * HTTP routes for operators, guarded by a service token (`role: "service"`)
 * in `Authorization: Bearer <token>`:
 * - `GET /admin/dead-letters` lists dead letters;
 * - `POST /admin/dead-letters/replay` with an optional JSON filter
 *   `{ eventId?, target?, document? }` delivers the matching ones again.
 * Returns false for any other path, so the transport can go on routing.
 */
export function deadLetterRoutes(admin: DeadLetterAdmin) {
  return async (req: IncomingMessage, res: ServerResponse): Promise<boolean> => {
    const path = new URL(req.url ?? "/", "http://relay").pathname
    if (path !== PATH && path !== REPLAY) return false
    try {
      const header = req.headers.authorization
      const token = header?.startsWith("Bearer ") ? header.slice(7) : undefined
      const principal = await admin.verify(token)
      if (principal.kind !== "service")
        throw new ParleyError(ErrorCode.FORBIDDEN, "dead letters need a service token")
      if (path === PATH && req.method === "GET") {
        const letters = await admin.deadLetters()
        send(res, 200, {
          deadLetters: letters.map((d) => ({ ...describeDeadLetter(d), event: d.event })),
        })
        return true
      }
      if (path === REPLAY && req.method === "POST") {
        const filter = parseFilter(await readBody(req))
        const replayed = await admin.replay(filter)
        send(res, 200, { replayed: replayed.map((d) => ({ eventId: d.event.event.id, target: d.target })) })
        return true
      }
      send(res, 405, { error: "method not allowed" })
    } catch (error) {
      const code = error instanceof ParleyError ? error.code : ErrorCode.INTERNAL
      const status =
        code === ErrorCode.UNAUTHORIZED
          ? 401
          : code === ErrorCode.FORBIDDEN
            ? 403
            : code === ErrorCode.INVALID_ARGUMENT
              ? 400
              : 500
      send(res, status, { error: { code, message: (error as Error).message } })
    }
    return true
  }
}

async function readBody(req: IncomingMessage): Promise<string> {
  let body = ""
  for await (const chunk of req) {
    body += chunk
    if (body.length > MAX_BODY) throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "request body too large")
  }
  return body
}

function parseFilter(body: string): DeadLetterFilter {
  if (body.trim() === "") return {}
  let value: unknown
  try {
    value = JSON.parse(body)
  } catch {
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "the body must be JSON")
  }
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new ParleyError(ErrorCode.INVALID_ARGUMENT, "the body must be a JSON object")
  const filter: { eventId?: string; target?: string; document?: string } = {}
  for (const key of ["eventId", "target", "document"] as const) {
    const field = (value as Record<string, unknown>)[key]
    if (field === undefined) continue
    if (typeof field !== "string")
      throw new ParleyError(ErrorCode.INVALID_ARGUMENT, `${key} must be a string`)
    filter[key] = field
  }
  return filter
}
