#!/usr/bin/env python3
"""Idle clients: memory per idle client connection, pgvigil against PgBouncer and Pgpool-II.

One PostgreSQL primary is built in a temporary directory; each proxy in turn is started
in front of it. The script opens N client connections to the proxy (startup and
SCRAM-SHA-256 authentication each, one statement on the first to warm the pool), leaves
them idle, and reads the proxy's memory before and after: the proportional set size
(PSS, /proc/PID/smaps_rollup) summed over the proxy's processes, and for single-process
proxies the resident set (RSS) too. The difference divided by N is the memory each idle
client costs.

Pgpool-II serves each client with a process of its own (num_init_children processes,
forked at start), so N clients need N processes: it is measured with fewer clients
(--pgpool-clients, default 100) as the cost of a child process with a connected client,
from two runs (10 and --pgpool-clients children) so that the parent's share cancels out.

Usage:  sudo python3 bench/idle_clients.py [--clients 10000] [--targets pgvigil,pgbouncer,pgpool]
See bench/README.md.  Python 3.11 standard library only (plus the PostgreSQL binaries).
"""

import argparse
import os
import resource
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgbench as pb  # noqa: E402
from failover import PgConn, Dropped  # noqa: E402
from pgbench import BenchError, log  # noqa: E402

USER, PASSWORD, DBNAME = pb.USER, pb.PASSWORD, pb.DBNAME
TARGETS = ["pgvigil", "pgbouncer", "pgpool"]


def children(pid):
    """pid and all its descendants."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def kib(pid, field, path="smaps_rollup"):
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(pid):
    """(PSS KiB summed over the process tree, RSS KiB of the main process, processes)."""
    procs = children(pid)
    return sum(kib(p, "Pss") for p in procs), kib(pid, "VmRSS", "status"), len(procs)


def open_clients(port, n, progress_every=1000):
    conns = []
    start = time.monotonic()
    for i in range(n):
        try:
            c = PgConn("127.0.0.1", port, USER, PASSWORD, DBNAME, 10, appname="idle-bench")
        except Dropped as e:
            raise BenchError(f"client {i + 1} of {n} could not connect: {e}")
        if i == 0:
            c.query("SELECT 1")
        conns.append(c)
        if progress_every and (i + 1) % progress_every == 0:
            log(f"  {i + 1} clients connected ({time.monotonic() - start:.0f} s)")
    return conns


def settle():
    """Let the proxy finish its work for the last connections (allocator, timers)."""
    time.sleep(3)


def measure(proc, port, n):
    settle()
    before = memory(proc.pid)
    conns = open_clients(port, n)
    settle()
    after = memory(proc.pid)
    # Every client must still be there and usable.
    alive = 0
    for c in conns[:: max(1, n // 20)]:
        try:
            c.query("SELECT 1")
            alive += 1
        except (Dropped, Exception):  # noqa: BLE001 - any failure counts as not alive
            pass
    for c in conns:
        c.close()
    sampled = len(conns[:: max(1, n // 20)])
    if alive != sampled:
        raise BenchError(f"only {alive} of {sampled} sampled idle clients could still run a query")
    return before, after


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10000, help="idle clients for pgvigil and PgBouncer (default 10000)")
    ap.add_argument("--pgpool-clients", type=int, default=100, help="clients (= child processes) for Pgpool-II (default 100)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma list from " + ",".join(TARGETS))
    ap.add_argument("--pgvigil", default=os.path.join(pb.REPO, "target", "release", "pgvigil"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        ap.error(f"unknown target(s): {', '.join(bad)}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.clients + 200
    if soft < need:
        if hard < need:
            raise BenchError(f"the open-file limit ({hard}) is below {need}: raise it (ulimit -Hn) or use --clients")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    pb.stop_on_signals()

    pgbin = pb.find_pg_bin()
    results = {}
    env = pb.Env(args.keep)
    try:
        _, pgport, version = pb.setup_postgres(env, pgbin, 1, 0)
        log(f"PostgreSQL {version}")
        # PgBouncer and pgvigil keep one server connection for all idle clients.
        if "pgvigil" in targets:
            if not os.access(args.pgvigil, os.X_OK):
                raise BenchError(f"pgvigil binary {args.pgvigil} not found: cargo build --release")
            p, port, v = pb.setup_pgvigil(env, pgbin, args.pgvigil, pgport, "pgvigil", [], max_clients=args.clients + 100)
            log(f"{v}: {args.clients} idle clients")
            results["pgvigil"] = (v, args.clients, *measure(p, port, args.clients))
            env.stop(p, signal.SIGINT)
        if "pgbouncer" in targets:
            b = pb.find_binary("pgbouncer", ["/usr/sbin/pgbouncer"])
            if not b:
                log("skipping pgbouncer: not installed (apt-get install pgbouncer)")
            else:
                p, port, v = pb.setup_pgbouncer(env, pgbin, b, pgport, max_client_conn=args.clients + 100)
                log(f"{v}: {args.clients} idle clients")
                results["pgbouncer"] = (v, args.clients, *measure(p, port, args.clients))
                env.stop(p, signal.SIGTERM)
        if "pgpool" in targets:
            b = pb.find_binary("pgpool", ["/usr/sbin/pgpool"])
            if not b:
                log("skipping pgpool: not installed (apt-get install pgpool2)")
            else:
                runs = []
                for n in (10, args.pgpool_clients):
                    p, port, v = pb.setup_pgpool(env, pgbin, b, pgport, num_init_children=n)
                    log(f"{v.splitlines()[0]}: {n} children, {n} idle clients")
                    before, after = measure(p, port, n)
                    runs.append((n, after))
                    env.stop(p, signal.SIGINT)
                    time.sleep(1)
                (n1, a1), (n2, a2) = runs
                per = (a2[0] - a1[0]) / (n2 - n1)
                results["pgpool"] = (v.splitlines()[0], n2, None, a2, per)
    finally:
        env.cleanup()
    report(results)


def report(results):
    print()
    print("| proxy | idle clients | processes | PSS before (MiB) | PSS after (MiB) | per idle client (KiB) | RSS per idle client (KiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    per_client = {}
    for name, r in results.items():
        if name == "pgpool":
            v, n, _, after, per = r
            per_client[name] = per
            print(f"| {v} | {n} | {after[2]} | – | {after[0] / 1024:.1f} | {per:.0f} (a child process each) | – |")
            continue
        v, n, before, after = r
        per = (after[0] - before[0]) / n
        rss = (after[1] - before[1]) / n
        per_client[name] = per
        print(f"| {v} | {n} | {after[2]} | {before[0] / 1024:.1f} | {after[0] / 1024:.1f} | {per:.1f} | {rss:.1f} |")
    if "pgvigil" in per_client:
        for other in ("pgbouncer", "pgpool"):
            if other in per_client and per_client[other] > 0:
                print(f"\npgvigil / {other} memory per idle client: {per_client['pgvigil'] / per_client[other]:.2f}")
    print("\nGoal: pgvigil ≤ 16 KiB per idle client.")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"idle_clients.py: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
