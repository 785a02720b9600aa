// The Hocuspocus 3.4 server as the benchmark runs it: no extensions, so it
// neither persists nor checks anything (like the y-websocket reference server).
// Plain JavaScript run by plain node, so no loader inflates its memory.
import { Server } from "@hocuspocus/server"

const server = new Server({ port: Number(process.env.PORT ?? 0), address: "127.0.0.1", quiet: true })
await server.listen()
console.log(JSON.stringify({ msg: "listening", port: server.address.port }))
