#!/usr/bin/env python3
"""Benchmark pgvigil against direct PostgreSQL, PgBouncer and Pgpool-II with pgbench.

Everything (a throwaway PostgreSQL primary, its streaming standbys when pgvigil is tested,
the proxies, their configs and logs) lives in one temporary directory that is removed at
the end, also on Ctrl-C or error. Targets alternate round-robin for every (workload, mode,
clients) configuration so that machine noise hits all of them alike.

Usage:  sudo python3 bench/pgbench.py [--quick] [--duration S] [--scale N] [--json out.json]
See bench/README.md.  Python 3.11 standard library only.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ALL_TARGETS = ["direct", "pgbouncer", "pgpool", "pgvigil", "pgvigil-nolb", "pgvigil-causal"]
# What runs without --targets. pgvigil-causal is left out so that the default full run
# keeps its length; ask for it with --targets (see bench/README.md).
DEFAULT_TARGETS = ["direct", "pgbouncer", "pgpool", "pgvigil", "pgvigil-nolb"]
# The [routing] keys of each pgvigil target: read/write routing over the primary and the
# standbys ([routing] defaults); `load_balance = false` (everything on the primary, like
# the other proxies); and load balancing with causal reads (a session reads its own writes).
PGVIGIL_TARGETS = {
    "pgvigil": {"load_balance": "true"},
    "pgvigil-nolb": {"load_balance": "false"},
    "pgvigil-causal": {"load_balance": "true", "causal_reads": "true"},
    # bench/tls.py's TLS target (its [tls] section comes from there).
    "pgvigil-tls": {"load_balance": "false"},
}
DEFAULT_STANDBYS = 2
# pgbench options of each workload. A workload listed in SCRIPTS instead runs that custom
# script, written into the temp dir and passed with -f (plus -s SCALE, which sets :scale).
WORKLOADS = {"select-only": ["-S"], "tpcb-like": [], "write-read": None}
SCRIPTS = {
    # An autocommit write, then a read of the row just written: what causal reads are for.
    "write-read": """\\set aid random(1, 100000 * :scale)
\\set delta random(-5000, 5000)
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
""",
}
# What runs without --workloads; write-read is left out so that the default full run keeps
# its length.
DEFAULT_WORKLOADS = ["select-only", "tpcb-like"]
MODES = ["simple", "extended", "prepared"]
CLIENTS = [16, 64]
THREADS = 2
USER = "postgres"
PASSWORD = "bench"
DBNAME = "postgres"
INSTALL_HINT = "install with: apt-get install -y pgbouncer pgpool2"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchError(Exception):
    pass


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- helpers

_used_ports = set()


def free_port():
    """A currently free TCP port on 127.0.0.1 (not handed out before in this run)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
            return port


def find_pg_bin():
    preferred = "/usr/lib/postgresql/15/bin"
    if os.path.exists(os.path.join(preferred, "postgres")):
        return preferred
    base = "/usr/lib/postgresql"
    versions = []
    if os.path.isdir(base):
        for v in os.listdir(base):
            if os.path.exists(os.path.join(base, v, "bin", "postgres")):
                try:
                    versions.append((float(v), v))
                except ValueError:
                    pass
    if versions:
        return os.path.join(base, max(versions)[1], "bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        d = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if os.path.exists(os.path.join(d, "postgres")):
            return d
    raise BenchError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; "
                     "install with: apt-get install -y postgresql postgresql-contrib")


