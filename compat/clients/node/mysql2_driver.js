'use strict'
// Drives mysql2 for portcullis's compatibility suite: one command per line
// on stdin (tab-separated), one JSON answer per line on stdout. The
// protocol is described in compat/procdriver_test.go.

const crypto = require('crypto')
const fs = require('fs')
const readline = require('readline')

let mysql
let loadError = ''
try {
  mysql = require('mysql2/promise')
} catch (e) {
  loadError = String(e.message).split('\n')[0]
}

let conn = null
let params = null // what conn was opened with, for the second connection of a cancel

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function reply (fields) {
  process.stderr.write('compat-sync\n')
  emit(Object.assign({ type: 'reply', ok: true }, fields))
}

function replyError (err, fields) {
  // A server error carries its number and SQLSTATE; the driver's own
  // (TLS, I/O) do not.
  const fromServer = typeof err.errno === 'number' && typeof err.sqlState === 'string' && err.errno > 0 && err.errno < 2000
  process.stderr.write('compat-sync\n')
  emit(Object.assign({
    type: 'reply',
    ok: false,
    code: fromServer ? String(err.errno) : '',
    message: String(fromServer && err.sqlMessage ? err.sqlMessage : err.message)
  }, fields))
}

function open (p) {
  return mysql.createConnection({
    host: process.env.COMPAT_HOST,
    port: Number(process.env.COMPAT_PORT),
    database: p.database,
    user: p.user,
    password: p.password,
    connectTimeout: 30000,
    // verify-full: the chain against this CA only, and the host name.
    ssl: { ca: fs.readFileSync(p.caFile), rejectUnauthorized: true }
  })
}

async function close () {
  if (conn) {
    const c = conn
    conn = null
    await c.end().catch(() => {})
  }
}

async function connect (database, user, password, caFile) {
  await close()
  params = { database, user, password, caFile }
  conn = await open(params)
  // An error after the connection is up (the server ending it) must not
  // crash the program.
  conn.on('error', () => {})
  reply({})
}

function text (v) {
  if (v === null) return ''
  if (Buffer.isBuffer(v)) return v.toString()
  return String(v)
}

async function query (sql) {
  const [rows] = await conn.query({ sql, rowsAsArray: true })
  const sha = crypto.createHash('sha256')
  let first = null
  for (const row of rows) {
    const cols = row.map(text)
    if (first === null) first = cols
    sha.update(cols.join('|') + '\n')
  }
  reply({ count: rows.length, sha256: sha.digest('hex'), first })
}

async function one (sql) {
  const [rows] = await conn.query({ sql, rowsAsArray: true })
  return text(rows[0][0])
}

async function prepared (sql, check, args) {
  // execute() prepares on the server, once per connection and statement.
  const results = []
  for (const a of args.split(',')) {
    const [rows] = await conn.execute({ sql, rowsAsArray: true }, [Number(a)])
    results.push(text(rows[0][0]))
  }
  reply({ results, check: await one(check) })
}

async function rollback (insert, count) {
  await conn.beginTransaction()
  let inside
  try {
    await conn.query(insert)
    inside = await one(count)
  } finally {
    await conn.rollback()
  }
  reply({ inside, after: await one(count) })
}

async function cancel (sql, nextLine) {
  let ended = 0
  const running = conn.query(sql).then(
    () => { ended = Date.now(); return null },
    (e) => { ended = Date.now(); return e })
  emit({ type: 'started' })
  if ((await nextLine()) === null) return
  const start = Date.now()
  // mysql2 has no cancel call: KILL QUERY from a second connection, with
  // the id the server gave this one.
  const killer = await open(params)
  try {
    await killer.query('KILL QUERY ' + conn.threadId)
  } finally {
    await killer.end().catch(() => {})
  }
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
          if (!mysql) {
            replyError(new Error('mysql2 is not installed (run npm ci in compat/clients/node): ' + loadError))
            break
          }
          reply({ version: require('mysql2/package.json').version + ' (Node ' + process.versions.node + ')' })
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
