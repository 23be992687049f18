// The Durable Streams reference server (`@durable-streams/server`, file-backed) for bgrun-http's
// `streams` bench: `node ds-reference-server.mjs <dataDir>`. It prints `port N` once it listens
// and runs until killed (or until its standard input closes).
//
// The bench copies this file into the npm project it installs the pinned server into
// (target/ds-bench/), so that the import below resolves there.
import { DurableStreamTestServer } from "@durable-streams/server"

const dataDir = process.argv[2]
if (!dataDir) {
  console.error("usage: node ds-reference-server.mjs <dataDir>")
  process.exit(2)
}

const server = new DurableStreamTestServer({ port: 0, host: "127.0.0.1", dataDir })
const url = await server.start()
const port = new URL(url).port
process.stdout.write(`port ${port}\n`)

// The bench keeps our standard input open; its end (the bench gone) stops this server.
process.stdin.resume()
process.stdin.on("end", () => {
  server.stop().finally(() => process.exit(0))
})
