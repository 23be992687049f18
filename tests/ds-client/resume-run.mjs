// A live bgrun run read through the official Durable Streams client: start a `ticker` run,
// follow /v1/stream/runs/{run_id} live, disconnect mid-run, resume from the saved offset, and
// check that the two reads together hold every event of the run exactly once, in order.
//
// Usage: node resume-run.mjs <bgrun base URL>   (cargo xtask ds-conformance runs it)
import assert from "node:assert/strict"
import { stream } from "@durable-streams/client"

const base = process.argv[2]
assert.ok(base, "usage: node resume-run.mjs <bgrun base URL>")
const TICKS = 40

for (const live of ["sse", "long-poll"]) {
  const started = await fetch(`${base}/agents/ticker/runs`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: `message=go&background=true&stream=false&count=${TICKS}&delay_ms=30`,
  })
  assert.equal(started.status, 202, await started.clone().text())
  const { run_id: runId } = await started.json()
  const url = `${base}/v1/stream/runs/${runId}`

  // First read: live from the beginning, abandoned after the first batches of events.
  const first = []
  let saved
  const controller = new AbortController()
  const reading = await stream({ url, offset: "-1", live, signal: controller.signal })
  await new Promise((resolve, reject) => {
    reading.subscribeJson(async (batch) => {
      first.push(...batch.items)
      saved = batch.offset
      if (first.length >= 5) {
        controller.abort()
        resolve()
      }
    })
    reading.closed?.catch?.(() => {})
    setTimeout(() => reject(new Error(`${live}: no events within 20 s`)), 20_000).unref()
  })
  assert.ok(first.length >= 5 && first.length < TICKS + 2, `${live}: the first read ended mid-run (${first.length} events)`)

  // Second read: from the saved offset to the end of the run (the stream closes).
  const rest = []
  const resumed = await stream({ url, offset: saved, live })
  for await (const event of resumed.jsonStream()) {
    rest.push(event)
  }

  const all = [...first, ...rest]
  const indices = all.map((event) => event.event_index)
  assert.deepEqual(indices, [...Array(TICKS + 2).keys()], `${live}: every event exactly once, in order`)
  assert.equal(all[0].event, "RunStarted")
  assert.equal(all.at(-1).event, "RunCompleted")
  assert.equal(all.at(-1).content, `done ${TICKS}`)
  for (const event of all) assert.equal(event.run_id, runId)
  console.log(`${live}: ${first.length} events, disconnected at ${saved}, resumed: ${rest.length} more; all ${all.length} once, in order`)
}
