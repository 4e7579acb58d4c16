#!/usr/bin/env python3
"""VIP benchmark: how long clients of a virtual IP are cut off when its holder fails,
pgvigil's watchdog against keepalived (VRRP) with PgBouncer.

Three HA nodes live in network namespaces on one bridge (eth0 192.0.2.11, .12, .13/24),
with a client namespace (192.0.2.2) and the VIP 192.0.2.100/24. A throwaway PostgreSQL
primary runs in a namespace of its own on the same bridge (192.0.2.201). For each
run, target and fault, fresh HA processes start in the node namespaces: pgvigil with a
[watchdog] section (its proxy on 0.0.0.0:9999), or keepalived with PgBouncer on
0.0.0.0:9999. A client in the client namespace opens a new connection to
192.0.2.100:9999 every 50 ms and runs `SELECT 1`; a sampler records every 50 ms which
node namespaces have the VIP on eth0. Once exactly one node holds the VIP and queries
have succeeded for 2 s, the holder fails:

  kill       SIGSTOP, then SIGKILL, to every process of the holder, and its eth0 down
             at once (the host is gone); after the observation window it comes back (VIP
             left on its eth0 removed, as after a reboot; eth0 up; processes started)
  shutdown   SIGTERM to the holder's HA daemon (pgvigil; keepalived, not PgBouncer);
             then it is started again
  partition  the holder's bridge port stops forwarding for 8 s (its link stays up),
             then forwards again
  freeze     (only when asked for) SIGSTOP to every process of the holder for 8 s,
             then SIGCONT

Measured: time from the fault to the first successful query through the VIP, failed
attempts, samples with two VIP holders whose hosts are running (not killed or frozen:
"split brain"; during a partition reported apart), and what clients see after the node
comes back or the partition heals.

Usage:  sudo python3 bench/vip.py [--runs 5] [--targets pgvigil,keepalived]
                                  [--faults kill,shutdown,partition]
See bench/README.md.  Python 3.11 standard library only (plus ip, PostgreSQL, keepalived
and PgBouncer).
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no bench/__pycache__ from the imports below
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgbench as pb  # noqa: E402  (temp dir and processes, PostgreSQL helpers)
import failover as fo  # noqa: E402  (the PostgreSQL wire client)
from pgbench import BenchError, log  # noqa: E402

USER, PASSWORD, DBNAME = pb.USER, pb.PASSWORD, pb.DBNAME

# --------------------------------------------------------------------------- the network

NODES = 3
NODE_ADDRS = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
CLIENT_ADDR = "192.0.2.2"
PG_ADDR = "192.0.2.201"  # PostgreSQL's namespace
VIP = "192.0.2.100"
VIP_PREFIX = 24
PROXY_PORT = 9999
WD_PORT = 9694
ADMIN_PORT = 9898
PRIORITIES = [150, 100, 50]
NS_PREFIX = "pgvip"

ALL_TARGETS = ["pgvigil", "pgvigil-witness", "keepalived", "keepalived-heal"]
DEFAULT_TARGETS = ["pgvigil", "keepalived"]
FAULTS = ["kill", "shutdown", "partition", "freeze"]
DEFAULT_FAULTS = ["kill", "shutdown", "partition"]
CUT_FAULTS = ("partition", "freeze")  # the node is cut off / frozen for a while, then back

STEADY_S = 2.0          # queries must succeed this long, with one holder, before the fault
# Then the fault waits 0 to FAULT_JITTER_S more, a random point of the stratum of its run
# number: run k of N waits (k - 1 + U(0, 1)) / N s. Without it, the fault would come at the
# same point of the VRRP advert cycle (1 s) and of the heartbeat cycle (200 ms) in every
# run, since both start with the processes (keepalived's times would all be at one end of
# their 2.6-3.6 s range, a partition would always heal at the same point); with plain
# random delays, 5 runs often miss a good part of the cycle.
FAULT_JITTER_S = 1.0
STEADY_TIMEOUT_S = 40.0
STUCK_AFTER_S = 5.0     # a failed query started this long after the heal/return: stuck client
SETTLE_S = 3.0          # an extended window ends after this long without a failure
MAX_EXTEND_S = 60.0     # ... or this long after the heal/return at the latest
FIRST_OK_MAX_S = 30.0   # the fault window grows up to this while no query succeeded

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*args, check=True):
    r = subprocess.run(list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def enter_netns(name):
    """Move the calling thread (only it) into network namespace `name`."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(name, fn):
    """Run fn() on a thread of its own inside namespace `name` (sockets it opens live
    there, also after the thread ends) and return its result."""
    box = {}

    def run():
        try:
            enter_netns(name)
            box["v"] = fn()
        except BaseException as e:  # handed to the caller
            box["e"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("v")


class Net:
    """One bridge namespace (br0), one namespace per HA node (eth0 192.0.2.11, .12, .13/24),
    a client namespace (192.0.2.2/24) and one for PostgreSQL (192.0.2.201/24), joined by
    veth pairs as in the project's tests (tests/common/netns.rs). Nothing is added to the
    root namespace (whose own network may well be 192.0.2.0/24). Names carry this
    process's pid."""

    def __init__(self):
        tag = f"{NS_PREFIX}{os.getpid()}"
        self.bridge = f"{tag}br"
        self.nodes = [f"{tag}n{i}" for i in range(NODES)]
        self.client = f"{tag}cl"
        self.pg = f"{tag}pg"
        self.made = []

    def create(self):
        self._add_ns(self.bridge)
        sh("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge, "link", "set", "br0", "up")
        for i, ns in enumerate(self.nodes):
            self._attach(ns, f"p{i}", NODE_ADDRS[i])
        self._attach(self.client, "pc", CLIENT_ADDR)
        self._attach(self.pg, "ppg", PG_ADDR)

    def _add_ns(self, ns):
        sh("ip", "netns", "add", ns)
        self.made.append(ns)

    def _attach(self, ns, port, addr):
        self._add_ns(ns)
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.bridge)
        sh("ip", "-n", self.bridge, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def remove(self):
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)
        self.made.clear()

    def set_forwarding(self, i, on):
        """Partition: node i's bridge port stops (state 0, disabled) or resumes (3,
        forwarding) forwarding. Its eth0 keeps its carrier, as when the network fails
        somewhere beyond the host's own link."""
        sh("bridge", "-n", self.bridge, "link", "set", "dev", f"p{i}", "state", "3" if on else "0")

    def set_link(self, i, up):
        """Node i's eth0 up or down (a host that vanished from the network)."""
        sh("ip", "-n", self.nodes[i], "link", "set", "eth0", "up" if up else "down")

    def has_vip(self, i):
        out = sh("ip", "-n", self.nodes[i], "-4", "-o", "addr", "show", "dev", "eth0").stdout
        return f"inet {VIP}/" in out

    def drop_vip(self, i):
        """Remove the VIP from node i's eth0; whether it was there."""
        there = self.has_vip(i)
        if there:
            sh("ip", "-n", self.nodes[i], "addr", "del", f"{VIP}/{VIP_PREFIX}", "dev", "eth0", check=False)
        return there

    def reset(self):
        """Before a run: every port forwarding, every eth0 up, no VIP anywhere, no client
        neighbour entry for it."""
        for i in range(NODES):
            self.set_link(i, True)  # first: a port whose peer is down cannot change state
            self.set_forwarding(i, True)
            self.drop_vip(i)
        sh("ip", "-n", self.client, "neigh", "flush", "dev", "eth0", check=False)


def remove_stale_namespaces():
    """Namespaces of earlier runs of this script whose process is gone (a run killed with
    SIGKILL cannot clean up after itself)."""
    for name in sh("ip", "netns", "list", check=False).stdout.split():
        m = re.match(rf"^{NS_PREFIX}(\d+)(br|cl|pg|n\d)$", name)
        if not m or int(m.group(1)) == os.getpid() or os.path.exists(f"/proc/{m.group(1)}"):
            continue
        sh("ip", "netns", "del", name, check=False)
        log(f"removed {name}, left by an earlier run (pid {m.group(1)} is gone)")


# --------------------------------------------------------------------------- VIP sampler

RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWNEIGH, RTM_GETNEIGH = 28, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2
NDA_DST, NDA_LLADDR = 1, 2
NUD_STATES = {0x01: "incomplete", 0x02: "reachable", 0x04: "stale", 0x08: "delay", 0x10: "probe",
              0x20: "failed", 0x40: "noarp", 0x80: "permanent"}


class NetlinkProbe:
    """Asks the kernel of one namespace for its IPv4 addresses or neighbour entries over
    a netlink socket opened inside it (no process per sample)."""

    def __init__(self, ns):
        self.sock = in_netns(ns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
        self.sock.bind((0, 0))
        self.sock.settimeout(2)
        self.seq = 0

    def _dump(self, msg_type, header_len):
        """[(header bytes, {attribute type: value bytes})] of one dump."""
        self.seq += 1
        body = struct.pack("=B", socket.AF_INET) + bytes(header_len - 1)
        self.sock.send(struct.pack("=LHHLL", 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0)
                       + body)
        out = []
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                ln, typ, _flags, seq, _pid = struct.unpack_from("=LHHLL", data, off)
                if ln < 16:
                    break
                if seq == self.seq:
                    if typ == NLMSG_DONE:
                        return out
                    if typ == NLMSG_ERROR:
                        raise OSError(f"netlink error answer to message type {msg_type}")
                    head = data[off + 16:off + 16 + header_len]
                    attrs, a, end = {}, off + 16 + header_len, off + ln
                    while a + 4 <= end:
                        alen, atyp = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        attrs[atyp] = data[a + 4:a + alen]
                        a += (alen + 3) & ~3
                    out.append((head, attrs))
                off += (ln + 3) & ~3

    def has(self, addr_bytes):
        """Whether the namespace has this IPv4 address on some interface."""
        return any(addr_bytes in (attrs.get(IFA_ADDRESS), attrs.get(IFA_LOCAL))
                   for _, attrs in self._dump(RTM_GETADDR, 8))

    def neighbour(self, addr_bytes):
        """The neighbour entry for this IPv4 address: (link-layer address, state), or None."""
        for head, attrs in self._dump(RTM_GETNEIGH, 12):
            if attrs.get(NDA_DST) == addr_bytes:
                state = struct.unpack_from("=H", head, 8)[0]
                return attrs.get(NDA_LLADDR), NUD_STATES.get(state, hex(state))
        return None

    def close(self):
        self.sock.close()


def node_macs(net):
    """{MAC bytes of a node's eth0: node index}."""
    out = {}
    for i, ns in enumerate(net.nodes):
        m = re.search(r"link/ether ([0-9a-f:]{17})", sh("ip", "-n", ns, "-o", "link", "show", "eth0").stdout)
        if m:
            out[bytes.fromhex(m.group(1).replace(":", ""))] = i
    return out


class Sampler(threading.Thread):
    """Every 50 ms: which node namespaces have the VIP, which nodes are live (host running:
    not killed or frozen by the bench; a node whose HA daemon was stopped cleanly or that
    is cut off by a partition is live), and the client's neighbour (ARP) entry for the VIP:
    the node whose MAC it holds (-1: another MAC; None: no entry) and its state."""

    def __init__(self, probes, client_probe, macs, run, interval=0.05):
        super().__init__(daemon=True, name="sampler")
        self.probes, self.run_state, self.interval = probes, run, interval
        self.client_probe, self.macs = client_probe, macs
        self.samples = []  # (t, holders tuple of bool, live frozenset, (client entry node, state))
        self.stopping = threading.Event()
        self.error = None
        self.vip = socket.inet_aton(VIP)

    def run(self):
        try:
            while not self.stopping.is_set():
                t = time.monotonic()
                live = self.run_state.live
                holders = tuple(p.has(self.vip) for p in self.probes)
                n = self.client_probe.neighbour(self.vip)
                arp = (None, None) if n is None else (self.macs.get(n[0], -1) if n[0] else None, n[1])
                self.samples.append((t, holders, live, arp))
                self.stopping.wait(self.interval)
        except Exception as e:  # reported by the trial
            self.error = repr(e)

    def stop(self):
        self.stopping.set()
        self.join(5)

    def last(self):
        return self.samples[-1] if self.samples else None


# --------------------------------------------------------------------------- client


class VipConn(fo.PgConn):
    """failover.py's client with a separate (short) connect timeout."""

    def __init__(self, host, port, connect_timeout, timeout):  # noqa: super().__init__ not called on purpose
        self.user, self.password = USER, PASSWORD
        self.buf = bytearray()
        try:
            self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as e:
            raise fo.Dropped(f"connect: {e}")
        try:
            self.sock.settimeout(timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in
                              (("user", USER), ("database", DBNAME), ("application_name", "vip-probe")))
            body = struct.pack("!I", 196608) + params + b"\0"
            self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
            self._startup()
        except BaseException:
            self.close()
            raise


def error_kind(msg):
    m = msg.lower()
    if msg.startswith("connect:"):
        if "timed out" in m:
            return "connect timeout"
        if "refused" in m:
            return "connect refused"
        if "unreachable" in m or "no route" in m:
            return "unreachable"
        return "connect other"
    if "timeout" in m:
        return "no answer"
    if "closed" in m or "reset" in m or "broken pipe" in m:
        return "connection lost"
    return "server error"


class Client:
    """A client in the client namespace: every `interval` a NEW connection to the VIP
    (connect timeout `connect_timeout`, then `timeout` for authentication and `SELECT 1`).
    Attempts are started on schedule by a pool of worker threads, so one that waits for
    a timeout does not delay the next one. The pool is large enough for every attempt to
    run into both timeouts (a frozen server completes the handshake, then says nothing);
    a tick finding every worker busy anyway is recorded as skipped."""

    def __init__(self, ns, interval, connect_timeout, timeout):
        self.ns, self.interval = ns, interval
        self.connect_timeout, self.timeout = connect_timeout, timeout
        workers = int((connect_timeout + timeout) / interval) + 4
        self.attempts = []  # (t_start, t_end, ok, error or None)
        self.skipped = []  # times of skipped ticks
        self.jobs = queue.Queue()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.busy = 0
        self.ready = threading.Barrier(workers + 1, timeout=10)
        self.errors = []
        self.threads = [threading.Thread(target=self._worker, daemon=True, name=f"client{i}")
                        for i in range(workers)]
        self.ticker = threading.Thread(target=self._tick, daemon=True, name="ticker")

    def start(self):
        for t in self.threads:
            t.start()
        try:
            self.ready.wait()
        except threading.BrokenBarrierError:
            raise BenchError(f"client threads could not enter namespace {self.ns}: {self.errors}")
        if self.errors:
            raise BenchError(f"client threads could not enter namespace {self.ns}: {self.errors}")
        self.ticker.start()

    def _worker(self):
        try:
            enter_netns(self.ns)
        except OSError as e:
            self.errors.append(str(e))
        self.ready.wait()
        if self.errors:
            return
        while not self.stopping.is_set():
            try:
                self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            t0 = time.monotonic()
            ok, err = False, None
            try:
                c = VipConn(VIP, PROXY_PORT, self.connect_timeout, self.timeout)
                try:
                    rows = c.query("SELECT 1")
                    ok = rows == [["1"]]
                    if not ok:
                        err = f"unexpected answer {rows!r}"
                finally:
                    c.close()
            except (fo.Dropped, fo.PgError, OSError) as e:
                err = str(e)[:200]
            self.attempts.append((t0, time.monotonic(), ok, err))
            with self.lock:
                self.busy -= 1

    def _tick(self):
        next_t = time.monotonic()
        n = len(self.threads)
        while not self.stopping.is_set():
            with self.lock:
                if self.busy < n:
                    self.busy += 1
                    self.jobs.put(next_t)
                else:
                    self.skipped.append(next_t)
            next_t += self.interval
            delay = next_t - time.monotonic()
            if delay > 0:
                self.stopping.wait(delay)
            else:
                next_t = time.monotonic()

    def stop(self):
        self.stopping.set()
        for t in [self.ticker] + self.threads:
            if t.ident is not None:
                t.join(3)


# --------------------------------------------------------------------------- PostgreSQL


def setup_postgres(env, pgbin, ns):
    """A primary in namespace `ns`, listening on 127.0.0.1 and 192.0.2.201 there,
    scram-sha-256 for 127.0.0.1/32 and 192.0.2.0/24. Returns (process, port, version)."""
    port = pb.free_port()
    data = env.path("pgdata")
    pwfile = env.write("pwfile", PASSWORD + "\n")
    log(f"initdb ({pgbin})")
    env.run_as([os.path.join(pgbin, "initdb"), "-D", data, "-U", USER, "--pwfile", pwfile,
                "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"])
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"""
# pgvigil VIP bench
listen_addresses = '127.0.0.1,{PG_ADDR}'
port = {port}
unix_socket_directories = '{env.dir}'
max_connections = 300
shared_buffers = 64MB
fsync = off
synchronous_commit = off
password_encryption = 'scram-sha-256'
# server connections of killed or cut-off proxies go away within about 20 s
tcp_keepalives_idle = 5
tcp_keepalives_interval = 5
tcp_keepalives_count = 3
logging_collector = off
log_min_messages = warning
""")
    with open(os.path.join(data, "pg_hba.conf"), "w") as f:
        f.write("host all all 127.0.0.1/32 scram-sha-256\n"
                "host all all 192.0.2.0/24 scram-sha-256\n")
    env.chown(os.path.join(data, "pg_hba.conf"))
    # As the server user (postgres refuses root), inside its namespace.
    p = env.spawn("postgres", ["ip", "netns", "exec", ns, "setpriv", f"--reuid={env.uid}", f"--regid={env.gid}",
                               "--init-groups", os.path.join(pgbin, "postgres"), "-D", data],
                  "postgres.log", signal.SIGINT, as_server_user=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            c = in_netns(ns, lambda: fo.PgConn(PG_ADDR, port, USER, PASSWORD, DBNAME, 3))
            version = c.query("show server_version")[0][0]
            c.close()
            return p, port, version
        except (fo.Dropped, fo.PgError, OSError) as e:
            last = str(e)
        if p.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"PostgreSQL did not answer on {PG_ADDR}:{port} ({last}); "
                             f"log:\n{pb.tail(env.path('postgres.log'))}")
        time.sleep(0.2)


# --------------------------------------------------------------------------- HA targets


class Target:
    """The HA processes of one run: per node a list of roles (process kinds) and their
    commands; `daemon` is the role that manages the VIP."""

    daemon = None

    def __init__(self, ctx, name, rundir):
        self.ctx, self.name, self.rundir = ctx, name, rundir
        self.procs = {i: {} for i in range(NODES)}  # node -> role -> Popen

    def roles(self, i):
        raise NotImplementedError

    def command(self, i, role):
        raise NotImplementedError

    def start_node(self, i, roles=None):
        env = self.ctx.env
        for role in roles or self.roles(i):
            cmd = self.command(i, role)
            rel = os.path.relpath(os.path.join(self.rundir, f"n{i}-{role}.log"), env.dir)
            self.procs[i][role] = env.spawn(f"n{i}-{role}", cmd, rel, signal.SIGTERM, as_server_user=False)

    def check_started(self):
        for i, roles in self.procs.items():
            for role, p in roles.items():
                if p.poll() is not None:
                    raise BenchError(f"{self.name}: {role} on n{i} exited with code {p.returncode}; "
                                     f"log:\n{pb.tail(self.log_path(i, role))}")

    def log_path(self, i, role):
        return os.path.join(self.rundir, f"n{i}-{role}.log")

    def _pids(self, p):
        return [p.pid] + fo.descendants(p.pid)

    def node_pids(self, i):
        """Every process of node i and anything they started (read from /proc, which takes
        a while: done before the fault's clock starts)."""
        pids = []
        for p in self.procs[i].values():
            pids += self._pids(p)
        return pids

    @staticmethod
    def signal_pids(pids, *sigs):
        for sig in sigs:
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass

    def kill_node(self, i, pids=None):
        """SIGKILL to every process of node i. All of them are stopped (SIGSTOP) first:
        killed one by one, a child could still react to its parent's death (keepalived's
        VRRP child shuts down cleanly, sending a priority 0 advert, when its parent dies),
        which a dead host does not do. Then they are reaped."""
        if pids is None:
            pids = self.node_pids(i)
        self.signal_pids(pids, signal.SIGSTOP, signal.SIGKILL)
        for role, p in list(self.procs[i].items()):
            self._forget(i, role)
        return len(pids)

    def terminate_daemon(self, i):
        p = self.procs[i][self.daemon]
        p.send_signal(signal.SIGTERM)
        return p

    def _forget(self, i, role):
        p = self.procs[i].pop(role)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.ctx.env.procs = [x for x in self.ctx.env.procs if x[1] is not p]

    def forget_exited(self, i, role):
        p = self.procs[i].get(role)
        if p is not None and p.poll() is not None:
            self._forget(i, role)

    def stop_all(self):
        for i in range(NODES):
            for role, p in list(self.procs[i].items()):
                for pid in self._pids(p):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self._forget(i, role)

    def logs(self):
        out = {}
        for i in range(NODES):
            for role in self.roles(i):
                out[f"n{i}-{role}"] = self.log_path(i, role)
        return out


class PgvigilTarget(Target):
    """pgvigil on every node (`pgvigil`), or on n0 and n1 with `pgvigil witness` on n2
    (`pgvigil-witness`). Watchdog timings at their defaults."""

    daemon = "pgvigil"

    def __init__(self, ctx, name, rundir):
        super().__init__(ctx, name, rundir)
        self.witness = name == "pgvigil-witness"
        key = os.path.join(rundir, "watchdog.key")
        write_private(key, secrets.token_hex(32) + "\n")
        users = os.path.join(rundir, "users.toml")
        write_private(users, f'{USER} = "{PASSWORD}"\n')
        self.configs = {}
        for i in range(NODES):
            peers = ", ".join(f'{{ name = "n{j}", address = "{NODE_ADDRS[j]}:{WD_PORT}" }}'
                              for j in range(NODES) if j != i)
            watchdog = (f'[watchdog]\nname = "n{i}"\nlisten = "{NODE_ADDRS[i]}:{WD_PORT}"\n'
                        f"peers = [ {peers} ]\npriority = {PRIORITIES[i]}\nauth_key_file = \"{key}\"\n")
            if self.is_witness(i):
                text = f'[log]\nlevel = "info"\n\n{watchdog}'
            else:
                text = f"""[admin]
listen = "{NODE_ADDRS[i]}:{ADMIN_PORT}"

[proxy]
listen = "0.0.0.0:{PROXY_PORT}"

[auth]
method = "scram-sha-256"
users_file = "{users}"

[health_check]
user = "{USER}"

[log]
level = "info"

[[backends]]
name = "pg0"
host = "{PG_ADDR}"
port = {ctx.pg_port}

{watchdog}
[watchdog.vip]
address = "{VIP}/{VIP_PREFIX}"
interface = "eth0"
"""
            path = os.path.join(rundir, f"n{i}.toml")
            write_private(path, text)
            self.configs[i] = path
            cmd = [ctx.pgvigil, "check-config", "--config", path] + (["--witness"] if self.is_witness(i) else [])
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError(f"pgvigil check-config of n{i} failed ({r.returncode}):\n{r.stdout}{r.stderr}")

    def is_witness(self, i):
        return self.witness and i == NODES - 1

    def roles(self, i):
        return ["pgvigil"]

    def command(self, i, role):
        return ["ip", "netns", "exec", self.ctx.net.nodes[i], self.ctx.pgvigil,
                "witness" if self.is_witness(i) else "run", "--config", self.configs[i]]


class KeepalivedTarget(Target):
    """keepalived (VRRP only) and PgBouncer on every node: virtual_router_id 51,
    priorities 150/100/50 (n0 starts as MASTER, the others as BACKUP), advert_int 1, no
    authentication, the VIP on eth0; PgBouncer on 0.0.0.0:9999 in front of the primary.
    `keepalived-heal` adds `vrrp_higher_prio_send_advert`: a master that yields to a
    higher priority sends one more advert first, so that the remaining master (through
    its default `garp_lower_prio_repeat`) announces the VIP again after a heal."""

    daemon = "keepalived"

    def __init__(self, ctx, name, rundir):
        super().__init__(ctx, name, rundir)
        env = ctx.env
        extra = "    vrrp_higher_prio_send_advert\n" if name == "keepalived-heal" else ""
        self.confs = {}
        users = env.write(os.path.relpath(os.path.join(rundir, "pgbouncer_users.txt"), env.dir),
                          f'"{USER}" "{PASSWORD}"\n')
        for i in range(NODES):
            kconf = os.path.join(rundir, f"n{i}-keepalived.conf")
            write_private(kconf, f"""global_defs {{
    router_id n{i}
{extra}}}

vrrp_instance VI_1 {{
    state {"MASTER" if i == 0 else "BACKUP"}
    interface eth0
    virtual_router_id 51
    priority {PRIORITIES[i]}
    advert_int 1
    virtual_ipaddress {{
        {VIP}/{VIP_PREFIX} dev eth0
    }}
}}
""")
            bconf = env.write(os.path.relpath(os.path.join(rundir, f"n{i}-pgbouncer.ini"), env.dir), f"""[databases]
{DBNAME} = host={PG_ADDR} port={ctx.pg_port} dbname={DBNAME}

[pgbouncer]
listen_addr = 0.0.0.0
listen_port = {PROXY_PORT}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {users}
pool_mode = session
default_pool_size = 20
max_client_conn = 200
server_reset_query = DISCARD ALL
logfile = {os.path.join(rundir, f"n{i}-pgbouncer-own.log")}
pidfile = {os.path.join(rundir, f"n{i}-pgbouncer.pid")}
log_connections = 0
log_disconnections = 0
""")
            self.confs[i] = (kconf, bconf)
        r = subprocess.run(["ip", "netns", "exec", ctx.net.nodes[0], ctx.keepalived, "-t", "-f", self.confs[0][0]],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"keepalived -t rejected the configuration ({r.returncode}):\n{r.stdout}{r.stderr}")

    def roles(self, i):
        return ["pgbouncer", "keepalived"]

    def command(self, i, role):
        ns = self.ctx.net.nodes[i]
        kconf, bconf = self.confs[i]
        if role == "pgbouncer":  # it refuses to run as root
            return ["ip", "netns", "exec", ns, "setpriv", "--reuid=postgres", "--regid=postgres",
                    "--init-groups", self.ctx.pgbouncer, bconf]
        return ["ip", "netns", "exec", ns, self.ctx.keepalived, "--vrrp", "--dont-fork", "--log-console",
                "--log-detail", "--no-syslog", "-f", kconf,
                "-p", os.path.join(self.rundir, f"n{i}-keepalived.pid"),
                "-r", os.path.join(self.rundir, f"n{i}-keepalived-vrrp.pid")]


TARGET_CLASSES = {"pgvigil": PgvigilTarget, "pgvigil-witness": PgvigilTarget, "keepalived": KeepalivedTarget,
                  "keepalived-heal": KeepalivedTarget}


def write_private(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


# --------------------------------------------------------------------------- one run


class RunState:
    def __init__(self):
        self.live = frozenset(range(NODES))

    def set_live(self, i, on):
        self.live = self.live | {i} if on else self.live - {i}


def wait_steady(client, sampler, target, deadline_s):
    """Until exactly one live node holds the VIP and every query of the last STEADY_S
    succeeded (at least half of the scheduled ones completed); returns (holder, time)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        time.sleep(0.1)
        target.check_started()
        if sampler.error:
            raise BenchError(f"sampler failed: {sampler.error}")
        now = time.monotonic()
        recent = [s for s in sampler.samples if s[0] >= now - STEADY_S]
        if now - start < STEADY_S or not recent:
            continue
        holder_sets = {tuple(i for i, h in enumerate(s[1]) if h and i in s[2]) for s in recent}
        if len(holder_sets) != 1:
            continue
        holders = holder_sets.pop()
        if len(holders) != 1:
            continue
        atts = list(client.attempts)
        fails = [a for a in atts if not a[2] and a[1] >= now - STEADY_S]
        oks = [a for a in atts if a[2] and a[0] >= now - STEADY_S]
        if not fails and len(oks) >= STEADY_S / client.interval / 2:
            return holders[0], now - start
    last = sampler.last()
    atts = client.attempts[-3:]
    raise BenchError(f"no steady state within {deadline_s:g}s: VIP holders "
                     f"{[i for i, h in enumerate(last[1]) if h] if last else '?'}, last attempts {atts}")


def wait_window(client, t_from, min_s, settle_s, max_s):
    """Sleep until min_s after t_from; then go on while a query failed within the last
    settle_s, up to max_s after t_from. Returns the end of the window."""
    while True:
        now = time.monotonic()
        if now - t_from >= max_s:
            return now
        if now - t_from >= min_s:
            last_fail = max((a[1] for a in client.attempts if not a[2] and a[0] >= t_from), default=None)
            if last_fail is None or now - last_fail >= settle_s:
                return now
        time.sleep(0.05)


def wait_first_ok(client, t_fault, min_s, max_s):
    """Sleep until min_s after the fault and until a query started after the fault has
    succeeded (and another SETTLE_S has passed), up to max_s."""
    while True:
        now = time.monotonic()
        if now - t_fault >= max_s:
            return
        ok = [a[1] for a in client.attempts if a[2] and a[0] >= t_fault]
        if now - t_fault >= min_s and ok and now - min(ok) >= SETTLE_S:
            return
        time.sleep(0.05)


def trial(ctx, tname, fault, run_no):
    args, net = ctx.args, ctx.net
    what = f"{tname} {fault} run {run_no}"
    rundir = os.path.join(ctx.env.dir, f"{tname}-{fault}-{run_no}")
    os.makedirs(rundir)
    ctx.env.chown(rundir)
    res = {"target": tname, "fault": fault, "run": run_no}
    target = None
    client = sampler = None
    run = RunState()
    try:
        net.reset()
        target = TARGET_CLASSES[tname](ctx, tname, rundir)
        sampler = Sampler(ctx.probes, ctx.client_probe, ctx.macs, run)
        client = Client(net.client, args.interval_ms / 1000, args.connect_timeout_ms / 1000,
                        args.query_timeout_ms / 1000)
        sampler.start()
        client.start()
        t_start = time.monotonic()
        for i in range(NODES):
            target.start_node(i)
        holder, steady_after = wait_steady(client, sampler, target, STEADY_TIMEOUT_S)
        t_steady = time.monotonic()
        res["holder"] = f"n{holder}"
        res["steady_after_start_s"] = round(steady_after, 3)
        first_holder_t = next((s[0] for s in sampler.samples if any(s[1])), None)
        res["first_vip_after_start_s"] = round(first_holder_t - t_start, 3) if first_holder_t else None
        res["fault_delay_s"] = round((run_no - 1 + random.random()) / args.runs * FAULT_JITTER_S, 3)
        time.sleep(res["fault_delay_s"])
        last = sampler.last()
        live_holders = [i for i, h in enumerate(last[1]) if h and i in last[2]]
        if live_holders != [holder]:
            raise BenchError(f"the VIP moved from n{holder} to {live_holders} before the fault")

        # ---- the fault. Its clock starts once the fault is in effect (the signals sent,
        # the bridge port changed), so that no query started before can count as one
        # after it.
        t_back = None
        pids = target.node_pids(holder)
        if fault == "kill":
            run.set_live(holder, False)
            target.signal_pids(pids, signal.SIGSTOP, signal.SIGKILL)
            t_fault = time.monotonic()
            net.set_link(holder, False)
            target.kill_node(holder, pids)  # reaps them
            res["killed_processes"] = len(pids)
            log(f"{what}: n{holder} holds the VIP; SIGKILL to its {len(pids)} process(es), eth0 down")
        elif fault == "shutdown":
            p = target.terminate_daemon(holder)
            t_fault = time.monotonic()
            log(f"{what}: n{holder} holds the VIP; SIGTERM to its {target.daemon}")
        elif fault == "partition":
            net.set_forwarding(holder, False)
            t_fault = time.monotonic()
            log(f"{what}: n{holder} holds the VIP; its bridge port stops forwarding for {args.partition_s:g} s")
        else:
            run.set_live(holder, False)
            target.signal_pids(pids, signal.SIGSTOP)
            t_fault = time.monotonic()
            res["frozen_processes"] = len(pids)
            log(f"{what}: n{holder} holds the VIP; SIGSTOP to its {len(pids)} process(es) for {args.freeze_s:g} s")

        if fault in CUT_FAULTS:
            cut_s = args.partition_s if fault == "partition" else args.freeze_s
            time.sleep(max(0.0, t_fault + cut_s - time.monotonic()))
            t_back = time.monotonic()
            if fault == "partition":
                net.set_forwarding(holder, True)
                log(f"{what}: healed")
            else:
                res["vip_on_frozen_node_at_sigcont"] = net.has_vip(holder)
                target.signal_pids(pids, signal.SIGCONT)
                run.set_live(holder, True)
                log(f"{what}: SIGCONT")
        else:
            if fault == "shutdown":
                try:
                    p.wait(FIRST_OK_MAX_S)
                    res["daemon_exit_s"] = round(time.monotonic() - t_fault, 3)
                except subprocess.TimeoutExpired:
                    res["daemon_exit_s"] = None
                    log(f"{what}: {target.daemon} on n{holder} did not exit within {FIRST_OK_MAX_S:g} s")
                target.forget_exited(holder, target.daemon)
            wait_first_ok(client, t_fault, args.observe, FIRST_OK_MAX_S)
            # The node comes back.
            t_back = time.monotonic()
            if fault == "kill":
                res["vip_left_on_killed_node_at_return"] = net.drop_vip(holder)
                net.set_link(holder, True)
                target.start_node(holder)
                run.set_live(holder, True)
            else:
                if target.daemon in target.procs[holder]:  # did not exit: stop it for good
                    target.kill_node(holder)
                    target.start_node(holder)
                else:
                    res["vip_left_after_clean_stop"] = net.has_vip(holder)
                    target.start_node(holder, [target.daemon])
            log(f"{what}: n{holder} started again")
        t_end = wait_window(client, t_back, args.after, SETTLE_S, MAX_EXTEND_S)
        target.check_started()
        res.update(analyse(client, sampler, holder, t_start, t_steady, t_fault, t_back, t_end, fault))
        # To match the processes' logs (wall clock) with the times here (after the fault).
        res["wall_clock_at_fault"] = datetime.datetime.fromtimestamp(
            time.time() - (time.monotonic() - t_fault)).astimezone().isoformat(timespec="milliseconds")
        res["logs"] = {k: pb.scan_log(v) for k, v in target.logs().items()}
        return res
    finally:
        if client is not None:
            client.stop()
        if sampler is not None:
            sampler.stop()
        if target is not None:
            target.stop_all()
        try:
            net.reset()
        except BenchError:
            pass


def analyse(client, sampler, holder, t_start, t_steady, t_fault, t_back, t_end, fault):
    rel = lambda t: None if t is None else round(t - t_fault, 3)
    atts = sorted(client.attempts)
    samples = sampler.samples
    out = {"window_s": round(t_end - t_fault, 3), "back_at_s": rel(t_back), "skipped_ticks": len(client.skipped),
           "skipped_ticks_after_fault": [rel(t) for t in client.skipped if t >= t_fault][:50],
           "attempts": len(atts), "samples": len(samples)}
    if sampler.error:
        out["sampler_error"] = sampler.error

    # -- how long a successful attempt (connect, authentication, SELECT 1) takes when all is
    # well: in the steady state (its STEADY_S of successes, then the wait) up to the fault
    durs = sorted(a[1] - a[0] for a in atts if a[2] and t_steady - STEADY_S <= a[0] and a[1] < t_fault)
    out["ok_attempt_ms_steady"] = {"n": len(durs), "median": round(statistics.median(durs) * 1000, 1),
                                   "p95": round(durs[int(len(durs) * 0.95)] * 1000, 1),
                                   "max": round(durs[-1] * 1000, 1)} if durs else None

    # -- the fault: first successful query started after it
    after = [a for a in atts if a[0] >= t_fault]
    oks = [a for a in after if a[2]]
    first_ok = min((a[1] for a in oks), default=None)
    out["first_ok_s"] = rel(first_ok)
    out["failed_before_first_ok"] = sum(1 for a in after if not a[2] and (first_ok is None or a[0] < first_ok))
    kinds = {}
    for a in after:
        if not a[2] and a[0] < t_back:
            k = error_kind(a[3] or "")
            kinds[k] = kinds.get(k, 0) + 1
    out["failure_kinds_in_fault_window"] = kinds

    # -- the VIP as the sampler saw it
    def live_holders(s):
        return [i for i, h in enumerate(s[1]) if h and i in s[2]]
    moved = next((s[0] for s in samples if s[0] >= t_fault and any(h for i, h in enumerate(s[1]) if i != holder)),
                 None)
    out["vip_on_other_node_s"] = rel(moved)
    released = next((s[0] for s in samples if s[0] >= t_fault and not s[1][holder]), None)
    out["old_holder_released_s"] = rel(released)

    def double_time(lo, hi, live_only=True):
        total, count = 0.0, 0
        for a, b in zip(samples, samples[1:] + [(t_end, None, None, None)]):
            if lo <= a[0] < hi:
                n = len(live_holders(a)) if live_only else sum(a[1])
                if n > 1:
                    count += 1
                    total += min(b[0], hi) - a[0]
        return round(total, 3), count
    first_sample = samples[0][0] if samples else t_start
    before = double_time(first_sample, t_fault)[1]
    dt, dc = double_time(t_fault, t_back)
    out["two_live_holders_during_fault_s"], out["two_live_holders_during_fault"] = dt, dc
    out["two_holders_incl_not_live_during_fault_s"] = double_time(t_fault, t_back, live_only=False)[0]
    dt, da = double_time(t_back, t_end + 1)
    out["two_live_holders_after_back_s"], out["two_live_holders_after_back"] = dt, da
    # Split brain: two holders whose hosts run and are connected. A killed or frozen node
    # is not live, so for kill, shutdown and freeze every sample counts; a partition is
    # a split by design (reported above), so only the samples outside it count.
    if fault == "partition":
        out["split_brain_samples"] = before + da
        out["samples_checked"] = sum(1 for s in samples if s[0] < t_fault or s[0] >= t_back)
    else:
        out["split_brain_samples"] = before + dc + da
        out["samples_checked"] = len(samples)
    out["holders_at_end"] = [f"n{i}" for i in live_holders(samples[-1])] if samples else []
    # holder changes, relative to the fault
    changes, last = [], None
    for s in samples:
        cur = [f"n{i}" for i, h in enumerate(s[1]) if h]
        if cur != last:
            changes.append([rel(s[0]), cur, sorted(f"n{i}" for i in s[2])])
            last = cur
    out["vip_changes"] = changes
    # The client's neighbour (ARP) entry for the VIP: changes, and how long it held the MAC
    # of a node without the VIP while another node had it (queries then go nowhere).
    changes, last = [], None
    for s in samples:
        node, state = s[3]
        cur = [None if node is None else ("other" if node < 0 else f"n{node}"), state]
        if cur != last:
            changes.append([rel(s[0])] + cur)
            last = cur
    out["client_arp_changes"] = changes[:200]

    def arp_wrong(lo, hi):
        total = 0.0
        for a, b in zip(samples, samples[1:] + [(t_end, None, None, None)]):
            node = a[3][0]
            if lo <= a[0] < hi and node is not None and node >= 0 and not a[1][node] and any(a[1]):
                total += min(b[0], hi) - a[0]
        return round(total, 3)
    out["client_arp_on_node_without_vip_during_fault_s"] = arp_wrong(t_fault, t_back)
    out["client_arp_on_node_without_vip_after_back_s"] = arp_wrong(t_back, t_end + 1)

    # -- after the node came back / the partition healed
    back = [a for a in atts if a[0] >= t_back]
    fails_back = [a for a in back if not a[2]]
    out["failed_after_back"] = len(fails_back)
    if fails_back:
        last_fail_end = max(a[1] for a in fails_back)
        rec = min((a[1] for a in back if a[2] and a[1] > last_fail_end), default=None)
        out["recovered_after_back_s"] = None if rec is None else round(rec - t_back, 3)
    else:
        out["recovered_after_back_s"] = 0.0
    out["stuck_after_back"] = any(a[0] >= t_back + STUCK_AFTER_S for a in fails_back)
    ends = [t_back] + sorted(a[1] for a in back if a[2]) + [t_end]
    out["longest_gap_after_back_s"] = round(max(b - a for a, b in zip(ends, ends[1:])), 3)
    out["failure_kinds_after_back"] = {}
    for a in fails_back:
        k = error_kind(a[3] or "")
        out["failure_kinds_after_back"][k] = out["failure_kinds_after_back"].get(k, 0) + 1
    out["failures"] = [[rel(a[0]), rel(a[1]), a[3]] for a in atts if not a[2] and a[0] >= t_fault][:400]
    return out


# --------------------------------------------------------------------------- report


# The report helpers of failover.py; times here are shown with two decimals.
med, num = fo.med, fo.num


def fmt(v, spec=".2f"):
    return fo.fmt(v, spec)


def summary(target, fault, runs):
    ok = [r for r in runs if "error" not in r]
    s = {"target": target, "fault": fault, "runs": len(runs), "completed": len(ok)}
    if not ok:
        return s
    firsts = [r["first_ok_s"] for r in ok if r.get("first_ok_s") is not None]
    s["no_query_runs"] = sum(1 for r in ok if r.get("first_ok_s") is None)
    s["first_ok_s"] = med(firsts)
    s["first_ok_min_s"] = min(firsts) if firsts else None
    s["first_ok_max_s"] = max(firsts) if firsts else None
    s["first_ok_by_run"] = [r.get("first_ok_s") for r in ok]
    for k in ("vip_on_other_node_s", "old_holder_released_s", "failed_before_first_ok",
              "two_live_holders_during_fault_s", "failed_after_back", "recovered_after_back_s",
              "longest_gap_after_back_s", "daemon_exit_s"):
        s[k] = med([r.get(k) for r in ok])
    s["recovered_after_back_max_s"] = max((r["recovered_after_back_s"] for r in ok
                                           if r.get("recovered_after_back_s") is not None), default=None)
    s["longest_gap_after_back_max_s"] = max((r["longest_gap_after_back_s"] for r in ok), default=None)
    s["split_brain_samples"] = sum(r["split_brain_samples"] for r in ok)
    s["samples_checked"] = sum(r["samples_checked"] for r in ok)
    s["two_live_holders_during_fault"] = sum(r["two_live_holders_during_fault"] for r in ok)
    s["two_holders_incl_not_live_during_fault_s"] = med([r.get("two_holders_incl_not_live_during_fault_s")
                                                         for r in ok])
    s["vip_on_frozen_node_at_sigcont"] = sum(1 for r in ok if r.get("vip_on_frozen_node_at_sigcont"))
    s["client_arp_wrong_after_back_by_run"] = [r.get("client_arp_on_node_without_vip_after_back_s") for r in ok]
    s["stuck_runs"] = sum(1 for r in ok if r["stuck_after_back"])
    s["vip_left_on_killed_node"] = sum(1 for r in ok if r.get("vip_left_on_killed_node_at_return"))
    s["vip_left_after_clean_stop"] = sum(1 for r in ok if r.get("vip_left_after_clean_stop"))
    return s


BACK = {"kill": "after the node is back", "shutdown": "after the daemon is back", "partition": "after the heal",
        "freeze": "after SIGCONT"}


def table(fault, sums):
    head = ["target", "runs", "first query after the fault: median (min–max) s", "VIP on another node (median s)",
            "failed attempts before it (median)"]
    if fault == "partition":
        head += ["old holder dropped the VIP (median s)", "two live holders while cut off (median s)"]
    if fault == "freeze":
        head += ["frozen holder's kernel dropped the VIP (median s)",
                 "two holders, one of them frozen (median s)"]
    head += ["split-brain samples: two live holders" + (" outside the partition" if fault == "partition" else "")
             + " (of samples)",
             f"{BACK[fault]}: failed attempts (median), longest gap median / max (s)"]
    if fault in CUT_FAULTS:
        head += [f"recovered {BACK[fault]}: median / max (s)", f"clients stuck > 5 s {BACK[fault]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sums:
        if not s.get("completed"):
            lines.append(f"| {s['target']} | 0/{s['runs']} | no run completed |" + " |" * (len(head) - 3))
            continue
        n = s["completed"]
        first = f"{fmt(s['first_ok_s'])} ({fmt(s['first_ok_min_s'])}–{fmt(s['first_ok_max_s'])})"
        if s["no_query_runs"]:
            first += f"; none in {s['no_query_runs']}/{n}"
        row = [s["target"], f"{n}" + (f"/{s['runs']}" if n != s["runs"] else ""), first,
               fmt(s["vip_on_other_node_s"]), num(s["failed_before_first_ok"])]
        if fault == "partition":
            row += [fmt(s["old_holder_released_s"]), fmt(s["two_live_holders_during_fault_s"])]
        if fault == "freeze":
            row += [fmt(s["old_holder_released_s"]), fmt(s["two_holders_incl_not_live_during_fault_s"])]
        row += [f"{s['split_brain_samples']} (of {s['samples_checked']})",
                f"{num(s['failed_after_back'])}, {fmt(s['longest_gap_after_back_s'])} / "
                f"{fmt(s['longest_gap_after_back_max_s'])}"]
        if fault in CUT_FAULTS:
            row += [f"{fmt(s['recovered_after_back_s'])} / {fmt(s['recovered_after_back_max_s'])}",
                    f"{s['stuck_runs']}/{n}"]
        lines.append("| " + " | ".join(row) + " |")
    out = "\n".join(lines) + "\n"
    notes = []
    for s in sums:
        n = s.get("completed")
        if not n:
            continue
        if fault == "kill":
            notes.append(f"{s['target']}: VIP still on the killed node's eth0 when it came back in "
                         f"{s['vip_left_on_killed_node']}/{n} runs (removed before its start, as a reboot would)")
        if fault == "shutdown":
            notes.append(f"{s['target']}: VIP left on the node after its daemon exited in "
                         f"{s['vip_left_after_clean_stop']}/{n} runs; daemon exited {fmt(s['daemon_exit_s'])} s "
                         f"after SIGTERM (median)")
        if fault == "freeze":
            notes.append(f"{s['target']}: VIP still on the frozen node at SIGCONT in "
                         f"{s['vip_on_frozen_node_at_sigcont']}/{n} runs")
        wrong = [x for x in s.get("client_arp_wrong_after_back_by_run", []) if x and x >= 1]
        if wrong:
            notes.append(f"{s['target']}: the client's ARP entry for the VIP held the MAC of a node without the "
                         f"VIP, while another node had it, for {', '.join(f'{x:.1f}' for x in wrong)} s "
                         f"{BACK[fault]} ({len(wrong)}/{n} runs)")
    if notes:
        out += "\n" + "\n".join(f"- {x}" for x in notes) + "\n"
    base = next((s for s in sums if s["target"] == "keepalived" and s.get("first_ok_s")), None)
    if base:
        for s in sums:
            if s["target"].startswith("pgvigil") and s.get("first_ok_s") is not None:
                out += (f"\n{s['target']} / keepalived (median time to the first query): "
                        f"{s['first_ok_s'] / base['first_ok_s']:.2f}x\n")
    return out


def run_line(r):
    what = f"{r['target']} {r['fault']} run {r['run']}"
    if "error" in r:
        return f"- {what}: FAILED: {r['error'].splitlines()[0][:300]}"
    return (f"- {what}: holder {r['holder']}; first query {fmt(r['first_ok_s'])} s after the fault "
            f"({r['failed_before_first_ok']} failed attempts), VIP on another node at "
            f"{fmt(r['vip_on_other_node_s'])} s, old holder released at {fmt(r['old_holder_released_s'])} s, "
            f"two live holders {r['two_live_holders_during_fault_s']:.2f} s during the fault; back at "
            f"{fmt(r['back_at_s'])} s: {r['failed_after_back']} failed, longest gap "
            f"{fmt(r['longest_gap_after_back_s'])} s, recovered {fmt(r['recovered_after_back_s'])} s"
            f"{', STUCK' if r['stuck_after_back'] else ''}, client ARP entry on a node without the VIP "
            f"{r['client_arp_on_node_without_vip_after_back_s']:.2f} s; split-brain samples "
            f"{r['split_brain_samples']}/{r['samples_checked']}; holders at the end "
            f"{','.join(r['holders_at_end']) or 'none'}"
            + (f"; WARNING: {len(r['skipped_ticks_after_fault'])} client ticks skipped after the fault (every "
               f"worker busy)" if r.get("skipped_ticks_after_fault") else ""))


# --------------------------------------------------------------------------- main


class Ctx:
    pass


def loadavg():
    """The 1, 5 and 15 minute load averages (other work on the machine shows here)."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return None


def find_pgvigil(path, explicit):
    if os.access(path, os.X_OK):
        return path
    if explicit:
        raise BenchError(f"pgvigil binary {path} not found")
    log(f"{path} not found; cargo build --release (several minutes)")
    r = subprocess.run(["cargo", "build", "--release", "--bin", "pgvigil"], cwd=pb.REPO)
    if r.returncode != 0 or not os.access(path, os.X_OK):
        raise BenchError(f"cargo build --release failed; build pgvigil and pass --pgvigil PATH")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs per target and fault (default 5)")
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help="comma list from " + ",".join(ALL_TARGETS) + " (default: " + ",".join(DEFAULT_TARGETS) + ")")
    ap.add_argument("--faults", "--fault", default=",".join(DEFAULT_FAULTS),
                    help="comma list from " + ",".join(FAULTS) + " (default: all)")
    ap.add_argument("--interval-ms", type=int, default=50, help="a new client connection every MS (default 50)")
    ap.add_argument("--connect-timeout-ms", type=int, default=300, help="client connect timeout (default 300)")
    ap.add_argument("--query-timeout-ms", type=int, default=1000,
                    help="client timeout for authentication and SELECT 1 once connected (default 1000)")
    ap.add_argument("--observe", type=float, default=6.0,
                    help="seconds after a kill or shutdown before the node comes back (longer while no query "
                         f"has succeeded yet, up to {FIRST_OK_MAX_S:g}; default 6)")
    ap.add_argument("--partition-s", type=float, default=8.0, help="seconds the holder is cut off (default 8)")
    ap.add_argument("--freeze-s", type=float, default=8.0, help="seconds the holder is frozen (default 8)")
    ap.add_argument("--after", type=float, default=8.0,
                    help="seconds observed after the node is back or the partition healed (longer while "
                         f"queries fail, up to {MAX_EXTEND_S:g}; default 8)")
    default_bin = os.path.join(pb.REPO, "target", "release", "pgvigil")
    ap.add_argument("--pgvigil", default=None, help="pgvigil binary (default: target/release/pgvigil of this "
                                                    "repository, built with cargo build --release if missing)")
    ap.add_argument("--keepalived", default=None, help="keepalived binary (default: from PATH or /usr/sbin)")
    ap.add_argument("--pgbouncer", default=None, help="PgBouncer binary (default: from PATH or /usr/sbin)")
    ap.add_argument("--out", "--json", dest="out", metavar="FILE",
                    help="write meta data, summaries and every run as JSON (default: a file in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs and logs of every run)")
    args = ap.parse_args()

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in ALL_TARGETS]
    if bad or not targets:
        ap.error(f"unknown target(s): {', '.join(bad) or '(none)'}; choose from {','.join(ALL_TARGETS)}")
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    bad = [f for f in faults if f not in FAULTS]
    if bad or not faults:
        ap.error(f"unknown fault(s): {', '.join(bad) or '(none)'}; choose from {','.join(FAULTS)}")
    if os.geteuid() != 0:
        print("vip.py: must run as root (network namespaces, the VIP, keepalived): "
              "sudo python3 bench/vip.py", file=sys.stderr)
        return 2
    if not shutil.which("ip") or not shutil.which("bridge"):
        raise BenchError("the ip and bridge commands (iproute2) are missing: apt-get install -y iproute2")

    pb.stop_on_signals(signal.SIGHUP)

    ctx = Ctx()
    ctx.args = args
    skipped = {}
    if any(t.startswith("pgvigil") for t in targets):
        ctx.pgvigil = find_pgvigil(args.pgvigil or default_bin, args.pgvigil is not None)
    kas = [t for t in targets if t.startswith("keepalived")]
    if kas:
        ctx.keepalived = args.keepalived or pb.find_binary("keepalived", ["/usr/sbin/keepalived"])
        ctx.pgbouncer = args.pgbouncer or pb.find_binary("pgbouncer", ["/usr/sbin/pgbouncer"])
        missing = [n for n, b in (("keepalived", ctx.keepalived), ("pgbouncer", ctx.pgbouncer)) if not b]
        why = None
        if missing:
            why = f"{' and '.join(missing)} not found; install with: apt-get install -y {' '.join(missing)}"
        elif not shutil.which("setpriv"):
            why = "setpriv (util-linux) not found, needed to run PgBouncer as postgres"
        if why:
            for t in kas:
                skipped[t] = why
                targets.remove(t)
    for t, why in skipped.items():
        log(f"skipping {t}: {why}")
    if not targets:
        raise BenchError("no target left to run")

    versions = {}
    if hasattr(ctx, "pgvigil"):
        versions["pgvigil"] = subprocess.run([ctx.pgvigil, "--version"], capture_output=True,
                                             text=True).stdout.strip()
        st = os.stat(ctx.pgvigil)
        versions["pgvigil_binary"] = (f"{ctx.pgvigil} (modified "
                                      f"{datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec='seconds')})")
    if any(t.startswith("keepalived") for t in targets):
        v = subprocess.run([ctx.keepalived, "--version"], capture_output=True, text=True)
        versions["keepalived"] = (v.stdout + v.stderr).strip().splitlines()[0]
        v = subprocess.run([ctx.pgbouncer, "--version"], capture_output=True, text=True)
        versions["pgbouncer"] = v.stdout.strip().splitlines()[0]

    pgbin = pb.find_pg_bin()
    load_start = loadavg()
    results = []
    interrupted = False
    exit_code = 0
    remove_stale_namespaces()
    net = Net()
    ctx.net = net
    env = None
    probes = []
    try:
        net.create()
        log(f"namespaces {net.bridge}, {', '.join(net.nodes)}, {net.client}, {net.pg}")
        env = pb.Env(args.keep)
        ctx.env = env
        _, ctx.pg_port, versions["postgres"] = setup_postgres(env, pgbin, net.pg)
        log(f"PostgreSQL {versions['postgres']} on {PG_ADDR}:{ctx.pg_port}")
        # The nodes reach it through the bridge.
        try:
            in_netns(net.nodes[0], lambda: fo.PgConn(PG_ADDR, ctx.pg_port, USER, PASSWORD, DBNAME, 5).close())
        except (fo.Dropped, OSError) as e:
            raise BenchError(f"PostgreSQL at {PG_ADDR}:{ctx.pg_port} is not reachable from {net.nodes[0]}: {e}")
        ctx.probes = probes = [NetlinkProbe(ns) for ns in net.nodes]
        ctx.client_probe = NetlinkProbe(net.client)
        probes.append(ctx.client_probe)
        ctx.macs = node_macs(net)
        for run_no in range(1, args.runs + 1):
            for fi, fault in enumerate(faults):
                k = (run_no - 1 + fi) % len(targets)
                for t in targets[k:] + targets[:k]:  # rotate who goes first
                    t0 = time.monotonic()
                    try:
                        r = trial(ctx, t, fault, run_no)
                    except BenchError as e:
                        r = {"target": t, "fault": fault, "run": run_no, "error": str(e)}
                        exit_code = 1
                    r["wall_s"] = round(time.monotonic() - t0, 1)
                    results.append(r)
                    log(run_line(r)[2:])
    except KeyboardInterrupt:
        interrupted = True
        exit_code = 130
        log("interrupted; cleaning up")
    finally:
        for p in probes:
            p.close()
        if env is not None:
            env.cleanup()
        net.remove()
    left = [ns for ns in net.nodes + [net.bridge, net.client, net.pg] if ns in sh("ip", "netns", "list").stdout.split()]
    if left:
        log(f"WARNING: namespaces left behind: {left}")

    sums = {f: [summary(t, f, [r for r in results if r["target"] == t and r["fault"] == f]) for t in targets]
            for f in faults}
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "runs": args.runs, "targets": targets, "faults": faults, "skipped": skipped,
        "interval_ms": args.interval_ms, "connect_timeout_ms": args.connect_timeout_ms,
        "query_timeout_ms": args.query_timeout_ms, "observe_s": args.observe, "partition_s": args.partition_s,
        "freeze_s": args.freeze_s,
        "after_s": args.after, "versions": versions, "interrupted": interrupted,
        "loadavg_at_start": load_start, "loadavg_at_end": loadavg(),
    }
    try:
        meta["pgvigil_git"] = subprocess.run(["git", "-C", pb.REPO, "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    print()
    print(f"## VIP failover ({meta['date']}, {meta['cpus']} CPUs, kernel {meta['kernel']})")
    print()
    print(f"A new client connection to {VIP}:{PROXY_PORT} every {args.interval_ms} ms (connect timeout "
          f"{args.connect_timeout_ms} ms), `SELECT 1`; medians over {args.runs} run(s); load average "
          f"{' '.join(load_start or [])} at the start, {' '.join(meta['loadavg_at_end'] or [])} at the end; "
          + "; ".join(f"{k}: {v}" for k, v in versions.items()))
    for t, why in skipped.items():
        print(f"skipped {t}: {why}")
    for f in faults:
        print()
        print(f"### {f}")
        print()
        print(table(f, sums[f]))
    print("Runs:")
    for r in results:
        print(run_line(r))
    out = args.out or os.path.join(tempfile.gettempdir(),
                                   f"pgvigil-vip-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w") as f:
        json.dump({"meta": meta, "summaries": sums, "runs": results}, f, indent=2)
    print(f"\nJSON written to {out}")
    return exit_code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"vip.py: {e}", file=sys.stderr)
        sys.exit(2)