def find_binary(name, candidates):
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return shutil.which(name)


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
        return "".join(lines[-n:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


def read_stat(pid):
    """(ppid, utime+stime, cutime+cstime) in clock ticks for one process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); field n is rest[n - 3].
    ppid = int(rest[1])
    own = int(rest[11]) + int(rest[12])
    reaped = int(rest[13]) + int(rest[14])
    return ppid, own, reaped


def tree_cpu_ticks(*root_pids):
    """CPU ticks (user+system) used by processes and all their descendants, one value per
    root, from one pass over /proc.

    Living processes count with their own utime+stime (which covers all their threads);
    children that already exited and were reaped are counted in their parent's
    cutime+cstime, so those are added too.
    """
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = read_stat(int(d))
            if st:
                stats[int(d)] = st
    children = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    totals = []
    for root_pid in root_pids:
        total = 0
        stack = [root_pid]
        seen = set()
        while stack:
            pid = stack.pop()
            if pid in seen or pid not in stats:
                continue
            seen.add(pid)
            _, own, reaped = stats[pid]
            total += own + reaped
            stack.extend(children.get(pid, []))
        totals.append(total)
    return totals


# --------------------------------------------------------------------------- processes


class Env:
    """Temp dir, run-as user, and every child process, with cleanup."""

    def __init__(self, keep):
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix="pgvigil-bench-")
        os.chmod(self.dir, 0o755)
        self.procs = []  # (name, Popen, stop_signal)
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise BenchError("running as root but there is no OS user 'postgres' to run "
                                 "PostgreSQL/PgBouncer/Pgpool-II as (install the postgresql package)")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            self.home = pw.pw_dir
        else:
            self.uid, self.gid = None, None
            self.home = os.environ.get("HOME", self.dir)
        self.chown(self.dir)

    def chown(self, path):
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, text, mode=0o600):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, mode)
        self.chown(p)
        return p

    def user_kwargs(self):
        env = dict(os.environ)
        if self.uid is not None:
            env.update(HOME=self.home, USER="postgres", LOGNAME="postgres")
            return dict(user=self.uid, group=self.gid, extra_groups=[], env=env)
        return dict(env=env)

    def run_as(self, cmd, extra_env=None, **kw):
        """Run a short command as the server user; raise with its output on failure."""
        ukw = self.user_kwargs()
        ukw["env"].update(extra_env or {})
        try:
            r = subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True, **ukw, **kw)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{' '.join(cmd)} did not finish within {kw.get('timeout')}s")
        if r.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def spawn(self, name, cmd, logfile, stop_signal, as_server_user=True):
        out = open(self.path(logfile), "ab")
        self.chown(self.path(logfile))
        kw = self.user_kwargs() if as_server_user else {}
        p = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True, **kw)
        out.close()
        self.procs.append((name, p, stop_signal))
        return p

    def stop(self, p, sig, timeout=15):
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The process group holds forked children (pgpool); make sure nothing is left.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def cleanup(self):
        # Proxies first (reverse start order), PostgreSQL last.
        for name, p, sig in reversed(self.procs):
            self.stop(p, sig)
        self.procs.clear()
        if self.keep:
            log(f"kept temp dir {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def client_env(sslmode="disable"):
    env = dict(os.environ)
    env.update(PGPASSWORD=PASSWORD, PGCONNECT_TIMEOUT="5", PGSSLMODE=sslmode, PGAPPNAME="pgbench")
    env.pop("PGSERVICE", None)
    return env


def psql(pgbin, port, *sqls, timeout=30):
    """Run each statement with its own -c (so each is its own transaction)."""
    cmd = [os.path.join(pgbin, "psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", USER,
           "-d", DBNAME, "-v", "ON_ERROR_STOP=1", "-At"]
    for sql in sqls:
        cmd += ["-c", sql]
    return subprocess.run(cmd, capture_output=True, text=True, env=client_env(), timeout=timeout)


def wait_ready(pgbin, name, port, proc, logpath, deadline_s=60):
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode} during startup; "
                             f"log {logpath}:\n{tail(logpath)}")
        try:
            r = psql(pgbin, port, "select 1", timeout=10)
            if r.returncode == 0 and r.stdout.strip() == "1":
                return
            last = (r.stderr or r.stdout).strip()
        except subprocess.TimeoutExpired:
            last = "psql timed out"
        time.sleep(0.2)
    raise BenchError(f"{name} on port {port} did not answer 'select 1' within {deadline_s}s "
                     f"(last error: {last}); log {logpath}:\n{tail(logpath)}")


# --------------------------------------------------------------------------- setup


def setup_postgres(env, pgbin, scale, standbys):
    port = free_port()
    data = env.path("pgdata")
    pwfile = env.write("pwfile", PASSWORD + "\n")
    log(f"initdb ({pgbin})")
    env.run_as([os.path.join(pgbin, "initdb"), "-D", data, "-U", USER, "--pwfile", pwfile,
                "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"])
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"""
# pgvigil bench
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{env.dir}'
max_connections = 300
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
logging_collector = off
log_min_messages = warning
""")
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write("host all all 127.0.0.1/32 scram-sha-256\n")
        if standbys:
            f.write("host replication all 127.0.0.1/32 scram-sha-256\n")
    env.chown(os.path.join(data, "pg_hba.conf"))
    p = env.spawn("postgres", [os.path.join(pgbin, "postgres"), "-D", data], "postgres.log",
                  signal.SIGINT)
    wait_ready(pgbin, "PostgreSQL", port, p, env.path("postgres.log"))
    version = psql(pgbin, port, "show server_version").stdout.strip()
    log(f"PostgreSQL {version} on 127.0.0.1:{port}; pgbench -i -s {scale}")
    r = subprocess.run([os.path.join(pgbin, "pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
                        "-p", str(port), "-U", USER, DBNAME], capture_output=True, text=True,
                       env=client_env())
    if r.returncode != 0:
        raise BenchError(f"pgbench -i failed:\n{r.stdout}{r.stderr}")
    return p, port, version


def setup_standbys(env, pgbin, pgport, n):
    """n streaming hot standbys of the primary: [(name, Popen, port)], names pg1, pg2…

    Each has a physical replication slot, created up front with its WAL reserved (so a
    later backup's checkpoint cannot recycle a segment an earlier one still needs), and is
    cloned with pg_basebackup. The primary's postgresql.conf comes along; only the port
    and hot_standby_feedback (so that pre-run VACUUMs do not cancel standby reads) differ.
    """
    names = [f"pg{i}" for i in range(1, n + 1)]
    r = psql(pgbin, pgport, *[f"select pg_create_physical_replication_slot('{x}', true)" for x in names])
    if r.returncode != 0:
        raise BenchError(f"creating replication slots failed: {r.stderr}")
    out = []
    for name in names:
        port = free_port()
        data = env.path(f"{name}data")
        log(f"standby {name}: pg_basebackup")
        env.run_as([os.path.join(pgbin, "pg_basebackup"), "-D", data, "-X", "stream", "-S", name,
                    "-c", "fast", "--no-sync", "-d",
                    f"host=127.0.0.1 port={pgport} user={USER} application_name={name}"],
                   extra_env={"PGPASSWORD": PASSWORD}, timeout=300)
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"\n# standby {name}\nport = {port}\nhot_standby = on\nhot_standby_feedback = on\n")
        with open(os.path.join(data, "postgresql.auto.conf"), "a") as f:
            f.write(f"primary_conninfo = 'host=127.0.0.1 port={pgport} user={USER} password={PASSWORD} "
                    f"application_name={name}'\nprimary_slot_name = '{name}'\n")
        env.chown(os.path.join(data, "postgresql.auto.conf"))
        with open(os.path.join(data, "standby.signal"), "w"):
            pass
        env.chown(os.path.join(data, "standby.signal"))
        p = env.spawn(name, [os.path.join(pgbin, "postgres"), "-D", data], f"{name}.log", signal.SIGINT)
        wait_ready(pgbin, f"standby {name}", port, p, env.path(f"{name}.log"))
        out.append((name, p, port))
    wait_replayed(pgbin, pgport, out, deadline_s=120)
    log("standbys streaming: " + ", ".join(f"{n} on 127.0.0.1:{p}" for n, _, p in out))
    return out


def wait_replayed(pgbin, pgport, standbys, deadline_s=60):
    """Wait until every standby has replayed the primary's current WAL position."""
    if not standbys:
        return
    r = psql(pgbin, pgport, "select pg_current_wal_lsn()")
    if r.returncode != 0:
        raise BenchError(f"pg_current_wal_lsn() failed: {r.stderr}")
    lsn = r.stdout.strip()
    deadline = time.monotonic() + deadline_s
    for name, proc, port in standbys:
        while True:
            r = psql(pgbin, port, f"select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn", timeout=10)
            if r.returncode == 0 and r.stdout.strip() == "t":
                break
            if proc.poll() is not None:
                raise BenchError(f"standby {name} exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise BenchError(f"standby {name} did not replay up to {lsn} within {deadline_s}s "
                                 f"({(r.stderr or r.stdout).strip()})")
            time.sleep(0.1)


def setup_pgvigil(env, pgbin, binary, pgport, target, standbys, max_clients=500, extra=""):
    """pgvigil in front of the primary (pg0) and the standbys; `target` picks the [routing]
    keys (PGVIGIL_TARGETS)."""
    port = free_port()
    env.write("users.toml", f'{USER} = "{PASSWORD}"\n')
    backends = "".join(f"""
[[backends]]
name = "{name}"
host = "127.0.0.1"
port = {sport}
""" for name, _, sport in standbys)
    routing = "".join(f"{k} = {v}\n" for k, v in PGVIGIL_TARGETS[target].items())
    conf = env.write(f"{target}.toml", f"""[admin]
listen = ""

[proxy]
listen = "127.0.0.1:{port}"
max_clients = {max_clients}

[pool]
size = 70

[auth]
method = "scram-sha-256"
users_file = "users.toml"

[health_check]
user = "{USER}"

[log]
level = "warn"

[routing]
{routing}
{extra}
[[backends]]
name = "pg0"
host = "127.0.0.1"
port = {pgport}
{backends}""")
    r = subprocess.run([binary, "check-config", "--config", conf], capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"pgvigil check-config failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    # pgvigil runs as the invoking user (it does not need to be anyone in particular).
    p = env.spawn(target, [binary, "run", "--config", conf], f"{target}.log", signal.SIGINT,
                  as_server_user=False)
    wait_ready(pgbin, target, port, p, env.path(f"{target}.log"))
    if standbys:
        wait_nodes_up(pgbin, target, port, 1 + len(standbys))
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    return p, port, version


# Ports of the pgvigil instances that answer SHOW POOL_NODES (probed once, at setup).
_pool_nodes_ports = set()


def pool_nodes(pgbin, port):
    """`SHOW POOL_NODES` through pgvigil as [{column: value}], or None when not answered."""
    cmd = [os.path.join(pgbin, "psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", USER,
           "-d", DBNAME, "-A", "-F", "|", "-P", "footer=off", "-c", "SHOW POOL_NODES"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=client_env(), timeout=10)
    except subprocess.TimeoutExpired:
        return None
    lines = r.stdout.splitlines()
    if r.returncode != 0 or len(lines) < 2:
        return None
    header = lines[0].split("|")
    return [dict(zip(header, line.split("|"))) for line in lines[1:]]


def wait_nodes_up(pgbin, target, port, n, deadline_s=20):
    """Wait until pgvigil's SHOW POOL_NODES lists n nodes up, so that the first sessions
    of the first run already see the standbys. Without SHOW POOL_NODES, wait three health
    check intervals instead."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        nodes = pool_nodes(pgbin, port)
        if nodes is None:
            log(f"{target}: SHOW POOL_NODES not answered; waiting 3 s for the health checks")
            time.sleep(3)
            return
        _pool_nodes_ports.add(port)
        if sum(1 for x in nodes if x.get("status") == "up") >= n:
            return
        time.sleep(0.2)
    raise BenchError(f"{target} did not report {n} nodes up in SHOW POOL_NODES within {deadline_s}s")


def setup_pgbouncer(env, pgbin, binary, pgport, max_client_conn=200, extra="", name="pgbouncer"):
    port = free_port()
    env.write("pgbouncer_users.txt", f'"{USER}" "{PASSWORD}"\n')
    conf = env.write(f"{name}.ini", f"""[databases]
{DBNAME} = host=127.0.0.1 port={pgport} dbname={DBNAME}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {env.path('pgbouncer_users.txt')}
pool_mode = session
default_pool_size = 70
max_client_conn = {max_client_conn}
max_db_connections = 0
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
logfile = {env.path(f'{name}.log')}
pidfile = {env.path(f'{name}.pid')}
log_connections = 0
log_disconnections = 0
{extra}""")
    # pgbouncer refuses to run as root, so it runs as the server user.
    p = env.spawn(name, [binary, conf], f"{name}.stderr", signal.SIGTERM)
    wait_ready(pgbin, "PgBouncer", port, p, env.path(f"{name}.log"))
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return p, port, version


def setup_pgpool(env, pgbin, binary, pgport, num_init_children=70):
    port = free_port()
    pcp_port = free_port()
    env.write("pool_passwd", f"{USER}:TEXT{PASSWORD}\n")
    env.write("pcp.conf", f"{USER}:{hashlib.md5(PASSWORD.encode()).hexdigest()}\n")
    env.write("pool_hba.conf", "host all all 127.0.0.1/32 scram-sha-256\n")
    os.makedirs(env.path("pgpool_log"), exist_ok=True)
    env.chown(env.path("pgpool_log"))
    conf = env.write("pgpool.conf", f"""backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = {port}
socket_dir = '{env.dir}'
pcp_listen_addresses = '127.0.0.1'
pcp_port = {pcp_port}
pcp_socket_dir = '{env.dir}'
wd_ipc_socket_dir = '{env.dir}'
backend_hostname0 = '127.0.0.1'
backend_port0 = {pgport}
backend_weight0 = 1
backend_data_directory0 = '{env.path('pgdata')}'
backend_flag0 = 'ALLOW_TO_FAILOVER'
enable_pool_hba = off
pool_passwd = 'pool_passwd'
allow_clear_text_frontend_auth = off
num_init_children = {num_init_children}
reserved_connections = 0
max_pool = 1
child_life_time = 0
child_max_connections = 0
connection_life_time = 0
client_idle_limit = 0
connection_cache = on
load_balance_mode = off
health_check_period = 0
health_check_user = '{USER}'
health_check_password = ''
sr_check_period = 0
sr_check_user = '{USER}'
sr_check_password = ''
failover_on_backend_error = off
use_watchdog = off
memory_cache_enabled = off
ssl = off
log_destination = 'stderr'
logging_collector = off
log_min_messages = warning
log_connections = off
pid_file_name = '{env.path('pgpool.pid')}'
logdir = '{env.path('pgpool_log')}'
""")
    p = env.spawn("pgpool", [binary, "-n", "-D", "-f", conf, "-F", env.path("pcp.conf")],
                  "pgpool.log", signal.SIGINT)
    wait_ready(pgbin, "Pgpool-II", port, p, env.path("pgpool.log"))
    version = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return p, port, (version.stdout + version.stderr).strip()


# --------------------------------------------------------------------------- running


def parse_pgbench(out):
    def num(pattern, cast=float):
        m = re.search(pattern, out, re.M)
        return cast(m.group(1)) if m else None

    return {
        "tps": num(r"^tps = ([\d.]+) \(without initial connection time\)"),
        "latency_ms": num(r"^latency average = ([\d.]+) ms"),
        "transactions": num(r"^number of transactions actually processed: (\d+)", int),
        "failed": num(r"^number of failed transactions: (\d+)", int),
        "aborted_clients": len(re.findall(r"client \d+ aborted", out)),
        "connection_ms": num(r"^initial connection time = ([\d.]+) ms"),
    }


def run_one(pgbin, target, port, proc, cluster, workload, wl_args, mode, clients, duration, sslmode="disable"):
    pg_proc, pgport, standbys = cluster["proc"], cluster["port"], cluster["standbys"]
    # Same starting state for every run: what pgbench does itself without -n, done here
    # directly against PostgreSQL so that no proxy is involved in the maintenance.
    r = psql(pgbin, pgport, "vacuum pgbench_branches", "vacuum pgbench_tellers",
             "truncate pgbench_history", "checkpoint", timeout=120)
    if r.returncode != 0:
        raise BenchError(f"pre-run maintenance failed: {r.stderr}")
    # Standbys start every run caught up, so none is skipped for lag at the start.
    wait_replayed(pgbin, pgport, standbys)
    cmd = [os.path.join(pgbin, "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(port), "-U", USER,
           "-M", mode, "-c", str(clients), "-j", str(THREADS), "-T", str(duration)]
    cmd += wl_args + [DBNAME]
    res = {"target": target, "workload": workload, "mode": mode, "clients": clients,
           "command": " ".join(cmd)}
    if proc is not None and proc.poll() is not None:
        res.update(rc=None, error=f"{target} is not running (exited with code {proc.returncode})")
        return res
    nodes0 = pool_nodes(pgbin, port) if port in _pool_nodes_ports else None
    pg_pids = [pg_proc.pid] + [p.pid for _, p, _ in standbys]
    ticks0 = tree_cpu_ticks(*pg_pids, *([proc.pid] if proc is not None else []))
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=client_env(sslmode), timeout=duration + 120)
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")) \
            + f"\npgbench did not finish within {duration + 120}s and was killed"
    wall = time.monotonic() - t0
    ticks1 = tree_cpu_ticks(*pg_pids, *([proc.pid] if proc is not None else []))
    # Per process tree: the primary, each standby, then the proxy (if any).
    used = [(b - a) / CLK_TCK for a, b in zip(ticks0, ticks1)]
    nodes1 = pool_nodes(pgbin, port) if nodes0 is not None else None
    res.update(parse_pgbench(out + "\n" + err))
    res.update(rc=rc, wall_s=round(wall, 3))
    errors = [l for l in err.splitlines() if "error" in l.lower() or "abort" in l.lower() or "fatal" in l.lower()]
    if rc != 0 or res["tps"] is None:
        res["error"] = "\n".join(errors[:5]) or err.strip()[-500:] or f"pgbench exit code {rc}"
    elif errors:
        res["error"] = "\n".join(errors[:5])
    tx = res.get("transactions") or 0
    if proc is not None:
        cpu_s = used[-1]
        res["proxy_cpu_s"] = round(cpu_s, 3)
        if tx:
            res["proxy_cpu_us_per_tx"] = round(cpu_s * 1e6 / tx, 2)
            res["proxy_cpu_s_per_10k_tx"] = round(cpu_s * 1e4 / tx, 4)
    # PostgreSQL's CPU: every node of the cluster (standbys replay WAL for every target).
    pg_s = sum(used[:len(pg_pids)])
    res["postgres_cpu_s"] = round(pg_s, 3)
    if standbys:
        res["postgres_cpu_s_by_node"] = {"pg0": round(used[0], 3)}
        res["postgres_cpu_s_by_node"].update(
            {name: round(u, 3) for (name, _, _), u in zip(standbys, used[1:len(pg_pids)])})
    if tx:
        res["postgres_cpu_us_per_tx"] = round(pg_s * 1e6 / tx, 2)
    if nodes0 is not None and nodes1 is not None:
        # Reads pgvigil sent to each node during the run (SHOW POOL_NODES select_cnt).
        before = {n.get("hostname", "") + ":" + n.get("port", ""): n for n in nodes0}
        names = {str(sport): name for name, _, sport in standbys}
        names[str(pgport)] = "pg0"
        reads = {}
        for n in nodes1:
            key = n.get("hostname", "") + ":" + n.get("port", "")
            try:
                reads[names.get(n.get("port", ""), key)] = \
                    int(n.get("select_cnt", 0)) - int(before.get(key, {}).get("select_cnt", 0))
            except ValueError:
                pass
        res["reads_by_node"] = reads
        if tx:
            res["reads_per_tx"] = round(sum(reads.values()) / tx, 3)
    if proc is not None and proc.poll() is not None:
        res["error"] = (res.get("error", "") + f"\n{target} exited with code {proc.returncode} during the run").strip()
    return res


def is_bad(r):
    return (r.get("rc") != 0 or r.get("tps") is None or (r.get("failed") or 0) > 0
            or (r.get("aborted_clients") or 0) > 0)


# --------------------------------------------------------------------------- classify


def run_classify(binary):
    """Runs the classification micro-benchmark (`classify_bench --json`) on the still quiet
    machine, before any server starts; returns its parsed output."""
    if not os.access(binary, os.X_OK):
        raise BenchError(f"{binary} not found; build it with "
                         f"`cargo build --release --example classify_bench` or pass --classify-bin")
    log(f"classification micro-benchmark: {binary}")
    try:
        r = subprocess.run([binary, "--json"], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{binary} did not finish within 300 s")
    if r.returncode != 0:
        raise BenchError(f"{binary} failed ({r.returncode}): {r.stderr.strip()}")
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise BenchError(f"{binary} printed no JSON: {e}")


def classify_table(c):
    lines = ["### Statement classification (examples/classify_bench, median µs per call)", "",
             "| statement | bytes | kind | classify µs | cached µs |", "|---|---:|---|---:|---:|"]
    for r in c.get("results", []):
        lines.append(f"| {r['statement']} | {r['bytes']} | {r['kind']} | {r['classify_us']:.2f} | "
                     f"{r['cached_us']:.3f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- report


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def median_of(runs):
    """One row from repeated runs: medians of the measurements, sums of the failures."""
    if len(runs) == 1:
        return runs[0]
    row = dict(runs[-1])
    for key in ("tps", "latency_ms", "proxy_cpu_us_per_tx", "proxy_cpu_s_per_10k_tx", "postgres_cpu_us_per_tx",
                "reads_per_tx"):
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    for key in ("failed", "aborted_clients"):
        row[key] = sum(r.get(key) or 0 for r in runs)
    row["rc"] = next((r.get("rc") for r in runs if r.get("rc") != 0), 0)
    reads = [r["reads_by_node"] for r in runs if r.get("reads_by_node")]
    if reads:
        row["reads_by_node"] = {k: sum(d.get(k, 0) for d in reads) for k in reads[-1]}
    row["runs"] = len(runs)
    return row


def report(results, targets, combos):
    grouped = {}
    for r in results:
        grouped.setdefault((r["workload"], r["mode"], r["clients"], r["target"]), []).append(r)
    by = {k: median_of(v) for k, v in grouped.items()}
    lines = ["| workload | mode | clients | target | TPS | vs direct | mean latency ms | failed "
             "| proxy CPU s/10k tx | proxy CPU µs/tx |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    comparisons = []
    for (w, m, c) in combos:
        direct = by.get((w, m, c, "direct"))
        for t in targets:
            r = by.get((w, m, c, t))
            if r is None:
                continue
            rel = ratio(r.get("tps"), direct.get("tps") if direct else None)
            failed = r.get("failed")
            failed_s = fmt(failed, "d")
            if r.get("aborted_clients"):
                failed_s += f" ({r['aborted_clients']} clients aborted)"
            if r.get("rc") != 0 and r.get("tps") is None:
                failed_s = "RUN FAILED"
            lines.append(f"| {w} | {m} | {c} | {t} | {fmt(r.get('tps'), ',.0f')} | "
                         f"{'-' if rel is None else format(rel, '.2f') + 'x'} | "
                         f"{fmt(r.get('latency_ms'), '.3f')} | {failed_s} | "
                         f"{fmt(r.get('proxy_cpu_s_per_10k_tx'), '.3f')} | "
                         f"{fmt(r.get('proxy_cpu_us_per_tx'), '.1f')} |")
        # Like for like with PgBouncer: pgvigil sending everything to the primary.
        vname = "pgvigil-nolb" if (w, m, c, "pgvigil-nolb") in by else "pgvigil"
        for a, b in ((vname, "pgbouncer"), ("pgvigil", "pgvigil-nolb"), ("pgvigil-causal", "pgvigil")):
            ra, rb = by.get((w, m, c, a)), by.get((w, m, c, b))
            if not (ra and rb):
                continue
            cmp_ = {"workload": w, "mode": m, "clients": c, "compare": f"{a} vs {b}",
                    "tps_ratio": ratio(ra.get("tps"), rb.get("tps")),
                    "cpu_per_tx_ratio": ratio(ra.get("proxy_cpu_us_per_tx"), rb.get("proxy_cpu_us_per_tx")),
                    "postgres_cpu_per_tx_ratio": ratio(ra.get("postgres_cpu_us_per_tx"),
                                                       rb.get("postgres_cpu_us_per_tx"))}
            if ra.get("reads_by_node"):
                cmp_["reads_by_node"] = ra["reads_by_node"]
            if a == "pgvigil-causal":
                # Both sides in full, for the causal reads table.
                for side, r in (("on", ra), ("off", rb)):
                    cmp_[f"tps_{side}"] = r.get("tps")
                    cmp_[f"proxy_cpu_us_per_tx_{side}"] = r.get("proxy_cpu_us_per_tx")
                    cmp_[f"reads_by_node_{side}"] = r.get("reads_by_node")
                    cmp_[f"reads_per_tx_{side}"] = r.get("reads_per_tx")
            comparisons.append(cmp_)
    text = "\n".join(lines) + "\n\n"
    x = lambda v: "-" if v is None else "x" + format(v, ".2f")
    for cmp_ in comparisons:
        head = f"- {cmp_['workload']} {cmp_['mode']} {cmp_['clients']} clients: "
        if cmp_["compare"] == "pgvigil vs pgvigil-nolb":
            text += (head + f"load balancing on/off (pgvigil vs pgvigil-nolb): TPS {x(cmp_['tps_ratio'])}, "
                     f"proxy CPU/tx {x(cmp_['cpu_per_tx_ratio'])}, "
                     f"PostgreSQL CPU/tx {x(cmp_['postgres_cpu_per_tx_ratio'])}")
            reads = read_shares(cmp_.get("reads_by_node"))
            if reads:
                text += "; reads by node " + reads
            text += "\n"
        elif cmp_["compare"] == "pgvigil-causal vs pgvigil":
            continue  # in the causal reads table below
        else:
            text += (head + f"{cmp_['compare']}: TPS {x(cmp_['tps_ratio'])}, "
                     f"CPU/tx {x(cmp_['cpu_per_tx_ratio'])}\n")
    causal = [cmp_ for cmp_ in comparisons if cmp_["compare"] == "pgvigil-causal vs pgvigil"]
    if causal:
        text += ("" if text.endswith("\n\n") else "\n") + causal_table(causal)
    return text, comparisons


def read_shares(reads):
    """`pg0 34%, pg1 33%, pg2 33%` from {node: reads}, or None when there were none."""
    if not reads or sum(reads.values()) <= 0:
        return None
    total = sum(reads.values())
    pct = lambda v: format(v * 100 / total, ".1f" if 0 < v * 100 / total < 1 else ".0f") + "%"
    return ", ".join(f"{k} {pct(v)}" for k, v in reads.items())


def causal_table(causal):
    """Causal reads on (pgvigil-causal) against off (pgvigil), one row per configuration."""
    f = lambda v, spec: "-" if v is None else format(v, spec)
    x = lambda v: "-" if v is None else "x" + format(v, ".2f")
    lines = ["### Causal reads on/off (pgvigil-causal vs pgvigil)", "",
             "| workload | mode | clients | TPS off | TPS on | TPS on/off | proxy µs/tx off | proxy µs/tx on "
             "| proxy CPU/tx on/off | PostgreSQL CPU/tx on/off | reads/tx off | reads/tx on "
             "| reads by node off | reads by node on |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for c in causal:
        lines.append(f"| {c['workload']} | {c['mode']} | {c['clients']} | {f(c['tps_off'], ',.0f')} | "
                     f"{f(c['tps_on'], ',.0f')} | {x(c['tps_ratio'])} | {f(c['proxy_cpu_us_per_tx_off'], '.1f')} | "
                     f"{f(c['proxy_cpu_us_per_tx_on'], '.1f')} | {x(c['cpu_per_tx_ratio'])} | "
                     f"{x(c['postgres_cpu_per_tx_ratio'])} | {f(c['reads_per_tx_off'], '.2f')} | "
                     f"{f(c['reads_per_tx_on'], '.2f')} | {read_shares(c['reads_by_node_off']) or '-'} | "
                     f"{read_shares(c['reads_by_node_on']) or '-'} |")
    return "\n".join(lines) + "\n"


def scan_log(path):
    """Counts of noteworthy lines in a proxy log, plus the first few of them."""
    out = {"lines": 0, "warn": 0, "error": 0, "panic": 0, "samples": []}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                out["lines"] += 1
                low = line.lower()
                hit = False
                if "panic" in low:
                    out["panic"] += 1
                    hit = True
                if "error" in low or "fatal" in low:
                    out["error"] += 1
                    hit = True
                elif "warn" in low:
                    out["warn"] += 1
                    hit = True
                if hit and len(out["samples"]) < 8:
                    out["samples"].append(line.rstrip()[:300])
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------- main


def stop_on_signals(*extra):
    """Makes SIGTERM (and the `extra` signals) end a run as Ctrl-C does, with a clean
    shutdown; SIGINT too when the script was started with it ignored (e.g. `cmd &` from
    a script)."""
    def on_term(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, *extra):
        signal.signal(sig, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=None, help="seconds per pgbench run (default 10; 3 with --quick)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale factor (default 10)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per target and configuration, interleaved; the table shows medians (default 1)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3 s per run, 16 clients only (same workloads, modes and targets)")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help="comma list from " + ",".join(ALL_TARGETS) + " (default: all but pgvigil-causal)")
    ap.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                    help="comma list from " + ",".join(WORKLOADS) + " (default: " + ",".join(DEFAULT_WORKLOADS) + ")")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list from " + ",".join(MODES))
    ap.add_argument("--clients", default=None, help="comma list of client counts (default 16,64; 16 with --quick)")
    ap.add_argument("--pgvigil", default=os.path.join(REPO, "target", "release", "pgvigil"),
                    help="pgvigil binary (default: target/release/pgvigil of this repository)")
    ap.add_argument("--standbys", type=int, default=None,
                    help=f"streaming standbys behind pgvigil (default {DEFAULT_STANDBYS} when a pgvigil target runs, else 0)")
    ap.add_argument("--classify", action="store_true",
                    help="also run the classification micro-benchmark (examples/classify_bench) first")
    ap.add_argument("--classify-bin", default=None,
                    help="classify_bench binary (default: examples/classify_bench next to --pgvigil)")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    args = ap.parse_args()

    duration = args.duration or (3 if args.quick else 10)
    clients = [int(x) for x in args.clients.split(",")] if args.clients else ([16] if args.quick else CLIENTS)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for name, vals, allowed in (("target", targets, ALL_TARGETS), ("workload", workloads, WORKLOADS),
                                ("mode", modes, MODES)):
        bad = [v for v in vals if v not in allowed]
        if bad:
            ap.error(f"unknown {name}(s): {', '.join(bad)}")
    if "direct" not in targets:
        targets.insert(0, "direct")  # the baseline every ratio refers to
    pgvigil_targets = [t for t in targets if t in PGVIGIL_TARGETS]
    n_standbys = args.standbys if args.standbys is not None else (DEFAULT_STANDBYS if pgvigil_targets else 0)
    if n_standbys < 0:
        ap.error("--standbys must be 0 or more")

    stop_on_signals()

    pgbin = find_pg_bin()
    skipped = {}
    bins = {}
    if pgvigil_targets:
        if not os.access(args.pgvigil, os.X_OK):
            raise BenchError(f"pgvigil binary {args.pgvigil} not found; build it with "
                             f"`cargo build --release` in {REPO} or pass --pgvigil")
        for t in pgvigil_targets:
            bins[t] = args.pgvigil
    classify = None
    if args.classify:
        cbin = args.classify_bin or os.path.join(os.path.dirname(os.path.abspath(args.pgvigil)),
                                                 "examples", "classify_bench")
        classify = run_classify(cbin)
    for t, name, cands in (("pgbouncer", "pgbouncer", ["/usr/sbin/pgbouncer"]),
                           ("pgpool", "pgpool", ["/usr/sbin/pgpool"])):
        if t in targets:
            b = find_binary(name, cands)
            if b:
                bins[t] = b
            else:
                skipped[t] = f"{name} binary not found ({INSTALL_HINT})"
    for t, why in skipped.items():
        log(f"skipping {t}: {why}")
        targets.remove(t)

    env = Env(args.keep)
    procs = {"direct": None}
    ports = {}
    versions = {}
    results = []
    exit_code = 0
    interrupted = False
    try:
        log(f"temp dir {env.dir}")
        wl_args = {}
        for w in workloads:
            if w in SCRIPTS:
                script = env.write(f"{w}.sql", SCRIPTS[w], 0o644)
                wl_args[w] = ["-f", script, "-s", str(args.scale)]
            else:
                wl_args[w] = WORKLOADS[w]
        pg_proc, pgport, versions["postgres"] = setup_postgres(env, pgbin, args.scale, n_standbys)
        ports["direct"] = pgport
        standbys = setup_standbys(env, pgbin, pgport, n_standbys) if n_standbys else []
        cluster = {"proc": pg_proc, "port": pgport, "standbys": standbys}
        setups = {"pgbouncer": setup_pgbouncer, "pgpool": setup_pgpool}
        for t in list(targets):
            if t == "direct":
                continue
            try:
                if t in PGVIGIL_TARGETS:
                    procs[t], ports[t], versions[t] = setup_pgvigil(env, pgbin, bins[t], pgport, t, standbys)
                else:
                    procs[t], ports[t], versions[t] = setups[t](env, pgbin, bins[t], pgport)
                log(f"{t} ready on 127.0.0.1:{ports[t]} ({versions[t].splitlines()[0]})")
            except BenchError as e:
                if t in PGVIGIL_TARGETS:
                    raise
                skipped[t] = f"setup failed: {e}"
                log(f"skipping {t}: {e}")
                targets.remove(t)

        combos = [(w, m, c) for w in workloads for m in modes for c in clients]
        rounds = max(1, args.repeat)
        total = len(combos) * len(targets) * rounds
        log(f"{len(combos)} configurations x {len(targets)} targets x {duration}s "
            f"≈ {total * (duration + 2) / 60:.1f} min")
        n = 0
        schedule = [(w, m, c) for (w, m, c) in combos for _ in range(rounds)]
        for i, (w, m, c) in enumerate(schedule):
            k = i % len(targets)
            order = targets[k:] + targets[:k]  # rotate who goes first
            for t in order:
                n += 1
                r = run_one(pgbin, t, ports[t], procs[t], cluster, w, wl_args[w], m, c, duration)
                results.append(r)
                msg = (f"[{n}/{total}] {w:11} {m:8} c={c:<3} {t:14} tps={fmt(r.get('tps'), '.0f'):>7} "
                       f"lat={fmt(r.get('latency_ms'), '.2f')}ms failed={fmt(r.get('failed'), 'd')}")
                if r.get("proxy_cpu_us_per_tx") is not None:
                    msg += f" cpu={r['proxy_cpu_us_per_tx']:.1f}µs/tx"
                if r.get("reads_by_node"):
                    msg += " reads " + ",".join(f"{k}:{v}" for k, v in r["reads_by_node"].items())
                log(msg)
                if r.get("error"):
                    log(f"    {t}: {r['error']}")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; cleaning up")
    except BenchError as e:
        log(f"error: {e}")
        exit_code = 2
    finally:
        logs = {}
        for t, p in (*((t, f"{t}.log") for t in PGVIGIL_TARGETS),
                     ("pgbouncer", "pgbouncer.log"), ("pgpool", "pgpool.log"), ("postgres", "postgres.log"),
                     *((f"standby {i}", f"pg{i}.log") for i in range(1, n_standbys + 1))):
            if os.path.exists(env.path(p)):
                logs[t] = scan_log(env.path(p))
        env.cleanup()

    combos = [(w, m, c) for w in workloads for m in modes for c in clients]
    text, comparisons = report(results, targets, combos)
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": cpu_model,
        "duration_s": duration, "repeat": max(1, args.repeat), "scale": args.scale, "threads": THREADS, "targets": targets,
        "skipped": skipped, "versions": versions, "pg_bin": pgbin, "interrupted": interrupted,
        "standbys": n_standbys,
    }
    try:
        meta["pgvigil_git"] = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True).stdout.strip()
    except OSError:
        pass

    print()
    print(f"## pgbench results ({meta['date']}, {meta['cpus']} CPUs {cpu_model}, kernel {meta['kernel']})")
    print()
    print(f"duration {duration}s per run, {max(1, args.repeat)} run(s) per cell (medians), scale {args.scale}, -j {THREADS}; "
          + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in versions.items()))
    if n_standbys:
        print(f"cluster: primary pg0 + {n_standbys} streaming standbys (pgvigil targets route over all of them; "
              f"the other targets use the primary only)")
    for t, why in skipped.items():
        print(f"skipped {t}: {why}")
    print()
    print(text)
    if classify:
        print(classify_table(classify))
    for t, s in logs.items():
        if s["warn"] or s["error"] or s["panic"]:
            print(f"{t} log (before shutdown): {s['error']} error/fatal, {s['warn']} warning, {s['panic']} panic lines, e.g.:")
            for line in s["samples"]:
                print(f"    {line}")
    bad = [r for r in results if is_bad(r)]
    if bad:
        print(f"\n{len(bad)} run(s) had failed transactions or did not complete:")
        for r in bad:
            print(f"- {r['target']} {r['workload']} {r['mode']} c={r['clients']}: rc={r.get('rc')} "
                  f"failed={r.get('failed')} aborted_clients={r.get('aborted_clients')} "
                  f"{(r.get('error') or '').splitlines()[0] if r.get('error') else ''}")
        exit_code = exit_code or 1
    if interrupted:
        exit_code = exit_code or 130
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results, "comparisons": comparisons, "proxy_logs": logs,
                       "classify": classify}, f, indent=2)
        print(f"\nJSON written to {args.json}")
    return exit_code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"pgbench.py: {e}", file=sys.stderr)
        sys.exit(2)
