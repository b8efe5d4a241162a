"""Drives psycopg2 for portcullis's compatibility suite.

One command per line on stdin (tab-separated), one JSON answer per line on
stdout; the protocol is described in compat/procdriver_test.go. libpq prints
the notices it receives while connecting on stderr (psycopg2 installs its own
notice handler only once connected), which is where a person sees the
device-code prompt, and where the suite reads it.
"""

import hashlib
import json
import os
import sys
import threading
import time

try:
    import psycopg2
    import psycopg2.extensions
except ImportError as e:  # reported by the version command
    psycopg2 = None
    IMPORT_ERROR = str(e)

conn = None


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def reply(**fields):
    sys.stderr.write("compat-sync\n")
    sys.stderr.flush()
    emit(dict(type="reply", ok=True, **fields))


def reply_error(err, **fields):
    # A server error carries its SQLSTATE; libpq's own (TLS, I/O) do not.
    code = getattr(err, "pgcode", None) or ""
    diag = getattr(err, "diag", None)
    message = (diag.message_primary if diag is not None and diag.message_primary else str(err)).strip()
    sys.stderr.write("compat-sync\n")
    sys.stderr.flush()
    emit(dict(type="reply", ok=False, code=code, message=message, **fields))


def flush_notices():
    """Passes on notices psycopg2 collected since the last call."""
    if conn is not None:
        for n in conn.notices:
            emit(dict(type="notice", message=n.strip()))
        del conn.notices[:]


def close():
    global conn
    if conn is not None:
        try:
            conn.close()
        except psycopg2.Error:
            pass
        conn = None


def connect(database, user, password, ca_file):
    global conn
    close()
    conn = psycopg2.connect(
        host=os.environ["COMPAT_HOST"], port=os.environ["COMPAT_PORT"], dbname=database,
        user=user, password=password, sslmode="verify-full", sslrootcert=ca_file, connect_timeout=30)
    conn.autocommit = True
    reply()


def one(cur, sql):
    cur.execute(sql)
    return str(cur.fetchone()[0])


def query(sql):
    sha = hashlib.sha256()
    count, first = 0, None
    with conn.cursor() as cur:
        cur.execute(sql)
        for row in cur:
            cols = ["" if v is None else str(v) for v in row]
            if first is None:
                first = cols
            sha.update(("|".join(cols) + "\n").encode())
            count += 1
    flush_notices()
    reply(count=count, sha256=sha.hexdigest(), first=first)


def prepared(sql, check, args):
    # psycopg2 binds parameters on the client; prepared statements are
    # SQL's PREPARE and EXECUTE.
    with conn.cursor() as cur:
        cur.execute("PREPARE compat_double AS " + sql)
        results = []
        for a in args.split(","):
            cur.execute("EXECUTE compat_double (%s)", (int(a),))
            results.append(str(cur.fetchone()[0]))
        seen = one(cur, check)
        cur.execute("DEALLOCATE compat_double")
    reply(results=results, check=seen)


def rollback(insert, count):
    conn.autocommit = False  # psycopg2 begins a transaction at the first statement
    try:
        with conn.cursor() as cur:
            cur.execute(insert)
            inside = one(cur, count)
    finally:
        conn.rollback()
        conn.autocommit = True
    with conn.cursor() as cur:
        after = one(cur, count)
    reply(inside=inside, after=after)


def cancel(sql):
    outcome = {}

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        except psycopg2.Error as e:
            outcome["error"] = e
        outcome["ended"] = time.monotonic()

    runner = threading.Thread(target=run)
    runner.start()
    emit(dict(type="started"))
    if sys.stdin.readline() == "":
        return
    start = time.monotonic()
    conn.cancel()
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
                if psycopg2 is None:
                    reply_error(RuntimeError("psycopg2 is not installed for " + sys.executable + ": " + IMPORT_ERROR))
                    continue
                libpq = psycopg2.extensions.libpq_version()
                reply(version="%s (libpq %d.%d)" % (psycopg2.__version__.split()[0], libpq // 10000, libpq % 10000))
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
