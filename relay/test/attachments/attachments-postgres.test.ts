import {
  type ConversationId,
  createConversation,
  type FileAttachment,
  sendMessage,
  type UserId,
} from "@parley/shared"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { attachmentClient } from "../helpers/attachments.js"
import { TestClient } from "../helpers/clients.js"
import { redisUnreachable, startCluster, type TestCluster } from "../helpers/cluster.js"
import { postgresUnreachable } from "../helpers/postgres.js"
import { until } from "../helpers/until.js"

const alice = "alice" as UserId
const bob = "bob" as UserId

const unreachable = (await postgresUnreachable()) ?? (await redisUnreachable())

describe.skipIf(unreachable && process.env.PARLEY_REQUIRE_SERVICES !== "1")(
  "attachments on a cluster of two relays (PostgreSQL blob store, Redis)",
  () => {
    let cluster: TestCluster
    let db: pg.Client
    const viaFirst = attachmentClient(() => cluster.relay(0))
    const viaSecond = attachmentClient(() => cluster.relay(1))

    beforeAll(async () => {
      cluster = await startCluster(2)
      db = new pg.Client({ connectionString: cluster.schema.url })
      await db.connect()
    })
    afterAll(async () => {
      await db.end()
      await cluster.stop()
    })

    const rowsOf = async (id: string) =>
      Number(
        (
          await db.query<{ n: string }>(
            "SELECT count(*) AS n FROM parley_blob_chunks WHERE position($1 in key) > 0",
            [id],
          )
        ).rows[0]!.n,
      )

    it("stores chunks as rows, serves them from another relay (signed URLs too), and deletes them on erasure", async () => {
      const id = "g~att-pg-000001" as ConversationId
      const client = new TestClient(cluster.relay(0).url, id, await cluster.token(alice))
      await client.opened
      await client.synced()
      createConversation(client.doc, alice, { kind: "group", id, participants: [bob] })
      await client.allSaved()

      const bytes = new Uint8Array(Buffer.alloc(2 * 1024 * 1024 + 10, "rows of text\n"))
      const done = await viaFirst.upload(alice, id, "big.txt", bytes)
      expect(done.status).toBe(201)
      const attachment = done.body!.attachment as FileAttachment
      // Three chunks of the file, and the attachment's record.
      expect(await rowsOf(attachment.id!)).toBe(4)
      sendMessage(client.doc, alice, { body: "the log", attachments: [attachment] })
      await client.allSaved()

      const got = await viaSecond.download(attachment.url, bob)
      expect(got.status).toBe(200)
      expect(Buffer.from(got.bytes).equals(Buffer.from(bytes))).toBe(true)
      expect((await viaSecond.download(attachment.url, "mallory")).status).toBe(404)
      // A URL signed by one relay is good on the other: they share the secret through the database.
      const signed = await viaFirst.sign(bob, attachment.id!)
      expect((await viaSecond.download(signed.body.url as string)).status).toBe(200)

      await until(
        async () =>
          Number(
            (
              await db.query<{ n: string }>(
                "SELECT count(*) AS n FROM parley_blob_chunks WHERE key LIKE 'conv/%/msg/%'",
              )
            ).rows[0]!.n,
          ),
        (n) => n === 1,
      )
      // GDPR erasure of alice: her message goes, and with it the attachment's rows.
      const service = await cluster.relay(0).token("ops", { role: "service" })
      const erased = await fetch(`${cluster.relay(0).httpUrl}/admin/users/alice/content`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${service}` },
      })
      expect(erased.status).toBe(200)
      await until(
        () => rowsOf(attachment.id!),
        (n) => n === 0,
      )
      expect((await viaSecond.download(attachment.url, bob)).status).toBe(404)
      client.close()
    })
  },
)
