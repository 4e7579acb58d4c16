#!/usr/bin/env python3
"""TLS overhead: pgbench through pgvigil and PgBouncer, with and without TLS on both legs.

One PostgreSQL primary (ssl = on, a throwaway ECDSA P-256 certificate) in a temporary
directory. Targets, each run with `pgbench -S` (select-only) in every mode asked for:

  direct         pgbench -> PostgreSQL, no TLS
  direct-tls     pgbench -> PostgreSQL over TLS
  pgbouncer      pgbench -> PgBouncer -> PostgreSQL, no TLS
  pgbouncer-tls  TLS on both legs (client_tls_sslmode, server_tls_sslmode = require)
  pgvigil        pgbench -> pgvigil -> PostgreSQL, no TLS (one server, no standbys: pgvigil,
                 like PgBouncer, sends everything to it)
  pgvigil-tls    TLS on both legs ([tls] cert_file/key_file, backend_tls = "require")

pgbench connects with sslmode=require to the -tls targets and sslmode=disable to the
others. Reported per target: TPS, the proxy's CPU per transaction (user + system time of
its processes during the run, from /proc), and for each proxy the TLS overhead: the ratio
of TLS to plain for TPS and for CPU per transaction. Targets take turns round-robin, the
first one rotating, and each cell is the median of --repeat runs.

Usage:  sudo python3 bench/tls.py [--duration 10] [--repeat 3] [--clients 16] [--modes simple,prepared]
See bench/README.md.  Python 3.11 standard library only (plus PostgreSQL, PgBouncer, openssl).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgbench as pb  # noqa: E402
from pgbench import BenchError, log  # noqa: E402

TARGETS = ["direct", "direct-tls", "pgbouncer", "pgbouncer-tls", "pgvigil", "pgvigil-tls"]


def make_cert(env):
    """A self-signed ECDSA P-256 certificate for localhost / 127.0.0.1, readable by the
    server user (PostgreSQL and PgBouncer run as it)."""
    crt, key = env.path("server.crt"), env.path("server.key")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"openssl failed: {r.stderr}")
    for p in (crt, key):
        os.chmod(p, 0o600)
        env.chown(p)
    return crt, key


def enable_ssl(env, pgbin, pgport, crt, key):
    r = pb.psql(pgbin, pgport, f"ALTER SYSTEM SET ssl_cert_file = '{crt}'", f"ALTER SYSTEM SET ssl_key_file = '{key}'",
                "ALTER SYSTEM SET ssl = on", "SELECT pg_reload_conf()")
    if r.returncode != 0:
        raise BenchError(f"enabling ssl failed: {r.stderr}")
    # hostssl and host both match TLS connections; the bench's pg_hba has `host` lines.
    env_ssl = pb.client_env("require")
    for _ in range(50):
        r = subprocess.run([os.path.join(pgbin, "psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(pgport), "-U", pb.USER,
                            "-d", pb.DBNAME, "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
                           capture_output=True, text=True, env=env_ssl)
        if r.returncode == 0 and r.stdout.strip() == "t":
            return
        time.sleep(0.2)
    raise BenchError(f"PostgreSQL does not accept TLS after ssl = on: {r.stderr}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the table shows medians (default 3)")
    ap.add_argument("--clients", type=int, default=16, help="pgbench -c (default 16)")
    ap.add_argument("--modes", default="simple,prepared", help="pgbench -M modes (default simple,prepared)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma list from " + ",".join(TARGETS))
    ap.add_argument("--pgvigil", default=os.path.join(pb.REPO, "target", "release", "pgvigil"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        ap.error(f"unknown target(s): {', '.join(bad)}")
    modes = [m for m in args.modes.split(",") if m]

    pb.stop_on_signals()

    pgbin = pb.find_pg_bin()
    env = pb.Env(args.keep)
    results = []
    versions = {}
    try:
        pg_proc, pgport, versions["postgres"] = pb.setup_postgres(env, pgbin, args.scale, 0)
        crt, key = make_cert(env)
        enable_ssl(env, pgbin, pgport, crt, key)
        procs, ports = {"direct": None, "direct-tls": None}, {"direct": pgport, "direct-tls": pgport}
        if any(t.startswith("pgvigil") for t in targets):
            if not os.access(args.pgvigil, os.X_OK):
                raise BenchError(f"pgvigil binary {args.pgvigil} not found: cargo build --release")
            # backend_tls defaults to "prefer", which would use TLS to this server: the plain
            # target says "disable".
            for t, extra in (("pgvigil", '[tls]\nbackend_tls = "disable"\n'),
                             ("pgvigil-tls", f'[tls]\ncert_file = "{crt}"\nkey_file = "{key}"\nbackend_tls = "require"\n')):
                if t in targets:
                    procs[t], ports[t], versions[t] = pb.setup_pgvigil(env, pgbin, args.pgvigil, pgport, t, [], extra=extra)
        if any(t.startswith("pgbouncer") for t in targets):
            b = pb.find_binary("pgbouncer", ["/usr/sbin/pgbouncer"])
            if not b:
                raise BenchError("pgbouncer not found (apt-get install pgbouncer)")
            tls = (f"client_tls_sslmode = allow\nclient_tls_key_file = {key}\nclient_tls_cert_file = {crt}\n"
                   "server_tls_sslmode = require\n")
            for t, extra in (("pgbouncer", ""), ("pgbouncer-tls", tls)):
                if t in targets:
                    procs[t], ports[t], versions[t] = pb.setup_pgbouncer(env, pgbin, b, pgport, extra=extra, name=t)
        cluster = {"proc": pg_proc, "port": pgport, "standbys": []}
        total = len(modes) * args.repeat * len(targets)
        n = 0
        for m in modes:
            for rep in range(args.repeat):
                k = rep % len(targets)
                for t in targets[k:] + targets[:k]:
                    n += 1
                    sslmode = "require" if t.endswith("-tls") else "disable"
                    r = pb.run_one(pgbin, t, ports[t], procs[t], cluster, "select-only", ["-S"], m, args.clients,
                                   args.duration, sslmode=sslmode)
                    results.append(r)
                    cpu = r.get("proxy_cpu_us_per_tx")
                    log(f"[{n}/{total}] {m:8} {t:14} tps={pb.fmt(r.get('tps'), '.0f'):>7}"
                        + (f" proxy cpu={cpu:.1f}µs/tx" if cpu is not None else "")
                        + (f"  ERROR {r['error']}" if r.get("error") else ""))
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        env.cleanup()
    report(results, targets, modes, versions, args)


def report(results, targets, modes, versions, args):
    def med(t, m, key):
        vals = [r[key] for r in results if r["target"] == t and r["mode"] == m and r.get(key) is not None and not pb.is_bad(r)]
        return statistics.median(vals) if vals else None

    print()
    print(f"## TLS overhead, pgbench -S -c {args.clients} -j {pb.THREADS}, {args.duration} s runs, median of {args.repeat}")
    print()
    print("; ".join(f"{k}: {v.splitlines()[0]}" for k, v in versions.items()))
    print()
    print("| mode | target | TPS | proxy CPU µs/tx | PostgreSQL CPU µs/tx |")
    print("|---|---|---:|---:|---:|")
    for m in modes:
        for t in targets:
            tps, cpu, pg = med(t, m, "tps"), med(t, m, "proxy_cpu_us_per_tx"), med(t, m, "postgres_cpu_us_per_tx")
            print(f"| {m} | {t} | {pb.fmt(tps, '.0f')} | {pb.fmt(cpu, '.1f')} | {pb.fmt(pg, '.1f')} |")
    print()
    print("TLS overhead (TLS / plain): TPS ratio, proxy CPU per transaction ratio")
    print()
    print("| mode | proxy | TPS TLS/plain | proxy CPU/tx TLS/plain |")
    print("|---|---|---:|---:|")
    for m in modes:
        for base in ("direct", "pgbouncer", "pgvigil"):
            if base in targets and f"{base}-tls" in targets:
                tps = pb.fmt(pb.ratio(med(f"{base}-tls", m, "tps"), med(base, m, "tps")), ".2f")
                cpu = pb.fmt(pb.ratio(med(f"{base}-tls", m, "proxy_cpu_us_per_tx"), med(base, m, "proxy_cpu_us_per_tx")), ".2f")
                print(f"| {m} | {base} | {tps} | {cpu if base != 'direct' else '–'} |")
    print()
    print("Goal: pgvigil's TLS overhead no worse than PgBouncer's.")


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print(f"tls.py: {e}", file=sys.stderr)
        sys.exit(1)
