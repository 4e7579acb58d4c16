#!/usr/bin/env python3
"""Failover benchmark: what clients see when the primary fails, pgvigil against Pgpool-II.

For every run, fault and target a fresh cluster (a primary and two streaming standbys with
replication slots and hot_standby_feedback; with --sync, quorum-synchronous) is built in
its own temporary directory, the proxy is started in front of it, and a probe of N
sessions (half writing, half reading) runs through the proxy. After a few seconds the
primary fails: `kill` sends SIGKILL to its postmaster, `stop` sends SIGSTOP to the
postmaster and every process under it (a host that stops answering) until the end of the
probe. Or an operator hands the primary role over: `switchover` asks the proxy to make pg1
the primary (pgvigil: POST /switchover on its admin API; Pgpool-II: pcp_promote_node -s).
The probe goes on for a while, then the script checks which standby was promoted, whether
every acknowledged write is on it and whether the other standby (and, after a switchover,
the old primary) streams from it.

Usage:  sudo python3 bench/failover.py [--runs 5] [--fault kill,stop,switchover] [--sync]
                                       [--targets pgvigil,pgvigil-tuned,pgpool]
See bench/README.md.  Python 3.11 standard library only (plus the PostgreSQL binaries).
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import platform
import pwd
import re
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # no bench/__pycache__ from the import below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgbench as pb  # noqa: E402  (helpers: temp dir and processes, PostgreSQL setup)
from pgbench import BenchError, log  # noqa: E402

USER, PASSWORD, DBNAME = pb.USER, pb.PASSWORD, pb.DBNAME
ALL_TARGETS = ["pgvigil", "pgvigil-tuned", "pgpool", "pgpool-nofollow"]
DEFAULT_TARGETS = ["pgvigil", "pgvigil-tuned", "pgpool"]
# [health_check] keys of the pgvigil targets; everything else is at its default
# (in particular [failover] automatic = true, and for `pgvigil` interval 1s, timeout 2s,
# retries 2, retry_delay 500ms).
PGVIGIL_HEALTH = {
    "pgvigil": {},
    "pgvigil-tuned": {"interval": '"200ms"', "timeout": '"500ms"', "retries": "1", "retry_delay": '"100ms"'},
}
# Pgpool-II's health check, matched to pgvigil's defaults as far as its units allow
# (whole seconds: no 500 ms retry delay, so 1 s).
PGPOOL_HEALTH = {
    "health_check_period": "1",
    "health_check_timeout": "2",
    "health_check_max_retries": "2",
    "health_check_retry_delay": "1",
}
FAULTS = ["kill", "stop", "switchover"]
DEFAULT_FAULTS = ["kill", "stop"]
# Seconds of probing after the fault when --observe is not given: a stopped primary is
# only noticed through health check timeouts, and the follow step must fit after that.
# For `switchover`, seconds after the request was answered.
OBSERVE_DEFAULT = {"kill": 15.0, "stop": 20.0, "switchover": 10.0}
# switchover: the standby asked to take over, the window of the write pause after the
# answer, how long after the answer the old primary may take to stream from the new one,
# and how long the request may take.
SWITCHOVER_TO = "pg1"
PAUSE_AFTER_ANSWER_S = 5.0
REJOIN_WITHIN_S = 10.0
REQUEST_TIMEOUT_S = 120.0
# --sync: quorum commit over both standbys, on every node (the standbys inherit it with
# the base backup, so the promoted one is synchronous to the remaining standby in turn).
SYNC_NAMES = "ANY 1 (pg1, pg2)"
FOLLOW_WITHIN_S = 5.0
TABLE = "failover_probe"


# --------------------------------------------------------------------------- wire protocol


class Dropped(Exception):
    """The connection is gone (closed, reset, FATAL, timed out): the session must reconnect."""

    def __init__(self, msg, sqlstate=None):
        super().__init__(msg)
        self.sqlstate = sqlstate


class PgError(Exception):
    """An ERROR answer to a statement; the connection is still usable."""

    def __init__(self, msg, sqlstate=None):
        super().__init__(msg)
        self.sqlstate = sqlstate


def _error_fields(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    sev = fields.get("V") or fields.get("S") or "ERROR"
    return sev, fields.get("C"), fields.get("M", "")


class PgConn:
    """A minimal PostgreSQL client (protocol 3.0, simple query; trust, password, md5 and
    SCRAM-SHA-256 authentication), so that every error and every closed connection is seen
    exactly as a client sees it."""

    def __init__(self, host, port, user, password, database, timeout, appname="failover-probe"):
        self.user, self.password = user, password
        self.buf = bytearray()
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise Dropped(f"connect: {e}")
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in
                              (("user", user), ("database", database), ("application_name", appname)))
            body = struct.pack("!I", 196608) + params + b"\0"
            self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
            self._startup()
        except BaseException:
            self.close()
            raise

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Unblock a thread waiting on this connection (used when the probe stops)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send(self, kind, body):
        try:
            self.sock.sendall(kind + struct.pack("!I", len(body) + 4) + body)
        except socket.timeout:
            raise Dropped("timeout while sending")
        except OSError as e:
            raise Dropped(f"send: {e}")

    def _recv(self):
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= 1 + n:
                    kind, body = bytes(self.buf[:1]), bytes(self.buf[5:1 + n])
                    del self.buf[:1 + n]
                    return kind, body
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise Dropped("timeout: no answer")
            except OSError as e:
                raise Dropped(f"recv: {e}")
            if not chunk:
                raise Dropped("connection closed by the server")
            self.buf += chunk

    def _fatal_or_error(self, body):
        sev, code, msg = _error_fields(body)
        if sev in ("FATAL", "PANIC"):
            raise Dropped(f"{sev} {code}: {msg}", code)
        return PgError(f"{sev} {code}: {msg}", code)

    def _startup(self):
        while True:
            kind, body = self._recv()
            if kind == b"R":
                self._auth(struct.unpack("!I", body[:4])[0], body[4:])
            elif kind == b"E":
                err = self._fatal_or_error(body)
                raise Dropped(str(err), err.sqlstate)  # any error at startup ends the connection
            elif kind == b"Z":
                return
            # S (ParameterStatus), K (BackendKeyData), N (notice): nothing to do

    def _auth(self, code, data):
        if code == 0:
            return
        if code == 3:
            self._send(b"p", self.password.encode() + b"\0")
        elif code == 5:
            inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
            self._send(b"p", b"md5" + hashlib.md5(inner.encode() + data[:4]).hexdigest().encode() + b"\0")
        elif code == 10:
            self._scram(data)
        else:
            raise Dropped(f"unsupported authentication request {code}")

    def _scram(self, mechanisms):
        if b"SCRAM-SHA-256\0" not in mechanisms:
            raise Dropped(f"no supported SASL mechanism in {mechanisms!r}")
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = ("n,," + first_bare).encode()
        self._send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
        kind, body = self._recv()
        if kind == b"E":
            raise Dropped(str(self._fatal_or_error(body)))
        if kind != b"R" or struct.unpack("!I", body[:4])[0] != 11:
            raise Dropped("unexpected answer to SCRAM client-first")
        server_first = body[4:].decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        if not attrs["r"].startswith(nonce):
            raise Dropped("SCRAM nonce mismatch")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        final_wo_proof = f"c=biws,r={attrs['r']}"
        auth_msg = f"{first_bare},{server_first},{final_wo_proof}".encode()
        sig = hmac.new(stored_key, auth_msg, hashlib.sha256).digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
        self._send(b"p", f"{final_wo_proof},p={proof}".encode())
        kind, body = self._recv()
        if kind == b"E":
            raise Dropped(str(self._fatal_or_error(body)))
        # R 12 (SASLFinal) follows; R 0 comes through _startup.

    def query(self, sql):
        """Rows (lists of str/None) of a simple query. PgError on ERROR, Dropped when the
        connection is gone."""
        self._send(b"Q", sql.encode() + b"\0")
        rows, err = [], None
        while True:
            kind, body = self._recv()
            if kind == b"D":
                n = struct.unpack("!H", body[:2])[0]
                pos, row = 2, []
                for _ in range(n):
                    ln = struct.unpack("!i", body[pos:pos + 4])[0]
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(body[pos:pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif kind == b"E":
                err = self._fatal_or_error(body)
            elif kind == b"Z":
                if err:
                    raise err
                return rows


def direct(port, timeout=3):
    return PgConn("127.0.0.1", port, USER, PASSWORD, DBNAME, timeout, appname="failover-monitor")


# --------------------------------------------------------------------------- probe


class Session(threading.Thread):
    """One client session through the proxy: a writer INSERTs a new id every interval, a
    reader SELECTs every interval. Every error and every lost connection is recorded; after
    a lost connection the session reconnects (at the next tick) and goes on."""

    def __init__(self, idx, role, port, interval, stmt_timeout):
        super().__init__(daemon=True, name=f"{role}{idx}")
        self.idx, self.role, self.port, self.interval = idx, role, port, interval
        self.stmt_timeout = stmt_timeout
        self.stop_at = None
        self.conn = None
        self.seq = 0
        self.acked = []          # (id, t_sent, t_acked, server port)
        self.in_doubt = []       # ids sent whose outcome is unknown (connection lost meanwhile)
        self.ok = []             # (t_sent, t_done, server port) of successful statements
        self.errors = []         # {t, kind, sqlstate, message}
        self.drops = []          # times the connection was lost
        # All times are time.monotonic(); analyse() makes them relative to the fault.
        self.connects = 0
        self.ready = threading.Event()

    @staticmethod
    def now():
        return time.monotonic()

    def _err(self, kind, e):
        t = self.now()
        if self.stop_at is not None and t >= self.stop_at:
            return
        self.errors.append({"t": t, "kind": kind, "sqlstate": getattr(e, "sqlstate", None),
                            "message": str(e)[:300]})

    def run(self):
        next_t = time.monotonic()
        while self.stop_at is None:
            if self.conn is None:
                try:
                    self.conn = PgConn("127.0.0.1", self.port, USER, PASSWORD, DBNAME,
                                       self.stmt_timeout, appname=f"probe-{self.role}{self.idx}")
                    self.connects += 1
                except (Dropped, OSError) as e:
                    self._err("connect", e)
            if self.conn is not None:
                self.step()
            self.ready.set()
            next_t += self.interval
            now = time.monotonic()
            if next_t < now:
                next_t = now
            else:
                time.sleep(next_t - now)
        if self.conn is not None:
            self.conn.close()

    def step(self):
        t_sent = self.now()
        new_id = None
        if self.role == "writer":
            self.seq += 1
            new_id = (self.idx + 1) * 1_000_000 + self.seq
            sql = f"INSERT INTO {TABLE} (id, writer) VALUES ({new_id}, {self.idx}) RETURNING inet_server_port()"
        else:
            sql = f"SELECT inet_server_port(), count(*) FROM {TABLE}"
        try:
            rows = self.conn.query(sql)
        except PgError as e:
            self._err("statement", e)
            return
        except (Dropped, OSError) as e:
            gone = self.stop_at is not None and self.now() >= self.stop_at
            if not gone:
                self._err("statement", e)
                self.drops.append(self.now())
            if new_id is not None:
                self.in_doubt.append(new_id)
            self.conn.close()
            self.conn = None
            return
        t_done = self.now()
        # inet_server_port(): the PostgreSQL server that ran the statement.
        port = int(rows[0][0]) if rows and rows[0][0] else None
        if new_id is not None:
            # Acknowledged, also when it finished after the probe window closed.
            self.acked.append((new_id, t_sent, t_done, port))
        if self.stop_at is None or t_done < self.stop_at:
            self.ok.append((t_sent, t_done, port))

    def stop(self, t):
        self.stop_at = t
        conn = self.conn
        if conn is not None:
            conn.abort()


class Monitor(threading.Thread):
    """Polls the standbys directly (not through the proxy) every 100 ms: in recovery or
    not, and where their WAL receiver streams from (pg_stat_wal_receiver)."""

    SQL = ("SELECT pg_is_in_recovery(), (SELECT status || ' ' || coalesce(sender_port::text, '') "
           "FROM pg_stat_wal_receiver)")

    def __init__(self, standbys):
        super().__init__(daemon=True, name="monitor")
        self.standbys = standbys  # [(name, port)]
        self.stopping = threading.Event()
        self.samples = {name: [] for name, _ in standbys}  # changes only: (t, in_recovery, status, sender_port)

    def run(self):
        conns = {}
        while not self.stopping.is_set():
            for name, port in self.standbys:
                state = ("unreachable", None, None)
                try:
                    if name not in conns:
                        conns[name] = direct(port, timeout=2)
                    row = conns[name].query(self.SQL)[0]
                    status, _, sport = (row[1] or "none ").partition(" ")
                    state = (row[0] == "t", status, int(sport) if sport else None)
                except (Dropped, PgError, OSError) as e:
                    c = conns.pop(name, None)
                    if c:
                        c.close()
                    state = ("unreachable", str(e)[:100], None)
                s = self.samples[name]
                if not s or s[-1][1:] != state:
                    s.append((time.monotonic(),) + state)
            self.stopping.wait(0.1)
        for c in conns.values():
            c.close()


# --------------------------------------------------------------------------- setup


def setup_cluster(env, pgbin, sync, rewindable=False):
    """Primary pg0 and standbys pg1, pg2 (pgbench.py's setup), with synchronous_commit = on
    so that an acknowledged commit is in the primary's WAL (pgbench.py turns it off) and a
    probe table.

    With `sync`, `synchronous_standby_names = 'ANY 1 (pg1, pg2)'` is written with ALTER
    SYSTEM before the standbys are cloned (so they have it too, for when one of them is
    promoted) and applied on the primary once both stream; then a commit is acknowledged
    only when at least one standby has flushed it.

    With `rewindable` (the switchover), `wal_log_hints = on` and `full_page_writes = on`
    (pgbench.py turns it off) are written the same way and the primary is restarted before
    the standbys are cloned: pg_rewind, which turns the old primary into a standby of the
    new one, refuses a target without wal_log_hints (or data checksums) and a source
    without full_page_writes."""
    proc, port, version = pb.setup_postgres(env, pgbin, 1, 2)
    sqls = ["ALTER SYSTEM SET synchronous_commit = on", "SELECT pg_reload_conf()",
            f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, writer int, at timestamptz DEFAULT now())"]
    if sync:
        sqls.append(f"ALTER SYSTEM SET synchronous_standby_names = '{SYNC_NAMES}'")  # no reload yet
    if rewindable:
        sqls += ["ALTER SYSTEM SET wal_log_hints = on", "ALTER SYSTEM SET full_page_writes = on"]
    r = pb.psql(pgbin, port, *sqls)
    if r.returncode != 0:
        raise BenchError(f"preparing the primary failed: {r.stderr}")
    if rewindable:
        proc = restart_primary(env, pgbin, proc, port)
        r = pb.psql(pgbin, port, "SELECT current_setting('wal_log_hints') || ' ' || current_setting('full_page_writes')")
        if r.stdout.strip() != "on on":
            raise BenchError(f"wal_log_hints and full_page_writes are not on after the restart: {r.stdout}{r.stderr}")
    standbys = pb.setup_standbys(env, pgbin, port, 2)
    if sync:
        wait_sync(pgbin, port, [n for n, _, _ in standbys])
    return {"proc": proc, "port": port, "version": version, "standbys": standbys, "sync": sync}


def restart_primary(env, pgbin, proc, port):
    """Fast shutdown of the primary started by pb.setup_postgres, and a new start."""
    env.stop(proc, signal.SIGINT)
    env.procs = [x for x in env.procs if x[1] is not proc]
    p = env.spawn("postgres", [os.path.join(pgbin, "postgres"), "-D", env.path("pgdata")], "postgres.log",
                  signal.SIGINT)
    pb.wait_ready(pgbin, "PostgreSQL", port, p, env.path("postgres.log"))
    return p


def data_dirs(cluster):
    """{node name: data directory} (pb.setup_postgres and pb.setup_standbys name them)."""
    return {"pg0": "pgdata", **{n: f"{n}data" for n, _, _ in cluster["standbys"]}}


def stop_unmanaged_postmasters(env, cluster):
    """Stop every postmaster running on one of the cluster's data directories that this
    script did not start: one that pgvigil or a Pgpool-II script started with pg_ctl after
    a switchover (pg_ctl puts it in its own session, out of reach of the cleanup)."""
    ours = {p.pid for _, p, _ in env.procs}
    for d in data_dirs(cluster).values():
        try:
            with open(os.path.join(env.path(d), "postmaster.pid")) as f:
                pid = int(f.readline().strip())
        except (OSError, ValueError):
            continue
        if pid in ours or proc_state(pid) is None:
            continue
        try:
            os.kill(pid, signal.SIGINT)  # fast shutdown
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 15
        while proc_state(pid) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc_state(pid) not in (None, "Z"):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_sync(pgbin, port, names, deadline_s=30):
    """Apply synchronous_standby_names on the primary and wait until pg_stat_replication
    lists every standby streaming as a quorum standby, then check that a commit goes
    through."""
    r = pb.psql(pgbin, port, "SELECT pg_reload_conf()")
    if r.returncode != 0:
        raise BenchError(f"reloading the primary failed: {r.stderr}")
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        r = pb.psql(pgbin, port, "SELECT current_setting('synchronous_standby_names') || '|' || "
                    "coalesce(string_agg(application_name || ':' || state || ':' || sync_state, ',' "
                    "ORDER BY application_name), '') FROM pg_stat_replication", timeout=10)
        last = (r.stdout or r.stderr).strip()
        setting, _, peers = last.partition("|")
        states = dict((x.split(":", 1)[0], x.split(":", 1)[1]) for x in peers.split(",") if ":" in x)
        if setting == SYNC_NAMES and all(states.get(n) == "streaming:quorum" for n in names):
            r = pb.psql(pgbin, port, f"INSERT INTO {TABLE} (id, writer) VALUES (0, -1)",
                        f"DELETE FROM {TABLE} WHERE id = 0", timeout=10)
            if r.returncode != 0:
                raise BenchError(f"a commit with synchronous replication failed: {r.stderr}")
            log(f"synchronous replication: {setting}; {peers}")
            return
        time.sleep(0.1)
    raise BenchError(f"the standbys did not become quorum-synchronous within {deadline_s}s (last: {last})")


# --------------------------------------------------------------------------- faults


def _proc_children():
    """{ppid: [pid, ...]} from one pass over /proc."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = pb.read_stat(int(d))
            if st:
                kids.setdefault(st[0], []).append(int(d))
    return kids


def descendants(root):
    """Every process whose parent chain leads to root (root not included)."""
    kids = _proc_children()
    out, stack = [], list(kids.get(root, []))
    while stack:
        pid = stack.pop()
        if pid not in out:
            out.append(pid)
            stack.extend(kids.get(pid, []))
    return out


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()[0]


def stop_tree(root, stopped):
    """SIGSTOP to root, then to all its descendants until no new one shows up (a child
    forked just before the postmaster stopped). Each stopped pid is appended to `stopped`
    at once (root first), so that cleanup finds it even after an interruption."""
    stopped.append(root)
    os.kill(root, signal.SIGSTOP)
    for _ in range(20):
        new = [p for p in descendants(root) if p not in stopped]
        if not new:
            break
        for p in new:
            stopped.append(p)
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
    return stopped


def cont_tree(pids):
    """SIGCONT to every pid stop_tree() stopped (children first, the postmaster last)."""
    for p in reversed(pids):
        try:
            os.kill(p, signal.SIGCONT)
        except ProcessLookupError:
            pass


def setup_pgvigil(env, pgbin, binary, target, cluster, switchover):
    """pgvigil in front of the three nodes. Its admin API listens only for a switchover,
    then with a token (written into the temp dir) and every backend's data_dir, so that
    pgvigil can stop the old primary, pg_rewind it and start it as a standby. Returns
    (process, port, log file name, admin: {url, token} or None)."""
    port = pb.free_port()
    env.write("users.toml", f'{USER} = "{PASSWORD}"\n')
    health = "".join(f"{k} = {v}\n" for k, v in PGVIGIL_HEALTH[target].items())
    dirs = data_dirs(cluster)
    backends = "".join(f'\n[[backends]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {sport}\n'
                       + (f'data_dir = "{env.path(dirs[name])}"\n' if switchover else "")
                       for name, sport in [("pg0", cluster["port"])] +
                       [(n, p) for n, _, p in cluster["standbys"]])
    admin = None
    if switchover:
        admin_port = pb.free_port()
        token = secrets.token_hex(24)
        token_file = env.write("admin.token", token + "\n")
        admin = {"url": f"http://127.0.0.1:{admin_port}", "token": token}
        admin_conf = f'listen = "127.0.0.1:{admin_port}"\ntoken_file = "{token_file}"\n'
        # The PostgreSQL programs of this cluster's version for stop, pg_rewind and start.
        failover_conf = f'\n[failover]\npg_bindir = "{pgbin}"\n'
    else:
        admin_conf = 'listen = ""\n'
        failover_conf = ""
    conf = env.write(f"{target}.toml", f"""[admin]
{admin_conf}
[proxy]
listen = "127.0.0.1:{port}"

[auth]
method = "scram-sha-256"
users_file = "users.toml"

[health_check]
user = "{USER}"
{health}{failover_conf}
[log]
level = "info"
{backends}""")
    r = subprocess.run([binary, "check-config", "--config", conf], capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"pgvigil check-config failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    p = env.spawn(target, [binary, "run", "--config", conf], f"{target}.log", signal.SIGINT,
                  as_server_user=False)
    pb.wait_ready(pgbin, target, port, p, env.path(f"{target}.log"))
    pb.wait_nodes_up(pgbin, target, port, 3)
    if admin:
        admin["users"] = run_users(p.pid, env, dirs)
    return p, port, f"{target}.log", admin


def run_users(pid, env, dirs):
    """Who pgvigil runs as and who owns the data directories: pgvigil runs pg_ctl and
    pg_rewind as the data directory's owner, which must be the server user (PostgreSQL
    refuses root)."""
    uid = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
    except OSError:
        pass
    owners = {n: os.stat(env.path(d)).st_uid for n, d in dirs.items()}
    name = lambda u: pwd.getpwuid(u).pw_name if u is not None else None
    out = {"pgvigil": name(uid), "data_dirs": {n: name(u) for n, u in owners.items()}}
    if any(u == 0 for u in owners.values()):
        raise BenchError(f"a data directory belongs to root ({out}): PostgreSQL would not run")
    return out


FAILOVER_SH = """#!/bin/sh
# failover_command: promote the standby that received the most WAL.
# Arguments: %d %h %p %D %m %H %M %P %r %R %N %S
FAILED="$1"; NEW_MAIN="$5"; OLD_PRIMARY="$8"
PSQL="{psql}"
export PGPASSWORD='{password}' PGCONNECT_TIMEOUT=3 PGSSLMODE=disable
say() {{ echo "failover.sh $(date +%H:%M:%S.%N | cut -c1-12): $*"; }}
say "node $FAILED detached (old primary $OLD_PRIMARY, Pgpool's new main node $NEW_MAIN)"
if [ "$FAILED" != "$OLD_PRIMARY" ]; then say "not the primary: nothing to promote"; exit 0; fi
{switchover}BEST=""; BEST_LSN=-1
for NODE in {nodes}; do
    ID=${{NODE%%:*}}; PORT=${{NODE##*:}}
    [ "$ID" = "$FAILED" ] && continue
    R=$("$PSQL" -X -At -h 127.0.0.1 -p "$PORT" -U {user} -d postgres -c \\
        "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) - '0/0'" 2>&1)
    if [ $? -ne 0 ]; then say "node $ID unreachable: $R"; continue; fi
    INREC=${{R%%|*}}; LSN=${{R##*|}}
    say "node $ID in_recovery=$INREC received_lsn=$LSN"
    [ "$INREC" = "t" ] || continue
    if [ "$LSN" -gt "$BEST_LSN" ]; then BEST="$ID:$PORT"; BEST_LSN="$LSN"; fi
done
if [ -z "$BEST" ]; then say "no standby to promote"; exit 1; fi
ID=${{BEST%%:*}}; PORT=${{BEST##*:}}
say "promoting node $ID (port $PORT)"
R=$("$PSQL" -X -At -h 127.0.0.1 -p "$PORT" -U {user} -d postgres -c "SELECT pg_promote()" 2>&1)
say "pg_promote() on node $ID: $R"
[ "$R" = "t" ] || exit 1
exit 0
"""

# The part of failover.sh for a switchover (pcp_promote_node -s: Pgpool-II has detached the
# old primary, which still runs, and passes the node asked for as %m): stop the old primary
# cleanly first (a fast shutdown sends all its WAL to the standbys before it exits, so the
# promoted one has every acknowledged commit), then promote that node.
FAILOVER_SH_SWITCHOVER = """# Switchover: the old primary still runs.
say "switchover to node $NEW_MAIN: stopping node $FAILED (pg_ctl stop -m fast)"
R=$("{pg_ctl}" stop -D "$4" -m fast -w -t 60 2>&1)
say "pg_ctl stop of node $FAILED: rc=$? $R"
PORT=""
for NODE in {nodes}; do [ "${{NODE%%:*}}" = "$NEW_MAIN" ] && PORT=${{NODE##*:}}; done
if [ -z "$PORT" ] || [ "$NEW_MAIN" = "$FAILED" ]; then say "no node $NEW_MAIN to promote"; exit 1; fi
R=$("$PSQL" -X -At -h 127.0.0.1 -p "$PORT" -U {user} -d postgres -c "SELECT pg_promote()" 2>&1)
say "pg_promote() on node $NEW_MAIN: $R"
[ "$R" = "t" ] || exit 1
exit 0
"""

FOLLOW_SH = """#!/bin/sh
# follow_primary_command: point a standby at the new primary (slot + primary_conninfo +
# reload; no restart, no pg_rewind), then attach it again in Pgpool-II.
# Arguments: %d %h %p %D %m %H %M %P %r %R
NODE="$1"; HOST="$2"; PORT="$3"; NEW_PRIMARY="$5"; NEW_HOST="$6"; NEW_PORT="$9"
PSQL="{psql}"
export PGPASSWORD='{password}' PGCONNECT_TIMEOUT=3 PGSSLMODE=disable PCPPASSFILE='{pcppass}'
say() {{ echo "follow_primary.sh $(date +%H:%M:%S.%N | cut -c1-12): $*"; }}
say "node $NODE ($HOST:$PORT) to follow node $NEW_PRIMARY ($NEW_HOST:$NEW_PORT)"
R=$("$PSQL" -X -At -h "$HOST" -p "$PORT" -U {user} -d postgres -c "SELECT pg_is_in_recovery()" 2>&1)
{rejoin}if [ "$R" != "t" ]; then say "node $NODE not running as a standby ($R): skipped, stays detached"; exit 0; fi
SLOT="pg$NODE"
R=$("$PSQL" -X -At -h "$NEW_HOST" -p "$NEW_PORT" -U {user} -d postgres \\
    -c "SELECT pg_create_physical_replication_slot('$SLOT')" 2>&1) || say "slot $SLOT: $R"
R=$("$PSQL" -X -At -h "$HOST" -p "$PORT" -U {user} -d postgres -v ON_ERROR_STOP=1 \\
    -c "ALTER SYSTEM SET primary_conninfo = 'host=$NEW_HOST port=$NEW_PORT user={user} password={password} application_name=pg$NODE'" \\
    -c "ALTER SYSTEM SET primary_slot_name = '$SLOT'" \\
    -c "SELECT pg_reload_conf()" 2>&1)
if [ $? -ne 0 ]; then say "re-pointing node $NODE failed: $R"; exit 1; fi
say "node $NODE re-pointed; pcp_attach_node"
R=$({pcp_attach} -h 127.0.0.1 -p {pcp_port} -U {user} -w -n "$NODE" 2>&1)
RC=$?
say "pcp_attach_node $NODE: rc=$RC $R"
exit $RC
"""

# The part of follow_primary.sh for a switchover: the old primary (%P), stopped by
# failover.sh, is rewound from the new primary and started as its standby, as Pgpool-II's
# sample follow_primary.sh does it, then attached again.
FOLLOW_SH_REJOIN = """if [ "$R" != "t" ] && [ "$NODE" = "$8" ]; then
    DATA="$4"
    say "node $NODE is the old primary: pg_rewind from node $NEW_PRIMARY, start as its standby"
    if "{pg_ctl}" status -D "$DATA" >/dev/null 2>&1; then
        R=$("{pg_ctl}" stop -D "$DATA" -m fast -w -t 60 2>&1) || {{ say "pg_ctl stop failed: $R"; exit 1; }}
    fi
    SLOT="pg$NODE"
    R=$("$PSQL" -X -At -h "$NEW_HOST" -p "$NEW_PORT" -U {user} -d postgres \\
        -c "SELECT pg_create_physical_replication_slot('$SLOT')" 2>&1) || say "slot $SLOT: $R"
    R=$("$PSQL" -X -At -h "$NEW_HOST" -p "$NEW_PORT" -U {user} -d postgres -c "CHECKPOINT" 2>&1) || say "checkpoint: $R"
    R=$("{pg_rewind}" --target-pgdata="$DATA" -R \\
        --source-server="host=$NEW_HOST port=$NEW_PORT user={user} dbname=postgres application_name=pg$NODE" 2>&1)
    if [ $? -ne 0 ]; then say "pg_rewind failed: $R"; exit 1; fi
    say "pg_rewind: $(echo "$R" | tail -n 1)"
    echo "primary_slot_name = '$SLOT'" >> "$DATA/postgresql.auto.conf"
    R=$("{pg_ctl}" start -D "$DATA" -w -t 60 -l "$DATA/rejoin.log" -o "-p $PORT" 2>&1)
    if [ $? -ne 0 ]; then say "pg_ctl start failed: $R"; exit 1; fi
    say "node $NODE started as a standby of node $NEW_PRIMARY; pcp_attach_node"
    R=$({pcp_attach} -h 127.0.0.1 -p {pcp_port} -U {user} -w -n "$NODE" 2>&1)
    RC=$?
    say "pcp_attach_node $NODE: rc=$RC $R"
    exit $RC
fi
"""


def setup_pgpool(env, pgbin, binary, target, cluster, switchover):
    """Pgpool-II in front of the three nodes, with the failover and follow scripts (for a
    switchover with their switchover parts). Returns (process, port, log file name, PCP:
    {port, pcppass, bindir})."""
    port, pcp_port = pb.free_port(), pb.free_port()
    env.write("pool_passwd", f"{USER}:TEXT{PASSWORD}\n")
    env.write("pcp.conf", f"{USER}:{hashlib.md5(PASSWORD.encode()).hexdigest()}\n")
    pcppass = env.write("pcppass", f"127.0.0.1:{pcp_port}:{USER}:{PASSWORD}\n")
    os.makedirs(env.path("pgpool_log"), exist_ok=True)
    env.chown(env.path("pgpool_log"))
    nodes = [("pg0", cluster["port"], "pgdata")] + [(n, p, f"{n}data") for n, _, p in cluster["standbys"]]
    psql_bin = os.path.join(pgbin, "psql")
    node_list = " ".join(f"{i}:{p}" for i, (_, p, _) in enumerate(nodes))
    pg_ctl, pg_rewind = os.path.join(pgbin, "pg_ctl"), os.path.join(pgbin, "pg_rewind")
    fo = env.write("failover.sh", FAILOVER_SH.format(
        psql=psql_bin, password=PASSWORD, user=USER, nodes=node_list,
        switchover=FAILOVER_SH_SWITCHOVER.format(pg_ctl=pg_ctl, nodes=node_list, user=USER)
        if switchover else ""), 0o755)
    follow_line = "follow_primary_command = ''\n"
    pcp_attach = os.path.join(os.path.dirname(binary), "pcp_attach_node")
    if target == "pgpool":
        if not os.access(pcp_attach, os.X_OK):
            raise BenchError(f"{pcp_attach} not found (it comes with pgpool2)")
        rejoin = FOLLOW_SH_REJOIN.format(pg_ctl=pg_ctl, pg_rewind=pg_rewind, user=USER, pcp_attach=pcp_attach,
                                         pcp_port=pcp_port) if switchover else ""
        fp = env.write("follow_primary.sh", FOLLOW_SH.format(
            psql=psql_bin, password=PASSWORD, user=USER, pcppass=pcppass, pcp_attach=pcp_attach,
            pcp_port=pcp_port, rejoin=rejoin), 0o755)
        follow_line = f"follow_primary_command = '{fp} %d %h %p %D %m %H %M %P %r %R'\n"
    backends = "".join(f"""backend_hostname{i} = '127.0.0.1'
backend_port{i} = {p}
backend_weight{i} = 1
backend_data_directory{i} = '{env.path(d)}'
backend_flag{i} = 'ALLOW_TO_FAILOVER'
backend_application_name{i} = '{n}'
""" for i, (n, p, d) in enumerate(nodes))
    health = "".join(f"{k} = {v}\n" for k, v in PGPOOL_HEALTH.items())
    conf = env.write("pgpool.conf", f"""backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = {port}
socket_dir = '{env.dir}'
pcp_listen_addresses = '127.0.0.1'
pcp_port = {pcp_port}
pcp_socket_dir = '{env.dir}'
wd_ipc_socket_dir = '{env.dir}'
{backends}enable_pool_hba = off
pool_passwd = 'pool_passwd'
allow_clear_text_frontend_auth = off
num_init_children = 32
max_pool = 4
load_balance_mode = on
{health}health_check_user = '{USER}'
health_check_password = ''
sr_check_period = 10
sr_check_user = '{USER}'
sr_check_password = ''
failover_command = '{fo} %d %h %p %D %m %H %M %P %r %R %N %S'
{follow_line}failover_on_backend_error = on
use_watchdog = off
memory_cache_enabled = off
ssl = off
log_destination = 'stderr'
logging_collector = off
log_min_messages = log
log_connections = off
pid_file_name = '{env.path('pgpool.pid')}'
logdir = '{env.path('pgpool_log')}'
""")
    p = env.spawn(target, [binary, "-n", "-D", "-f", conf, "-F", env.path("pcp.conf")],
                  f"{target}.log", signal.SIGINT)
    pb.wait_ready(pgbin, "Pgpool-II", port, p, env.path(f"{target}.log"))
    pb.wait_nodes_up(pgbin, target, port, 3)
    pcp = {"port": pcp_port, "pcppass": pcppass, "bindir": os.path.dirname(binary)}
    return p, port, f"{target}.log", pcp


# --------------------------------------------------------------------------- one trial


def request_switchover(target, ctl):
    """Asks the proxy to hand the primary role over to SWITCHOVER_TO; returns how, the
    answer's status (HTTP status, or the exit status of pcp_promote_node), whether it
    reports success, and its message. Never the token."""
    if target.startswith("pgvigil"):
        how = f"POST /switchover {{\"to\": \"{SWITCHOVER_TO}\"}}"
        req = urllib.request.Request(ctl["url"] + "/switchover", method="POST",
                                     data=json.dumps({"to": SWITCHOVER_TO}).encode(),
                                     headers={"Authorization": f"Bearer {ctl['token']}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        except OSError as e:  # URLError, timeout
            return {"how": how, "status": None, "ok": False, "message": f"no answer: {e}"}
        text = body.decode(errors="replace")
        try:
            doc = json.loads(text)
            text = doc.get("message") or doc.get("error") or text
        except ValueError:
            pass
        return {"how": how, "status": f"HTTP {status}", "ok": status == 200, "message": text[:2000]}
    node = int(SWITCHOVER_TO[2:])
    cmd = [os.path.join(ctl["bindir"], "pcp_promote_node"), "-h", "127.0.0.1", "-p", str(ctl["port"]),
           "-U", USER, "-w", "-n", str(node), "-s"]
    how = f"pcp_promote_node -n {node} -s"
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=REQUEST_TIMEOUT_S,
                           env=dict(os.environ, PCPPASSFILE=ctl["pcppass"]))
    except subprocess.TimeoutExpired:
        return {"how": how, "status": None, "ok": False, "message": f"no answer within {REQUEST_TIMEOUT_S:g}s"}
    return {"how": how, "status": f"exit {r.returncode}", "ok": r.returncode == 0,
            "message": (r.stdout + r.stderr).strip()[:2000]}


def trial(args, pgbin, bins, target, fault, run_no):
    env = pb.Env(args.keep)
    mode = "sync" if args.sync else "async"
    res = {"target": target, "fault": fault, "mode": mode, "run": run_no,
           "dir": env.dir if args.keep else None}
    sessions, monitor = [], None
    stopped, pg_pid = [], None
    cluster, proxy = None, None
    switchover = fault == "switchover"
    observe = args.observe if args.observe is not None else OBSERVE_DEFAULT[fault]
    what = f"{target} {fault} {mode} run {run_no}"
    try:
        cluster = setup_cluster(env, pgbin, args.sync, rewindable=switchover)
        res["postgres"] = cluster["version"]
        if target.startswith("pgvigil"):
            proxy, port, logname, ctl = setup_pgvigil(env, pgbin, bins["pgvigil"], target, cluster, switchover)
            if ctl:
                res["run_as"] = ctl["users"]
        else:
            proxy, port, logname, ctl = setup_pgpool(env, pgbin, bins["pgpool"], target, cluster, switchover)
        log(f"{what}: proxy on 127.0.0.1:{port}, {args.sessions} sessions"
            + (f"; pgvigil runs as {ctl['users']['pgvigil']}, data directories belong to "
               f"{', '.join(sorted(set(ctl['users']['data_dirs'].values())))}" if switchover and "users" in ctl else ""))

        # After a switchover the old primary pg0 is watched too (does it stream from the new one).
        monitor = Monitor(([("pg0", cluster["port"])] if switchover else [])
                          + [(n, p) for n, _, p in cluster["standbys"]])
        n_writers = args.sessions // 2
        for i in range(args.sessions):
            role = "writer" if i < n_writers else "reader"
            sessions.append(Session(i if role == "writer" else i - n_writers, role, port,
                                    args.interval_ms / 1000, args.stmt_timeout))
        for s in sessions:
            s.start()
        for s in sessions:
            if not s.ready.wait(15) or s.conn is None:
                raise BenchError(f"{target}: probe session {s.name} could not connect: "
                                 f"{s.errors[-1]['message'] if s.errors else 'no answer'}")
        time.sleep(args.warmup)
        monitor.start()
        time.sleep(0.3)  # a first monitor sample before the fault

        # ---- the fault
        pg_pid = cluster["proc"].pid
        t_fault = time.monotonic()
        t_answer = None
        if fault == "kill":
            os.kill(pg_pid, signal.SIGKILL)
            log(f"{what}: SIGKILL to the primary's postmaster (pid {pg_pid})")
        elif switchover:
            log(f"{what}: switchover to {SWITCHOVER_TO} requested")
            answer = request_switchover(target, ctl)
            t_answer = time.monotonic()
            answer["answered_at_s"] = round(t_answer - t_fault, 3)
            res["switchover"] = answer
            log(f"{what}: answered after {answer['answered_at_s']:.2f} s: {answer['status']} {answer['message'][:300]}")
        else:
            stop_tree(pg_pid, stopped)
            not_stopped = [p for p in stopped if proc_state(p) not in ("T", None)]
            res["stopped_processes"] = len(stopped)
            log(f"{what}: SIGSTOP to the primary's postmaster (pid {pg_pid}) and its "
                f"{len(stopped) - 1} child processes"
                + (f"; NOT stopped yet: {not_stopped}" if not_stopped else ""))
        time.sleep(observe)
        t_end = time.monotonic()

        # ---- final state, still with the probe window closed at t_end (and, for `stop`,
        # the old primary still stopped)
        for s in sessions:
            s.stop(t_end)
        monitor.stopping.set()
        # One shared deadline: a session still waiting for a connection the proxy does not
        # accept cannot be unblocked, and its results up to t_end are in already.
        deadline = time.monotonic() + 3
        for s in sessions + [monitor]:
            s.join(max(0.0, deadline - time.monotonic()))
        res.update(analyse(sessions, monitor, cluster, t_fault, t_end, t_answer))
        nodes = pb.pool_nodes(pgbin, port)
        res["proxy_nodes_at_end"] = nodes
        pg0 = next((n for n in nodes or [] if n.get("port") == str(cluster["port"])), None)
        res["old_primary_status_in_proxy_at_end"] = pg0.get("status") if pg0 else None
        res["proxy_alive_at_end"] = proxy.poll() is None
        res["proxy_log"] = interesting_log_lines(env.path(logname))
        res["proxy_log_counts"] = pb.scan_log(env.path(logname))
        if res["dir"] is None:
            del res["dir"]
        return res
    finally:
        for s in sessions:
            s.stop(0)
        if monitor is not None:
            monitor.stopping.set()
        if stopped:
            # Everything stop_tree() reached, plus anything still under the postmaster.
            cont_tree(stopped + [p for p in descendants(pg_pid) if p not in stopped])
        if switchover and cluster is not None:
            # The proxy first (nothing may start a node again), then the servers it or its
            # scripts started with pg_ctl.
            if proxy is not None:
                env.stop(proxy, signal.SIGINT)
            stop_unmanaged_postmasters(env, cluster)
        env.cleanup()


def analyse(sessions, monitor, cluster, t_fault, t_end, t_answer=None):
    """The trial's measurements; every time in seconds after the fault (for a switchover,
    after the request was sent; `t_answer`: when it was answered)."""
    out = {"observe_s": round(t_end - t_fault, 3)}
    rel = lambda t: round(t - t_fault, 3)
    # -- who was promoted, who follows (monitor samples)
    samples_rel = {name: [(rel(x[0]),) + tuple(x[1:]) for x in samples]
                   for name, samples in monitor.samples.items()}
    ports = {n: p for n, _, p in cluster["standbys"]}
    promoted = {}
    for name, samples in samples_rel.items():
        if name not in ports:
            continue  # the old primary (watched after a switchover)
        for t, inrec, status, sport in samples:
            if t > 0 and inrec is False:
                promoted[name] = t
                break
    out["monitor"] = {name: [list(x) for x in samples] for name, samples in samples_rel.items()}
    new_primary = min(promoted, key=promoted.get) if promoted else None
    out["promoted"] = {k: round(v, 3) for k, v in promoted.items()}
    out["new_primary"] = new_primary
    out["promoted_at_s"] = promoted.get(new_primary) if new_primary else None
    out["split_brain"] = len(promoted) > 1
    follow_t = None
    other = None
    if new_primary:
        others = [n for n in ports if n != new_primary]
        other = others[0] if others else None
        for t, inrec, status, sport in samples_rel.get(other, []):
            if t > promoted[new_primary] and inrec is True and status == "streaming" \
                    and sport == ports[new_primary]:
                follow_t = t
                break
    out["other_standby"] = other
    out["follow_at_s"] = follow_t
    out["follow_after_promotion_s"] = (round(follow_t - promoted[new_primary], 3)
                                       if follow_t is not None else None)
    out["follows_within_5s"] = (follow_t is not None and
                                follow_t - promoted[new_primary] <= FOLLOW_WITHIN_S)
    # -- at the end: ask the nodes directly
    follows_end = None
    present = None
    end_err = None
    if new_primary:
        try:
            c = direct(ports[new_primary], timeout=5)
            present = {int(r[0]) for r in c.query(f"SELECT id FROM {TABLE}")}
            # Whether the new primary replicates synchronously in turn (--sync), and to whom.
            row = c.query("SELECT current_setting('synchronous_standby_names'), (SELECT string_agg("
                          "application_name || ':' || state || ':' || sync_state, ',' ORDER BY application_name) "
                          "FROM pg_stat_replication)")[0]
            out["new_primary_replication_at_end"] = {"synchronous_standby_names": row[0], "standbys": row[1]}
            c.close()
        except (Dropped, PgError) as e:
            end_err = f"reading {TABLE} on {new_primary}: {e}"
        if other:
            try:
                c = direct(ports[other], timeout=5)
                row = c.query("SELECT status, sender_port FROM pg_stat_wal_receiver")
                c.close()
                follows_end = bool(row) and row[0][0] == "streaming" and row[0][1] == str(ports[new_primary])
                out["other_wal_receiver_at_end"] = row[0] if row else None
            except (Dropped, PgError) as e:
                end_err = f"asking {other}: {e}"
    out["follows_at_end"] = follows_end
    if t_answer is not None:
        # -- after a switchover: does the old primary stream from the new one (monitor
        # samples, and asked directly at the end)
        out["answered_at_s"] = rel(t_answer)
        new_port = ports.get(new_primary)
        streams_t = next((t for t, inrec, status, sport in samples_rel.get("pg0", [])
                          if t > 0 and inrec is True and status == "streaming" and new_port is not None
                          and sport == new_port), None)
        out["old_primary_streams_at_s"] = streams_t
        out["old_primary_streams_after_answer_s"] = (round(streams_t - rel(t_answer), 3)
                                                     if streams_t is not None else None)
        out["old_primary_streams_within"] = (streams_t is not None
                                             and streams_t - rel(t_answer) <= REJOIN_WITHIN_S)
        try:
            c = direct(cluster["port"], timeout=5)
            row = c.query("SELECT pg_is_in_recovery(), (SELECT status || ' ' || coalesce(sender_port::text, '') "
                          "FROM pg_stat_wal_receiver)")[0]
            c.close()
            status, _, sport = (row[1] or "none ").partition(" ")
            out["old_primary_at_end"] = {"in_recovery": row[0] == "t", "wal_receiver": status,
                                         "sender_port": int(sport) if sport else None}
            out["old_primary_streams_at_end"] = (row[0] == "t" and status == "streaming"
                                                 and new_port is not None and sport == str(new_port))
        except (Dropped, PgError) as e:
            out["old_primary_at_end"] = {"error": str(e)[:200]}
            out["old_primary_streams_at_end"] = False
    if end_err:
        out["end_error"] = end_err
    # -- sessions
    per = []
    acked, in_doubt = set(), set()
    first_write = None
    node_of = {cluster["port"]: "pg0"}
    node_of.update({p: n for n, _, p in cluster["standbys"]})
    new_port = ports.get(new_primary)
    old_acks_after_fault = 0
    for s in sessions:
        errors = [dict(e, t=rel(e["t"])) for e in s.errors]
        after = [e for e in errors if e["t"] >= 0]
        ok = [(rel(a), rel(b), port) for a, b, port in s.ok]
        ok_after = [x for x in ok if x[0] >= 0]
        drops = [rel(d) for d in s.drops]
        # Longest time without a successful statement, from the last success before the
        # fault to the end of the window.
        ts = [b for _, b, _ in ok if b < 0][-1:] + [b for _, b, _ in ok if b >= 0] + [rel(t_end)]
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        # The servers that answered this session, in order: [[from_s, node], ...].
        served = []
        for _, b, port in ok:
            name = node_of.get(port, str(port))
            if not served or served[-1][1] != name:
                served.append([b, name])
        per.append({
            "session": s.name, "role": s.role,
            "errors_before_fault": len(errors) - len(after),
            "statement_errors": sum(1 for e in after if e["kind"] == "statement"),
            "connect_errors": sum(1 for e in after if e["kind"] == "connect"),
            "dropped": len([d for d in drops if d >= 0]),
            "drops_before_fault": len([d for d in drops if d < 0]),
            "ok_after_fault": len(ok_after),
            "first_ok_after_fault_s": round(ok_after[0][1], 3) if ok_after else None,
            "longest_gap_s": round(max(gaps), 3) if gaps else None,
            "connects": s.connects,
            "served_by": served,
            "errors": after[:30],
            "errors_left_off": max(0, len(after) - 30),
        })
        if s.role == "writer":
            acked.update(x[0] for x in s.acked)
            in_doubt.update(s.in_doubt)
            old_acks_after_fault += sum(1 for _, _, b, port in s.acked
                                       if b >= t_fault and port == cluster["port"])
            # The first write the new primary acknowledged (one the dying primary's
            # orphaned backends still acknowledged right after the fault does not count).
            first = next((b for a, b, port in ok_after if port == new_port), None)
            if first is not None:
                first_write = first if first_write is None else min(first_write, first)
    out["sessions"] = per
    if t_answer is not None:
        # -- the write pause: the longest time between two acknowledged writes (any writer)
        # from the request to PAUSE_AFTER_ANSWER_S after the answer. It starts at the last
        # write acknowledged before the request, and a pause that lasts to the end of that
        # window ends there ("open").
        w_end = t_answer + PAUSE_AFTER_ANSWER_S
        acks = sorted(b for s in sessions if s.role == "writer" for _, _, b, _ in s.acked)
        points = [b for b in acks if b < t_fault][-1:] + [b for b in acks if t_fault <= b <= w_end] + [w_end]
        a, b = max(zip(points, points[1:]), key=lambda ab: ab[1] - ab[0], default=(t_fault, w_end))
        out["write_pause_s"] = round(b - a, 3)
        out["write_pause_from_s"], out["write_pause_to_s"] = rel(a), rel(b)
        out["write_pause_open"] = b == w_end
        out["write_pause_window_s"] = rel(w_end)
        # The same up to the end of the probe, in case a later step pauses writes again.
        points = [b for b in acks if b < t_fault][-1:] + [b for b in acks if t_fault <= b <= t_end] + [t_end]
        out["write_gap_to_end_s"] = round(max((b - a for a, b in zip(points, points[1:])), default=0), 3)
    out["time_to_first_write_s"] = round(first_write, 3) if first_write is not None else None
    out["acked_by_old_primary_after_fault"] = old_acks_after_fault
    out["acked_writes"] = len(acked)
    out["in_doubt_writes"] = len(in_doubt)
    if present is not None:
        lost = sorted(acked - present)
        out["acked_writes_lost"] = len(lost)
        out["lost_ids"] = lost[:50]
        out["in_doubt_committed"] = len(in_doubt & present)
    else:
        out["acked_writes_lost"] = None
    readers = [p for p in per if p["role"] == "reader"]
    writers = [p for p in per if p["role"] == "writer"]
    out["statement_errors"] = sum(p["statement_errors"] for p in per)
    out["connect_errors"] = sum(p["connect_errors"] for p in per)
    out["errors"] = out["statement_errors"] + out["connect_errors"]
    out["readers"], out["writers"] = len(readers), len(writers)
    out["readers_dropped"] = sum(1 for p in readers if p["dropped"])
    out["writers_dropped"] = sum(1 for p in writers if p["dropped"])
    out["drops"] = sum(p["dropped"] for p in per)
    out["readers_with_errors"] = sum(1 for p in readers if p["statement_errors"] or p["connect_errors"])
    gaps = [p["longest_gap_s"] for p in readers if p["longest_gap_s"] is not None]
    out["reader_longest_gap_s"] = max(gaps) if gaps else None
    return out


def interesting_log_lines(path, limit=80):
    keep = re.compile(r"failover|follow|promot|fence|primary|degenerat|detach|attach|failback|switchover|rejoin|rewind|"
                      r"event=|health check|panic", re.I)
    lines = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if keep.search(line):
                    lines.append(line.rstrip()[:300])
    except OSError:
        pass
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])


