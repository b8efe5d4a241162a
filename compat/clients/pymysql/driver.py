"""Drives PyMySQL for portcullis's compatibility suite.

One command per line on stdin (tab-separated), one JSON answer per line on
stdout; the protocol is described in compat/procdriver_test.go.
"""

import hashlib
import json
import os
import sys
import threading
import time

try:
    import pymysql
except ImportError as e:  # reported by the version command
    pymysql = None
    IMPORT_ERROR = str(e)

conn = None
params = None  # what conn was opened with, for the second connection of a cancel


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def reply(**fields):
    sys.stderr.write("compat-sync\n")
    sys.stderr.flush()
    emit(dict(type="reply", ok=True, **fields))


def reply_error(err, **fields):
    # Server errors are numbered below 2000; 2000 and up are the client
    # library's own (CR_*), such as a TLS failure.
    code, message = "", str(err)
    if pymysql is not None and isinstance(err, pymysql.err.MySQLError) and len(err.args) == 2:
        number, message = err.args
        if isinstance(number, int) and 0 < number < 2000:
            code = str(number)
        message = str(message)
    sys.stderr.write("compat-sync\n")
    sys.stderr.flush()
    emit(dict(type="reply", ok=False, code=code, message=message, **fields))


def open_conn(p):
    database, user, password, ca_file = p
    return pymysql.connect(
        host=os.environ["COMPAT_HOST"], port=int(os.environ["COMPAT_PORT"]), database=database,
        user=user, password=password, connect_timeout=30, autocommit=True,
        # verify-full: the chain against this CA, and the host name.
        ssl_ca=ca_file, ssl_verify_cert=True, ssl_verify_identity=True)


def close():
    global conn
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass
        conn = None


def connect(*p):
    global conn, params
    close()
    conn = open_conn(p)
    params = p
    reply()


def one(cur, sql):
    cur.execute(sql)
    return str(cur.fetchone()[0])


def text(v):
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


def query(sql):
    sha = hashlib.sha256()
    count, first = 0, None
    with conn.cursor() as cur:
        cur.execute(sql)
        for row in cur.fetchall():
            cols = [text(v) for v in row]
            if first is None:
                first = cols
            sha.update(("|".join(cols) + "\n").encode())
            count += 1
    reply(count=count, sha256=sha.hexdigest(), first=first)


def prepared(sql, check, args):
    # PyMySQL binds parameters on the client; prepared statements are
    # SQL's PREPARE and EXECUTE.
    with conn.cursor() as cur:
        cur.execute("PREPARE compat_double FROM %s", (sql,))
        results = []
        for a in args.split(","):
            cur.execute("SET @a = %s", (int(a),))
            cur.execute("EXECUTE compat_double USING @a")
            results.append(text(cur.fetchone()[0]))
        seen = one(cur, check)
        cur.execute("DEALLOCATE PREPARE compat_double")
    reply(results=results, check=seen)


def rollback(insert, count):
    conn.begin()
    try:
        with conn.cursor() as cur:
            cur.execute(insert)
            inside = one(cur, count)
    finally:
        conn.rollback()
    with conn.cursor() as cur:
        after = one(cur, count)
    reply(inside=inside, after=after)


def cancel(sql):
    outcome = {}

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        except pymysql.err.MySQLError as e:
            outcome["error"] = e
        outcome["ended"] = time.monotonic()

    runner = threading.Thread(target=run)
    runner.start()
    emit(dict(type="started"))
    if sys.stdin.readline() == "":
        return
    start = time.monotonic()
    # PyMySQL has no cancel call: KILL QUERY from a second connection,
    # with the id the server gave this one.
    killer = open_conn(params)
    try:
        with killer.cursor() as cur:
            cur.execute("KILL QUERY %d" % conn.thread_id())
    finally:
        killer.close()
    runner.join()
    ms = int((outcome["ended"] - start) * 1000)
    if "error" in outcome:
        reply_error(outcome["error"], ms=ms)
    else:
        reply(ms=ms)


def main():
    for line in sys.stdin:
        f = line.rstrip("\n").split("\t")
        try:
            if f[0] == "version":
                if pymysql is None:
                    reply_error(RuntimeError("PyMySQL is not installed for " + sys.executable + ": " + IMPORT_ERROR))
                    continue
                reply(version=pymysql.__version__)
            elif f[0] == "connect":
                connect(f[1], f[2], f[3], f[4])
            elif f[0] == "query":
                query(f[1])
            elif f[0] == "prepared":
                prepared(f[1], f[2], f[3])
            elif f[0] == "rollback":
                rollback(f[1], f[2])
            elif f[0] == "cancel":
                cancel(f[1])
            elif f[0] == "close":
                close()
                reply()
            else:
                reply_error(RuntimeError("unknown command " + f[0]))
        except Exception as e:  # every failure is an answer, never a crash
            reply_error(e)
    close()


if __name__ == "__main__":
    main()
