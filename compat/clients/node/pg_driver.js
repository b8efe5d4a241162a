'use strict'
// Drives node-postgres (pg) for portcullis's compatibility suite: one
// command per line on stdin (tab-separated), one JSON answer per line on
// stdout. The protocol is described in compat/procdriver_test.go.

const crypto = require('crypto')
const fs = require('fs')
const readline = require('readline')

let pg
let loadError = ''
try {
  pg = require('pg')
} catch (e) {
  loadError = String(e.message).split('\n')[0]
}

let client = null

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function reply (fields) {
  process.stderr.write('compat-sync\n')
  emit(Object.assign({ type: 'reply', ok: true }, fields))
}

function replyError (err, fields) {
  // A server error (pg's DatabaseError) carries its SQLSTATE; the
  // driver's own (TLS, I/O) do not.
  const fromServer = pg && err instanceof pg.DatabaseError
  process.stderr.write('compat-sync\n')
  emit(Object.assign({ type: 'reply', ok: false, code: fromServer ? err.code : '', message: String(err.message) }, fields))
}

function config (database, user, password, caFile) {
  return {
    host: process.env.COMPAT_HOST,
    port: Number(process.env.COMPAT_PORT),
    database,
    user,
    password,
    connectionTimeoutMillis: 30000,
    // sslmode=verify-full: the chain against this CA only, and the host
    // name against the certificate.
    ssl: { ca: fs.readFileSync(caFile), rejectUnauthorized: true }
  }
}

async function close () {
  if (client) {
    const c = client
    client = null
    await c.end().catch(() => {})
  }
}

async function connect (database, user, password, caFile) {
  await close()
  const c = new pg.Client(config(database, user, password, caFile))
  c.on('notice', (n) => emit({ type: 'notice', message: n.message }))
  // An error after the connection is up (the server ending it) must not
  // crash the program.
  c.on('error', () => {})
  c.compatConfig = config(database, user, password, caFile)
  await c.connect()
  client = c
  reply({})
}

async function query (sql) {
  const res = await client.query({ text: sql, rowMode: 'array' })
  const sha = crypto.createHash('sha256')
  let first = null
  for (const row of res.rows) {
    const cols = row.map((v) => (v === null ? '' : String(v)))
    if (first === null) first = cols
    sha.update(cols.join('|') + '\n')
  }
  reply({ count: res.rows.length, sha256: sha.digest('hex'), first })
}

async function one (sql) {
  const res = await client.query({ text: sql, rowMode: 'array' })
  return String(res.rows[0][0])
}

async function prepared (sql, check, args) {
  // A named query is prepared on the server once per connection.
  const results = []
  for (const a of args.split(',')) {
    const res = await client.query({ name: 'compat_double', text: sql, values: [Number(a)], rowMode: 'array' })
    results.push(String(res.rows[0][0]))
  }
  reply({ results, check: await one(check) })
}

async function rollback (insert, count) {
  await client.query('BEGIN')
  let inside
  try {
    await client.query(insert)
    inside = await one(count)
  } finally {
    await client.query('ROLLBACK')
  }
  reply({ inside, after: await one(count) })
}

async function cancel (sql, nextLine) {
  let ended = 0
  const running = client.query(sql).then(
    () => { ended = Date.now(); return null },
    (e) => { ended = Date.now(); return e })
  emit({ type: 'started' })
  if ((await nextLine()) === null) return
  const start = Date.now()
  // node-postgres cancels through a second Client with the same
  // configuration, which sends the CancelRequest.
  const canceller = new pg.Client(client.compatConfig)
  canceller.on('error', () => {})
  canceller.cancel(client, client.activeQuery)
  const err = await running
  const ms = ended - start
  if (err) replyError(err, { ms })
  else reply({ ms })
}

async function main () {
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  const lines = rl[Symbol.asyncIterator]()
  const nextLine = async () => {
    const r = await lines.next()
    return r.done ? null : r.value
  }
  for (;;) {
    const line = await nextLine()
    if (line === null) break
    const f = line.split('\t')
    try {
      switch (f[0]) {
        case 'version':
          if (!pg) {
            replyError(new Error('pg is not installed (run npm ci in compat/clients/node): ' + loadError))
            break
          }
          reply({ version: require('pg/package.json').version + ' (Node ' + process.versions.node + ')' })
          break
        case 'connect': await connect(f[1], f[2], f[3], f[4]); break
        case 'query': await query(f[1]); break
        case 'prepared': await prepared(f[1], f[2], f[3]); break
        case 'rollback': await rollback(f[1], f[2]); break
        case 'cancel': await cancel(f[1], nextLine); break
        case 'close': await close(); reply({}); break
        default: replyError(new Error('unknown command ' + f[0]))
      }
    } catch (e) {
      replyError(e)
    }
  }
  await close()
}

main()
