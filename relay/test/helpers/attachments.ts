import { type ConversationId, createConversation, type UserId } from "@parley/shared"
import { TestClient } from "./clients.js"
import type { RelayProcess } from "./relay-process.js"

/** An HTTP client of one relay's attachment routes. */
export function attachmentClient(relay: () => RelayProcess) {
  const url = (path: string) => `${relay().httpUrl}${path}`
  const auth = async (user: string) => ({ authorization: `Bearer ${await relay().token(user)}` })
  return {
    async create(user: string, conversation: string, body: unknown) {
      const response = await fetch(url(`/v1/conversations/${encodeURIComponent(conversation)}/uploads`), {
        method: "POST",
        headers: { ...(await auth(user)), "content-type": "application/json" },
        body: JSON.stringify(body),
      })
      return { status: response.status, body: (await response.json()) as Record<string, unknown> }
    },
    async patch(user: string, uploadId: string, offset: number, chunk: Uint8Array) {
      const response = await fetch(url(`/v1/uploads/${uploadId}`), {
        method: "PATCH",
        headers: {
          ...(await auth(user)),
          "content-type": "application/offset+octet-stream",
          "upload-offset": String(offset),
        },
        body: new Blob([chunk as Uint8Array<ArrayBuffer>]),
      })
      const text = await response.text()
      return {
        status: response.status,
        offset: response.headers.get("upload-offset"),
        body: text ? (JSON.parse(text) as Record<string, unknown>) : undefined,
      }
    },
    async head(user: string, uploadId: string) {
      const response = await fetch(url(`/v1/uploads/${uploadId}`), {
        method: "HEAD",
        headers: await auth(user),
      })
      return {
        status: response.status,
        offset: response.headers.get("upload-offset"),
        length: response.headers.get("upload-length"),
      }
    },
    /** Uploads `bytes` whole, 1 MiB a chunk; the last response. */
    async upload(user: string, conversation: string, name: string, bytes: Uint8Array) {
      const created = await this.create(user, conversation, { name, size: bytes.length })
      if (created.status !== 201) return { status: created.status, body: created.body, uploadId: undefined }
      const uploadId = created.body.uploadId as string
      const chunk = created.body.chunkBytes as number
      let last: Awaited<ReturnType<typeof this.patch>> | undefined
      for (let offset = 0; offset < bytes.length; offset += chunk) {
        last = await this.patch(user, uploadId, offset, bytes.subarray(offset, offset + chunk))
        if (last.status !== 204) break
      }
      return { ...last!, uploadId }
    },
    async download(path: string, user?: string, headers: Record<string, string> = {}) {
      const response = await fetch(url(path), { headers: { ...(user ? await auth(user) : {}), ...headers } })
      return {
        status: response.status,
        headers: response.headers,
        bytes: new Uint8Array(await response.arrayBuffer()),
      }
    },
    async sign(user: string, id: string) {
      const response = await fetch(url(`/v1/attachments/${id}/signed-url`), {
        method: "POST",
        headers: await auth(user),
      })
      return { status: response.status, body: (await response.json()) as Record<string, unknown> }
    },
  }
}

/**
 * Creates group `id` on `relay` as `owner` with `participants` (a connected
 * client writes it, as an app does) and returns that client, still open.
 */
export async function createGroup(
  relay: RelayProcess,
  id: string,
  owner: UserId,
  participants: readonly UserId[],
  title?: string,
): Promise<TestClient> {
  const client = new TestClient(relay.url, id as ConversationId, await relay.token(owner))
  await client.opened
  await client.synced()
  createConversation(client.doc, owner, {
    kind: "group",
    id: id as ConversationId,
    participants: [...participants],
    ...(title !== undefined ? { title } : {}),
  })
  await client.allSaved()
  return client
}
