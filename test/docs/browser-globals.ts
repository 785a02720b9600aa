// What a browser has and Node 20 lacks, for the client's code blocks (loaded with `--import`):
// IndexedDB (the SDK's default storage) and a global WebSocket.
import "fake-indexeddb/auto"
import WebSocket from "ws"

globalThis.WebSocket ??= WebSocket as unknown as typeof globalThis.WebSocket
