// Xen Orchestra's xen-api client against a simulated pool: connect (system.listMethods),
// keep its object cache by event.inject and event.from, start a VM with Async.VM.start and
// its task, and see a failing task's error. Prints one JSON line.
import { createClient } from 'xen-api'

const [url, password, transport] = process.argv.slice(2)
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

const xapi = createClient({ url, auth: { user: 'root', password }, transport, allowUnauthorized: true })
await xapi.connect()
await xapi.objectsFetched

const all = Object.values(xapi.objects.all)
const counts = {}
for (const o of all) counts[o.$type] = (counts[o.$type] ?? 0) + 1
const running = all.find(o => o.$type === 'VM' && !o.is_control_domain && !o.is_a_template && o.power_state === 'Running')
await xapi.callAsync('VM.hard_shutdown', running.$ref)
const halted = xapi.getObjectByRef(running.$ref)
const result = await xapi.callAsync('VM.start', halted.$ref, false, false)
const deadline = Date.now() + 15000
while (xapi.getObjectByRef(halted.$ref).power_state !== 'Running') {
  if (Date.now() > deadline) throw new Error('the cache never saw the VM running')
  await sleep(100)
}
let again
try {
  await xapi.callAsync('VM.start', halted.$ref, false, false)
} catch (error) {
  again = [error.code, ...(error.params ?? [])]
}
const vm = xapi.getObjectByRef(halted.$ref)
console.log(JSON.stringify({
  counts,
  started: halted.name_label,
  result,
  resident_on: vm.resident_on,
  again,
}))
await xapi.disconnect()
process.exit(0)