# --------------------------------------------------------------------------- report


def med(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def num(v):
    """Median of counts: an integer when it is one."""
    if v is None:
        return "-"
    return str(int(v)) if float(v).is_integer() else format(v, ".1f")


def summary(target, fault, mode, runs):
    ok = [r for r in runs if "error" not in r]
    s = {"target": target, "fault": fault, "mode": mode, "runs": len(runs), "completed": len(ok)}
    if not ok:
        return s
    s["time_to_first_write_s"] = med([r["time_to_first_write_s"] for r in ok])
    s["no_write_runs"] = sum(1 for r in ok if r["time_to_first_write_s"] is None)
    for k in ("errors", "statement_errors", "connect_errors", "readers_dropped", "writers_dropped", "drops",
              "acked_writes_lost", "reader_longest_gap_s", "promoted_at_s", "acked_by_old_primary_after_fault",
              "in_doubt_writes", "follow_at_s", "follow_after_promotion_s"):
        s[k] = med([r.get(k) for r in ok])
    s["acked_writes_lost_max"] = max((r["acked_writes_lost"] for r in ok if r.get("acked_writes_lost") is not None),
                                     default=None)
    s["acked_writes_lost_by_run"] = [r.get("acked_writes_lost") for r in ok]
    s["readers"], s["writers"] = ok[0]["readers"], ok[0]["writers"]
    s["follows_within_5s"] = sum(1 for r in ok if r["follows_within_5s"])
    s["follows_at_end"] = sum(1 for r in ok if r["follows_at_end"])
    s["promotions"] = sum(1 for r in ok if r["new_primary"])
    s["old_primary_down_in_proxy"] = sum(1 for r in ok if r.get("old_primary_status_in_proxy_at_end") == "down")
    s["split_brain"] = sum(1 for r in ok if r["split_brain"])
    if fault == "switchover":
        s["answered_at_s"] = med([r.get("answered_at_s") for r in ok])
        s["answers"] = {}
        for r in ok:
            key = str((r.get("switchover") or {}).get("status"))
            s["answers"][key] = s["answers"].get(key, 0) + 1
        s["answers_ok"] = sum(1 for r in ok if (r.get("switchover") or {}).get("ok"))
        s["switchover_how"] = (ok[0].get("switchover") or {}).get("how")
        s["write_pause_s"] = med([r.get("write_pause_s") for r in ok])
        s["write_pause_max_s"] = max((r["write_pause_s"] for r in ok if r.get("write_pause_s") is not None),
                                     default=None)
        s["write_pause_by_run"] = [r.get("write_pause_s") for r in ok]
        s["write_pause_open"] = sum(1 for r in ok if r.get("write_pause_open"))
        s["old_primary_streams_within"] = sum(1 for r in ok if r.get("old_primary_streams_within"))
        s["old_primary_streams_after_answer_s"] = med([r.get("old_primary_streams_after_answer_s") for r in ok])
        s["old_primary_streams_at_s"] = med([r.get("old_primary_streams_at_s") for r in ok])
        s["old_primary_streams_at_end"] = sum(1 for r in ok if r.get("old_primary_streams_at_end"))
    return s


def switchover_cells(s):
    """The switchover columns of a summary row: request answered, write pause, old primary
    streams from the new primary."""
    n = s["completed"]
    answers = ", ".join(f"{k} in {v}/{n}" for k, v in sorted(s["answers"].items()))
    answered = f"{fmt(s['answered_at_s'], '.2f')} ({answers})"
    pause = fmt(s["write_pause_s"], ".2f")
    if s["write_pause_max_s"] is not None and s["write_pause_max_s"] != s["write_pause_s"]:
        pause += f" (max {s['write_pause_max_s']:.2f})"
    if s["write_pause_open"]:
        pause += f"; no write until {PAUSE_AFTER_ANSWER_S:g} s after the answer in {s['write_pause_open']}/{n}"
    if s["old_primary_streams_within"]:
        rejoined = (f"{s['old_primary_streams_within']}/{n} within {REJOIN_WITHIN_S:g} s of the answer, median "
                    f"{fmt(s['old_primary_streams_at_s'], '.2f')} s after the request")
    else:
        rejoined = f"0/{n} within {REJOIN_WITHIN_S:g} s of the answer"
    rejoined += f"; at the end {s['old_primary_streams_at_end']}/{n}"
    return [answered, pause, rejoined]


def table(summaries):
    # The switchover columns only when a switchover was measured: otherwise the table is
    # the one of kill and stop alone.
    sw = any(s["fault"] == "switchover" for s in summaries)
    lines = ["| target | fault | mode | promoted (s) | time to first write (s) "
             "| client-visible errors: total (statements + connects) "
             "| sessions dropped: readers / writers (drops) | acked writes lost "
             "| other standby follows new primary | longest read gap (s) |"
             + (" request answered (s) | write pause (s) | old primary streams from new primary |" if sw else ""),
             "|---|---|---|---|---:|---|---|---|---|---:|" + ("---|---:|---|" if sw else "")]
    for s in summaries:
        head = f"| {s['target']} | {s['fault']} | {s['mode']} "
        if not s.get("completed"):
            lines.append(head + "| no run completed | | | | | | |" + (" | | |" if sw else ""))
            continue
        n = s["completed"]
        promoted = (f"{fmt(s['promoted_at_s'], '.2f')} ({s['promotions']}/{n}"
                    f"; pg0 down in proxy {s['old_primary_down_in_proxy']}/{n})")
        ttfw = fmt(s["time_to_first_write_s"], ".2f")
        if s["no_write_runs"]:
            ttfw += f" (no write in {s['no_write_runs']}/{n} runs)"
        lost = num(s["acked_writes_lost"])
        if s["acked_writes_lost_max"] not in (None, 0) and s["acked_writes_lost_max"] != s["acked_writes_lost"]:
            lost += f" (max {s['acked_writes_lost_max']})"
        if s["follows_within_5s"]:
            follows = (f"{s['follows_within_5s']}/{n} within 5 s, median "
                       f"{fmt(s['follow_after_promotion_s'], '.2f')} s after the promotion "
                       f"({fmt(s['follow_at_s'], '.2f')} s after the fault)")
        else:
            follows = f"0/{n} within 5 s"
        follows += f"; at the end {s['follows_at_end']}/{n}"
        if s["split_brain"]:
            follows += f"; TWO PRIMARIES in {s['split_brain']} runs"
        lines.append(
            head + f"| {promoted} | {ttfw} | {num(s['errors'])} ({num(s['statement_errors'])} + "
            f"{num(s['connect_errors'])}) | {num(s['readers_dropped'])}/{s['readers']} / "
            f"{num(s['writers_dropped'])}/{s['writers']} ({num(s['drops'])}) | {lost} | {follows} | "
            f"{fmt(s['reader_longest_gap_s'], '.2f')} |"
            + ("".join(f" {c} |" for c in (switchover_cells(s) if s["fault"] == "switchover" else ["-"] * 3))
               if sw else ""))
    return "\n".join(lines) + "\n"


def run_line(r):
    what = f"{r['target']} {r['fault']} {r['mode']} run {r['run']}"
    if "error" in r:
        return f"- {what}: FAILED: {r['error'].splitlines()[0][:200]}"
    return (f"- {what}: promoted {r['new_primary'] or 'none'} at {fmt(r['promoted_at_s'], '.2f')} s "
            f"(pg0 in proxy: {r.get('old_primary_status_in_proxy_at_end') or '-'}), "
            f"first write {fmt(r['time_to_first_write_s'], '.2f')} s, "
            f"errors {r['statement_errors']}+{r['connect_errors']}, dropped readers {r['readers_dropped']}/"
            f"{r['readers']} writers {r['writers_dropped']}/{r['writers']} ({r['drops']} drops), acked {r['acked_writes']} "
            f"lost {r['acked_writes_lost']} in doubt {r['in_doubt_writes']} "
            f"(old primary acked {r['acked_by_old_primary_after_fault']} after the fault), "
            f"{r['other_standby'] or '-'} follows at {fmt(r['follow_at_s'], '.2f')} s "
            f"(end: {r['follows_at_end']}), longest read gap {fmt(r['reader_longest_gap_s'], '.2f')} s"
            + (f"; answered {(r.get('switchover') or {}).get('status')} at {fmt(r.get('answered_at_s'), '.2f')} s, "
               f"write pause {fmt(r.get('write_pause_s'), '.2f')} s ({fmt(r.get('write_pause_from_s'), '.2f')} to "
               f"{fmt(r.get('write_pause_to_s'), '.2f')} s{', open' if r.get('write_pause_open') else ''}), "
               f"old primary streams from the new one at {fmt(r.get('old_primary_streams_at_s'), '.2f')} s "
               f"(end: {r.get('old_primary_streams_at_end')})" if r["fault"] == "switchover" else ""))


# --------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs per target; the table shows medians (default 5)")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help="comma list from " + ",".join(ALL_TARGETS) + " (default: " + ",".join(DEFAULT_TARGETS) + ")")
    ap.add_argument("--sessions", type=int, default=8, help="probe sessions, half writing, half reading (default 8)")
    ap.add_argument("--interval-ms", type=int, default=50, help="time between a session's statements (default 50)")
    ap.add_argument("--fault", action="append", metavar="LIST",
                    help="kill (SIGKILL to the primary's postmaster), stop (SIGSTOP to the postmaster "
                         f"and all its children until the end of the probe) and/or switchover (to {SWITCHOVER_TO}, "
                         "asked of the proxy); repeatable or a comma list (default: kill,stop)")
    ap.add_argument("--sync", action="store_true",
                    help=f"synchronous replication: synchronous_standby_names = '{SYNC_NAMES}' "
                         "(default: asynchronous)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of probing before the fault (default 3)")
    ap.add_argument("--observe", type=float, default=None,
                    help="seconds of probing after the fault, for switchover after the answer (default " +
                         ", ".join(f"{v:g} for {k}" for k, v in OBSERVE_DEFAULT.items()) + ")")
    ap.add_argument("--stmt-timeout", type=float, default=15.0,
                    help="seconds a statement or connection attempt may take before the client gives up "
                         "and reconnects (default 15, above pgvigil's write_hold_timeout of 10 s)")
    ap.add_argument("--pgvigil", default=os.path.join(pb.REPO, "target", "release", "pgvigil"),
                    help="pgvigil binary (default: target/release/pgvigil of this repository)")
    ap.add_argument("--pgpool", default="/usr/sbin/pgpool", help="Pgpool-II binary (default /usr/sbin/pgpool)")
    ap.add_argument("--json", metavar="FILE", help="also write every run and the summaries as JSON")
    ap.add_argument("--keep", action="store_true", help="keep each run's temp dir (configs, logs)")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in ALL_TARGETS]
    if bad:
        ap.error(f"unknown target(s): {', '.join(bad)}")
    if args.sessions < 2:
        ap.error("--sessions must be at least 2 (half write, half read)")
    faults = []
    for item in args.fault or [",".join(DEFAULT_FAULTS)]:
        for f in item.split(","):
            f = f.strip()
            if f and f not in faults:
                faults.append(f)
    bad = [f for f in faults if f not in FAULTS]
    if bad or not faults:
        ap.error(f"unknown fault(s): {', '.join(bad) or '(none)'}; choose from {','.join(FAULTS)}")
    mode = "sync" if args.sync else "async"

    pb.stop_on_signals()

    pgbin = pb.find_pg_bin()
    bins = {}
    skipped = {}
    if any(t.startswith("pgvigil") for t in targets):
        if not os.access(args.pgvigil, os.X_OK):
            raise BenchError(f"pgvigil binary {args.pgvigil} not found; pass --pgvigil")
        bins["pgvigil"] = args.pgvigil
    if any(t.startswith("pgpool") for t in targets):
        if os.access(args.pgpool, os.X_OK):
            bins["pgpool"] = args.pgpool
        else:
            for t in [t for t in targets if t.startswith("pgpool")]:
                skipped[t] = f"{args.pgpool} not found (apt-get install -y pgpool2)"
                targets.remove(t)
    for t, why in skipped.items():
        log(f"skipping {t}: {why}")
    versions = {}
    if "pgvigil" in bins:
        versions["pgvigil"] = subprocess.run([bins["pgvigil"], "--version"], capture_output=True,
                                             text=True).stdout.strip()
        st = os.stat(bins["pgvigil"])
        versions["pgvigil_binary"] = (f"{bins['pgvigil']} (modified "
                                      f"{datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec='seconds')})")
    if "pgpool" in bins:
        v = subprocess.run([bins["pgpool"], "--version"], capture_output=True, text=True)
        versions["pgpool"] = (v.stdout + v.stderr).strip()

    results = []
    interrupted = False
    exit_code = 0
    try:
        for run_no in range(1, args.runs + 1):
            for fi, fault in enumerate(faults):
                k = (run_no - 1 + fi) % len(targets)
                for t in targets[k:] + targets[:k]:  # rotate who goes first
                    t0 = time.monotonic()
                    try:
                        r = trial(args, pgbin, bins, t, fault, run_no)
                    except BenchError as e:
                        r = {"target": t, "fault": fault, "mode": mode, "run": run_no, "error": str(e)}
                        exit_code = 1
                    r["wall_s"] = round(time.monotonic() - t0, 1)
                    if "postgres" in r:
                        versions.setdefault("postgres", r["postgres"])
                    if (args.sync or fault == "switchover") and r.get("acked_writes_lost"):
                        exit_code = 1
                    results.append(r)
                    log(run_line(r)[2:])
    except KeyboardInterrupt:
        interrupted = True
        exit_code = 130
        log("interrupted; cleaned up")

    summaries = [summary(t, f, mode, [r for r in results if r["target"] == t and r["fault"] == f])
                 for f in faults for t in targets]
    observe = {f: args.observe if args.observe is not None else OBSERVE_DEFAULT[f] for f in faults}
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "runs": args.runs, "sessions": args.sessions, "interval_ms": args.interval_ms,
        "warmup_s": args.warmup, "observe_s": observe, "stmt_timeout_s": args.stmt_timeout,
        "faults": faults, "mode": mode,
        "synchronous_standby_names": SYNC_NAMES if args.sync else None,
        "pgvigil_health_check": {t: PGVIGIL_HEALTH[t] for t in targets if t in PGVIGIL_HEALTH},
        "pgpool_health_check": PGPOOL_HEALTH,
        "targets": targets, "skipped": skipped, "versions": versions, "interrupted": interrupted,
    }
    try:
        meta["pgvigil_git"] = subprocess.run(["git", "-C", pb.REPO, "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    print()
    print(f"## Failover ({meta['date']}, {meta['cpus']} CPUs, kernel {meta['kernel']})")
    print()
    fault_text = {"kill": "kill = SIGKILL to the primary's postmaster",
                  "stop": "stop = SIGSTOP to the postmaster and all its children until the end of the probe",
                  "switchover": f"switchover = to {SWITCHOVER_TO}: POST /switchover on pgvigil's admin API, "
                                f"pcp_promote_node -s with Pgpool-II; times after the request, the write pause "
                                f"up to {PAUSE_AFTER_ANSWER_S:g} s after the answer"}
    print(f"{args.sessions} sessions ({args.sessions // 2} writers, {args.sessions - args.sessions // 2} readers), "
          f"one statement every {args.interval_ms} ms each; the fault after {args.warmup:g} s ("
          + "; ".join(fault_text[f] for f in faults) + "), then "
          + ", ".join(f"{observe[f]:g} s ({f}{' after the answer' if f == 'switchover' else ''})"
                      for f in faults) + " of probing; "
          + (f"synchronous replication ({SYNC_NAMES})" if args.sync else "asynchronous replication")
          + f"; medians over {args.runs} run(s); "
          + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in versions.items()))
    for t, why in skipped.items():
        print(f"skipped {t}: {why}")
    print()
    print(table(summaries))
    lost = [r for r in results if r.get("acked_writes_lost") and (args.sync or r["fault"] == "switchover")]
    for r in lost:
        why = "with synchronous replication" if args.sync else "after a switchover"
        print(f"WARNING: {r['target']} {r['fault']} run {r['run']}: {r['acked_writes_lost']} acknowledged "
              f"write(s) missing on the promoted {r['new_primary']} {why} "
              f"(ids {r.get('lost_ids', [])[:10]})")
    if lost:
        print()
    print("Runs:")
    for r in results:
        print(run_line(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "summaries": summaries, "runs": results}, f, indent=2)
        print(f"\nJSON written to {args.json}")
    return exit_code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"failover.py: {e}", file=sys.stderr)
        sys.exit(2)
