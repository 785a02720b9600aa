import {
  encodeDirectoryRequest,
  encodeEpochRequest,
  encodeHistoryRequest,
  type HistoryPage,
  MessageType,
  type ParleyFrame,
  readParleyFrame,
} from "@parley/shared"
import * as decoding from "lib0/decoding"
import type { TestClient } from "./clients.js"

/** Waits until `c` received the answer of type `type` to request number `request`, and returns it. */
async function answer(
  c: TestClient,
  type: "historyPage" | "directoryPage" | "epochRecord",
  request: number,
): Promise<HistoryPage> {
  let found: HistoryPage | undefined
  await c.until(() => {
    for (const frame of c.frames) {
      if (frame[0] !== MessageType.parley) continue
      const decoder = decoding.createDecoder(frame)
      decoding.readVarUint(decoder)
      const parley: ParleyFrame | undefined = readParleyFrame(decoder)
      if (parley?.type === type && parley.request === request) found = parley
    }
    return found !== undefined
  })
  return found!
}

/** Sends a history request for sealed segment `segment` and waits for its answer. */
export function requestSegment(c: TestClient, segment: number, request = segment + 1): Promise<HistoryPage> {
  c.send(encodeHistoryRequest(request, segment))
  return answer(c, "historyPage", request)
}

/** Sends a request for directory page `page` and waits for its answer. */
export function requestDirectory(c: TestClient, page: number, request = 1000 + page): Promise<HistoryPage> {
  c.send(encodeDirectoryRequest(request, page))
  return answer(c, "directoryPage", request)
}

/** Sends a request for epoch record `record` and waits for its answer. */
export function requestEpochRecord(
  c: TestClient,
  record: number,
  request = 2000 + record,
): Promise<HistoryPage> {
  c.send(encodeEpochRequest(request, record))
  return answer(c, "epochRecord", request)
}
