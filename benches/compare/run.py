#!/usr/bin/env python3
"""Side-by-side benchmark: HAProxy 2.6 against kube-audit-forwarder relaying the
same API-server-like load to a counting discard backend.

Modes, each run in turn (the order alternates between repeats):
  direct       the load straight to the backend: the ceiling, no proxy
  haproxy      HAProxy 2.6, mode http, relaying each batch (its own job)
  passthrough  kube-audit-forwarder, http sink relaying each batch unchanged,
               events counted
  ndjson       kube-audit-forwarder, events split into JSON lines to the TCP
               backend
  haproxy-tls, passthrough-tls
               the production path: the load generator sends h2 over TLS
               with a client certificate, as the API server does, and the
               proxy terminates TLS (HAProxy: `bind ... ssl crt ... ca-file
               ... verify required alpn h2,http/1.1`; the forwarder: its
               HTTPS listener, client_auth required), then relays as above;
               both use the same certificates (deploy/make-webhook-certs.sh)
  baseline-passthrough, baseline-ndjson, baseline-passthrough-tls
               with --baseline-forwarder BINARY, the same modes run by that
               other build of kube-audit-forwarder, right after each of
               this build's: a change measured against the build before it
               in the same rounds, on the same machine

The proxy is pinned to core 0, the load generator and backend to core 1.
Reported per run: throughput, latency (p50/p99/max), CPU seconds of the
proxy's process (utime + stime from /proc) per GB relayed, peak RSS, and
events lost or duplicated at the backend. Two more scenarios measure memory:
steady load at the API server's default rate (10 batches/s of 400 mixed
events) and a 10x overload against a stalled backend.

With --scenario buffer it compares instead the memory buffer with the disk
buffer (buffer.type: disk), relaying through the http sink (passthrough) to
the counting backend: Metadata and mixed batches, open loop at the API
server's rate (10 batches/s of 400 events) and closed loop at saturation
(concurrency 4). Reported per run: throughput, ack latency, the forwarder's
CPU seconds per GB, fsyncs per second and their mean duration (from
audit_forwarder_buffer_fsync_duration_seconds on /metrics), and, as the
baseline of the same run, `dd bs=1M count=256 oflag=dsync` on the buffer's
file system (before and after the runs). Then the catch-up after an outage:
the backend down, --outage-secs of the API server's rate accepted into the
disk buffer, the log's pages dropped from the page cache, the backend
started, and the backlog's drain timed. HAProxy is not needed.

Usage (from the repository root):  python3 benches/compare/run.py
Writes benches/compare/results/results.json, prints the table, and draws
results/compare.png with gnuplot when it is installed; --scenario buffer
prints Markdown tables and writes results/buffer.json.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
REL = ROOT / "target" / "release"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid):
    """utime + stime of a process and its live children, in seconds."""
    total = 0
    pids = [pid] + [int(p) for p in os.listdir("/proc") if p.isdigit() and ppid(int(p)) == pid]
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / TICK


def ppid(pid):
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def http(url, data=None):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


class Backend:
    def __init__(self, http_addr=None):
        cmd = ["taskset", "-c", "1", str(REL / "audit-discard")] + (["--http", http_addr] if http_addr else [])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        addrs = json.loads(self.proc.stdout.readline())
        self.http, self.tcp = addrs["http"], addrs["tcp"]

    def reset(self):
        http(f"http://{self.http}/reset", b"")

    def stats(self):
        return http(f"http://{self.http}/stats")

    def control(self, what):
        http(f"http://{self.http}/{what}", b"")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def make_certs(tmp):
    """A CA, a serving certificate for 127.0.0.1 and a client certificate,
    made by deploy/make-webhook-certs.sh; HAProxy's crt file is the serving
    certificate and its key in one PEM."""
    d = tmp / "certs"
    subprocess.run(["bash", str(ROOT / "deploy" / "make-webhook-certs.sh"), "--out", str(d), "--cluster-ip", "127.0.0.1",
                    "--no-apply"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (d / "server.pem").write_text((d / "tls.crt").read_text() + (d / "tls.key").read_text())
    return d


def forwarder_config(tmp, mode, port, mport, backend, queue_bytes=268435456, wait_ms=5, buffer_dir=None, extra_sink=""):
    https = ""
    if mode.endswith("-tls"):
        # The webhook comes in on the HTTPS listener; the plain one is moved
        # out of the way.
        certs = tmp / "certs"
        https = f"""  https:
    enabled: true
    address: "127.0.0.1:{port}"
    crt_file: "{certs / 'tls.crt'}"
    key_file: "{certs / 'tls.key'}"
    client_ca_file: "{certs / 'ca.crt'}"
    client_auth: required
"""
        port = free_port()
    if mode == "ndjson":
        sink = f"""  - type: tcp
    name: backend
    endpoint: "{backend.tcp}"
    queue:
      capacity_bytes: {queue_bytes}
"""
    else:
        sink = f"""  - type: http
    name: backend
    endpoints: ["http://{backend.http}/post"]
    encoding: passthrough
    connect_timeout_secs: 5
    timeout_secs: 10
    queue:
      capacity_bytes: {queue_bytes}
{extra_sink}"""
    buffer = "" if buffer_dir is None else f"""buffer:
  type: disk
  path: "{buffer_dir}"
  max_bytes: 8589934592
"""
    path = tmp / f"{mode}.yaml"
    max_body = min(queue_bytes, 67108864)
    path.write_text(
        f"""source:
  http:
    address: "127.0.0.1:{port}"
    max_body_bytes: {max_body}
    max_decoded_bytes: {max_body}
{https}metrics:
  address: "127.0.0.1:{mport}"
pipeline:
  admission_wait_ms: {wait_ms}
log:
  level: warn
{buffer}sinks:
{sink}"""
    )
    return path


# Extra lines for HAProxy's `global` section (--haproxy-tune).
HAPROXY_TUNE = []


# A mode named with this prefix runs the --baseline-forwarder binary.
BASELINE_PREFIX = "baseline-"
BASELINE_FORWARDER = []


def start_proxy(tmp, mode, backend, queue_bytes=268435456, wait_ms=5, buffer_dir=None, extra_sink="", mport=None):
    port = free_port()
    if mode.startswith("haproxy"):
        cfg = tmp / "haproxy.cfg"
        bind = f"127.0.0.1:{port}"
        if mode == "haproxy-tls":
            certs = tmp / "certs"
            bind += f" ssl crt {certs / 'server.pem'} ca-file {certs / 'ca.crt'} verify required alpn h2,http/1.1"
        text = (HERE / "haproxy.cfg.in").read_text().replace("@LISTEN@", bind).replace("@BACKEND@", backend.http)
        if HAPROXY_TUNE:
            text = text.replace("global\n", "global\n" + "".join(f"    {t}\n" for t in HAPROXY_TUNE), 1)
        cfg.write_text(text)
        cmd = ["haproxy", "-db", "-f", str(cfg)]
    else:
        binary = REL / "kube-audit-forwarder"
        if mode.startswith(BASELINE_PREFIX):
            binary, mode = BASELINE_FORWARDER[0], mode.removeprefix(BASELINE_PREFIX)
        cfg = forwarder_config(tmp, mode, port, mport or free_port(), backend, queue_bytes, wait_ms, buffer_dir, extra_sink)
        cmd = [str(binary), "--config", str(cfg)]
    proc = subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def stop_proxy(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def loadgen(tmp, port, args, load, first_seq, duration, mix, tls=False):
    out = tmp / "load.json"
    url = f"http://127.0.0.1:{port}/post"
    if tls:
        certs = tmp / "certs"
        url = f"https://127.0.0.1:{port}/post"
        load = load + ["--http2", "--ca-file", str(certs / "ca.crt"), "--cert-file", str(certs / "apiserver-client.crt"),
                       "--key-file", str(certs / "apiserver-client.key")]
    cmd = ["taskset", "-c", "1", str(REL / "audit-loadgen"), "--url", url, "--mix", mix,
           "--duration-secs", str(duration), "--first-seq", str(first_seq), "--json", str(out)] + load
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def wait_delivered(backend, expected, timeout=30):
    end = time.time() + timeout
    while True:
        s = backend.stats()
        if s["unique"] >= expected or time.time() > end:
            return s
        time.sleep(0.1)


def one_run(tmp, backend, mode, conc, args, first_seq):
    backend.reset()
    proc, port = (None, int(backend.http.rsplit(":", 1)[1])) if mode == "direct" else start_proxy(tmp, mode, backend)
    pid = proc.pid if proc else None
    if pid:
        # taskset execs the program in place, so the pid is the proxy's.
        time.sleep(0.2)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    load = loadgen(tmp, port, args, ["--concurrency", str(conc)], first_seq, args.duration, args.mix,
                   tls=mode.endswith("-tls"))
    cpu1 = cpu_seconds(pid) if pid else 0.0
    delivered = wait_delivered(backend, load["events_ok"])
    rss = peak_rss_mib(pid) if pid else 0.0
    if proc:
        stop_proxy(proc)
    gb = load["bytes_ok"] / 1e9
    return {
        "mode": mode,
        "concurrency": conc,
        "mb_per_sec": load["mb_per_sec"],
        "events_per_sec": load["events_per_sec"],
        "batches_per_sec": load["batches_per_sec"],
        "p50_ms": load["latency_ms"]["p50"],
        "p99_ms": load["latency_ms"]["p99"],
        "max_ms": load["latency_ms"]["max"],
        "gb": gb,
        "cpu_s": cpu1 - cpu0,
        "cpu_s_per_gb": (cpu1 - cpu0) / gb if gb and pid else None,
        "peak_rss_mib": rss,
        "events_ok": load["events_ok"],
        "lost": load["events_ok"] - delivered["unique"],
        "duplicates": delivered["duplicates"],
        "statuses": load["statuses"],
    }


def steady_rss(tmp, backend, args):
    """The API server's default rate (10 batches/s x 400 mixed events)."""
    backend.reset()
    proc, port = start_proxy(tmp, "ndjson", backend)
    load = loadgen(tmp, port, args, ["--batches-per-sec", "10"], 0, args.steady_secs, "mixed")
    rss = peak_rss_mib(proc.pid)
    stop_proxy(proc)
    return {"scenario": "steady 4,000 events/s mixed", "events_per_sec": load["events_per_sec"], "peak_rss_mib": rss,
            "p99_ms": load["latency_ms"]["p99"], "statuses": load["statuses"]}


def overload(tmp, backend, args):
    """10x the API server's rate against a stalled backend, 64 MiB queue, the
    default admission wait (200 ms)."""
    backend.reset()
    backend.control("stall")
    queue = 64 << 20
    proc, port = start_proxy(tmp, "passthrough", backend, queue_bytes=queue, wait_ms=200)
    load = loadgen(tmp, port, args, ["--batches-per-sec", "100"], 0, args.overload_secs, "mixed")
    rss = peak_rss_mib(proc.pid)
    backend.control("unstall")
    stop_proxy(proc)
    return {"scenario": "10x overload, backend stalled, queue 64 MiB, admission wait 200 ms", "peak_rss_mib": rss,
            "rss_bound_mib": queue / 2**20 + 32, "p99_ms": load["latency_ms"]["p99"],
            "p50_ms": load["latency_ms"]["p50"], "statuses": load["statuses"]}


# --- --scenario buffer: memory against disk buffer ---------------------------

# The http sink tries a down backend again at least every second, so that the
# catch-up measures the buffer, not the backoff.
FAST_RETRY = """    retry:
      initial_backoff_ms: 100
      max_backoff_secs: 1
"""
FSYNC_METRIC = "audit_forwarder_buffer_fsync_duration_seconds"


def scrape(mport):
    """The fsync histogram (count, sum, buckets) and the events in the sinks'
    queues, from the forwarder's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {"count": 0.0, "sum": 0.0, "buckets": {}, "queue_events": 0.0}
    for line in text.splitlines():
        if line.startswith("audit_forwarder_queue_events"):
            out["queue_events"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith(FSYNC_METRIC + "_bucket"):
            le = float(line.split('le="', 1)[1].split('"', 1)[0])
            out["buckets"][le] = out["buckets"].get(le, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith(FSYNC_METRIC + "_count"):
            out["count"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith(FSYNC_METRIC + "_sum"):
            out["sum"] += float(line.rsplit(" ", 1)[1])
    return out


def fsync_quantile_ms(m0, m1, q):
    """The histogram bucket bound (ms) under which a `q` share of the fsyncs
    between two scrapes fell: an upper bound of that quantile."""
    total = m1["count"] - m0["count"]
    if not total:
        return None
    for le in sorted(m1["buckets"]):
        if m1["buckets"][le] - m0["buckets"].get(le, 0.0) >= q * total:
            return le * 1000
    return None


def dd_mb_per_sec(directory):
    """`dd if=/dev/zero of=FILE bs=1M count=256 oflag=dsync` in `directory`:
    each 1 MiB block written and synced before the next, as MB/s."""
    f = directory / "dd.bin"
    r = subprocess.run(["dd", "if=/dev/zero", f"of={f}", "bs=1M", "count=256", "oflag=dsync"],
                       capture_output=True, text=True, check=True, env=dict(os.environ, LC_ALL="C"))
    f.unlink()
    m = re.search(r"^(\d+) bytes.* copied, ([\d.e+-]+) s", r.stderr, re.M)
    return int(m[1]) / float(m[2]) / 1e6


def sync_floor(directory, size, rate, count):
    """The disk alone at the API server's rate: `count` writes of `size`
    bytes (one webhook body), each followed by fdatasync, `rate` per second,
    appended to one file in `directory`. Returns the latency quantiles in ms:
    the least a 200 after fdatasync can take there."""
    path = directory / "floor.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    data, lat, off = os.urandom(size), [], 0
    start = time.monotonic()
    try:
        for i in range(count):
            pause = start + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            t = time.monotonic()
            os.pwrite(fd, data, off)
            os.fdatasync(fd)
            lat.append((time.monotonic() - t) * 1000)
            off += size
    finally:
        os.close(fd)
        path.unlink()
    lat.sort()
    return {"bytes": size, "count": count, "p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "max_ms": lat[-1]}


def filesystem(directory):
    r = subprocess.run(["df", "--output=source,fstype,target", str(directory)], capture_output=True, text=True)
    return " ".join(r.stdout.splitlines()[-1].split()) if r.returncode == 0 else "?"


def buffer_run(tmp, backend, buffer, mix, load, args, first_seq):
    """One run through the http sink (passthrough) to the counting backend,
    with the memory or the disk buffer, open loop at the API server's rate or
    closed loop at saturation."""
    backend.reset()
    bdir = pathlib.Path(tempfile.mkdtemp(prefix="buffer-", dir=args.buffer_dir)) if buffer == "disk" else None
    mport = free_port()
    proc, port = start_proxy(tmp, "passthrough", backend, buffer_dir=bdir, extra_sink=FAST_RETRY, mport=mport)
    time.sleep(0.2)
    if load == "open":
        shape, secs = ["--batches-per-sec", str(args.api_rate)], args.open_secs
    else:
        shape, secs = ["--concurrency", str(args.saturation_concurrency)], args.closed_secs
    m0, cpu0, t0 = scrape(mport), cpu_seconds(proc.pid), time.time()
    out = loadgen(tmp, port, args, shape, first_seq, secs, mix)
    at_end = backend.stats()
    m1, t1 = scrape(mport), time.time()
    delivered = wait_delivered(backend, out["events_ok"], timeout=90)
    # CPU until the batches taken are delivered: taking and delivering.
    cpu1 = cpu_seconds(proc.pid)
    rss = peak_rss_mib(proc.pid)
    stop_proxy(proc)
    if bdir:
        shutil.rmtree(bdir, ignore_errors=True)
    gb = out["bytes_ok"] / 1e9
    syncs = m1["count"] - m0["count"]
    return {
        "buffer": buffer, "mix": mix, "load": load,
        "events_per_sec": out["events_per_sec"], "mb_per_sec": out["mb_per_sec"],
        # What reached the backend while the load ran (the disk buffer takes
        # more than the sink delivers when the sink is the slower).
        "delivered_mb_per_sec": at_end["bytes"] / 1e6 / out["elapsed_secs"],
        "cpu_s_per_gb": (cpu1 - cpu0) / gb if gb else None,
        "p50_ms": out["latency_ms"]["p50"], "p99_ms": out["latency_ms"]["p99"], "max_ms": out["latency_ms"]["max"],
        "fsyncs_per_sec": syncs / (t1 - t0) if bdir else None,
        "fsync_mean_ms": 1000 * (m1["sum"] - m0["sum"]) / syncs if syncs else None,
        "fsync_p99_ms_at_most": fsync_quantile_ms(m0, m1, 0.99),
        "mb_per_fsync": out["bytes_ok"] / 1e6 / syncs if syncs else None,
        "peak_rss_mib": rss, "events_ok": out["events_ok"],
        "body_bytes": out["bytes_ok"] / out["batches_ok"] if out["batches_ok"] else 0,
        "lost": out["events_ok"] - delivered["unique"], "duplicates": delivered["duplicates"],
        "statuses": out["statuses"],
    }


def drop_cached(directory):
    """Lets the kernel forget the cached pages of the log's files (they are
    synced, so clean), so that the catch-up reads them from the disk."""
    for f in directory.glob("*.wal"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def catch_up(tmp, mix, args, first_seq):
    """Disk buffer, sink down: `--outage-secs` of the API server's rate are
    accepted, then the backend is started and the backlog drains."""
    bdir = pathlib.Path(tempfile.mkdtemp(prefix="buffer-", dir=args.buffer_dir))
    addr = f"127.0.0.1:{free_port()}"
    down = types.SimpleNamespace(http=addr, tcp="127.0.0.1:9")
    mport = free_port()
    proc, port = start_proxy(tmp, "passthrough", down, buffer_dir=bdir, extra_sink=FAST_RETRY, mport=mport)
    time.sleep(0.2)
    out = loadgen(tmp, port, args, ["--batches-per-sec", str(args.api_rate)], first_seq, args.outage_secs, mix)
    on_disk = sum(f.stat().st_size for f in bdir.glob("*.wal"))
    # The sink's queue was filled from the log while the backend was down:
    # those events drain from memory, the rest is read back from the log.
    queued = scrape(mport)["queue_events"]
    if not args.warm_cache:
        drop_cached(bdir)
    expected = out["events_ok"]
    cpu0, t0 = cpu_seconds(proc.pid), time.time()
    backend = Backend(addr)
    first, done, s = None, None, {"unique": 0, "duplicates": 0}
    while time.time() < t0 + args.drain_timeout:
        s = backend.stats()
        now = time.time()
        if first is None and s["unique"] > 0:
            first = now
        if s["unique"] >= expected:
            done = now
            break
        time.sleep(0.05)
    cpu1 = cpu_seconds(proc.pid)
    stop_proxy(proc)
    backend.stop()
    shutil.rmtree(bdir, ignore_errors=True)
    drain = (done - first) if (done and first) else None
    return {
        "mix": mix, "outage_secs": args.outage_secs, "ingest_events_per_sec": out["events_per_sec"],
        "ingest_p99_ms": out["latency_ms"]["p99"], "ingest_statuses": out["statuses"],
        "backlog_events": expected, "backlog_bytes_on_disk": on_disk, "cold_cache": not args.warm_cache,
        "queued_events_at_start": queued, "read_from_log_events": expected - queued,
        "first_delivery_secs": (first - t0) if first else None,
        "drain_secs": drain, "total_secs": (done - t0) if done else None,
        "drain_events_per_sec": expected / drain if drain else None,
        "drain_mb_per_sec": on_disk / 1e6 / drain if drain else None,
        "drain_x_ingest": expected / drain / out["events_per_sec"] if drain else None,
        "drain_cpu_s": cpu1 - cpu0,
        "lost": expected - s["unique"], "duplicates": s["duplicates"],
    }


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def buffer_scenario(args, out):
    bench_dir = pathlib.Path(args.buffer_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    fs = filesystem(bench_dir)
    backend = Backend()
    rows, caught = [], []
    dd = [dd_mb_per_sec(bench_dir)]
    print(f"  dd oflag=dsync: {dd[0]:.0f} MB/s", file=sys.stderr)
    seq = 0
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        for i, mix in enumerate(args.buffer_mixes.split(",")):
            for load in ["open", "closed"]:
                # Alternate which buffer goes first, against drift.
                order = ["memory", "disk"] if i % 2 == 0 else ["disk", "memory"]
                for buffer in order:
                    r = buffer_run(tmp, backend, buffer, mix, load, args, seq)
                    seq += 10_000_000
                    print(f"  {buffer} {mix} {load}: {r['mb_per_sec']:.0f} MB/s, p99 {r['p99_ms']:.2f} ms, "
                          f"{fmt(r['fsyncs_per_sec'], '.0f')} fsyncs/s", file=sys.stderr)
                    rows.append(r)
        backend.stop()
        floors = {}
        for r in rows:
            if r["buffer"] == "memory" and r["load"] == "open":
                size = round(r["body_bytes"])
                floors[r["mix"]] = sync_floor(bench_dir, size, args.api_rate, args.floor_writes)
                print(f"  write+fdatasync of {size} bytes at {args.api_rate:g}/s: p50 {floors[r['mix']]['p50_ms']:.2f} ms, "
                      f"p99 {floors[r['mix']]['p99_ms']:.2f} ms", file=sys.stderr)
        for mix in [m for m in args.catchup_mixes.split(",") if m]:
            c = catch_up(tmp, mix, args, 0)
            print(f"  catch-up {mix}: {fmt(c['drain_events_per_sec'], ',.0f')} events/s", file=sys.stderr)
            caught.append(c)
    dd.append(dd_mb_per_sec(bench_dir))
    dd_ref = sum(dd) / len(dd)
    machine = {"cpus": os.cpu_count(), "filesystem": fs,
               "model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")}
    print(f"\n{machine['model']}, {machine['cpus']} cores; buffer and dd on {fs}; "
          f"dd bs=1M count=256 oflag=dsync: {dd[0]:.0f} MB/s before, {dd[1]:.0f} MB/s after\n")
    print("| mix | load | buffer | events/s | MB/s | delivered MB/s | CPU-s/GB | p50 ms | p99 ms | fsyncs/s | fsync ms mean / p99 ≤ | MB/fsync "
          "| MB/s × memory | CPU/GB × memory | MB/s ÷ dd | peak RSS MiB | lost | dups | statuses |")
    print("| --- | --- | --- " + "| ---: " * 15 + "| --- |")
    for r in rows:
        mem = next(m for m in rows if m["buffer"] == "memory" and m["mix"] == r["mix"] and m["load"] == r["load"])
        x_mb = r["mb_per_sec"] / mem["mb_per_sec"] if mem["mb_per_sec"] else None
        x_cpu = r["cpu_s_per_gb"] / mem["cpu_s_per_gb"] if (r["cpu_s_per_gb"] and mem["cpu_s_per_gb"]) else None
        load = f"open {args.api_rate:g}/s" if r["load"] == "open" else f"closed c={args.saturation_concurrency}"
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items()))
        print(f"| {r['mix']} | {load} | {r['buffer']} | {r['events_per_sec']:,.0f} | {r['mb_per_sec']:.1f} "
              f"| {r['delivered_mb_per_sec']:.1f} | {fmt(r['cpu_s_per_gb'], '.2f')} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
              f"| {fmt(r['fsyncs_per_sec'], '.0f')} | {fmt(r['fsync_mean_ms'], '.2f')} / {fmt(r['fsync_p99_ms_at_most'], 'g')} | {fmt(r['mb_per_fsync'], '.2f')} | {fmt(x_mb, '.2f')} "
              f"| {fmt(x_cpu, '.2f')} | {r['mb_per_sec'] / dd_ref:.2f} | {r['peak_rss_mib']:.0f} | {r['lost']} | {r['duplicates']} | {statuses} |")
    if floors:
        print("\n| mix | body bytes | write+fdatasync p50 ms | p99 ms | max ms |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for mix, f in floors.items():
            print(f"| {mix} | {f['bytes']:,} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {f['max_ms']:.2f} |")
    if caught:
        print("\n| mix | outage | backlog events | of which read back from the log | on disk MB | ingest p99 ms "
              "| first delivery s | drain s | drained events/s | MB/s | × ingest | lost | dups |")
        print("| --- " + "| ---: " * 12 + "|")
        for c in caught:
            print(f"| {c['mix']} | {c['outage_secs']:g} s | {c['backlog_events']:,} | {c['read_from_log_events']:,.0f} "
                  f"| {c['backlog_bytes_on_disk'] / 1e6:.0f} "
                  f"| {c['ingest_p99_ms']:.2f} | {fmt(c['first_delivery_secs'], '.2f')} | {fmt(c['drain_secs'], '.2f')} "
                  f"| {fmt(c['drain_events_per_sec'], ',.0f')} | {fmt(c['drain_mb_per_sec'], '.0f')} "
                  f"| {fmt(c['drain_x_ingest'], '.1f')} | {c['lost']} | {c['duplicates']} |")
    (out / "buffer.json").write_text(json.dumps({"machine": machine, "args": vars(args), "dd_mb_per_sec": dd,
                                                 "runs": rows, "sync_floor": floors, "catch_up": caught}, indent=2))


def table(rows):
    """The medians, with CPU per GB and latency as ratios against HAProxy's
    at the same concurrency (HAProxy over TLS for the -tls modes), and the
    share of requests not answered 200."""
    def base(r):
        name = "haproxy-tls" if r["mode"].endswith("-tls") else "haproxy"
        return next((b for b in rows if b["mode"] == name and b["concurrency"] == r["concurrency"]), None)

    def ratio(a, b):
        return f"{a / b:.2f}" if (a and b) else "-"
    print(f"{'mode':24} {'conc':>4} {'MB/s':>8} {'events/s':>10} {'refused':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'CPU-s/GB':>9} {'CPU x HA':>9} {'p50 x HA':>9} {'p99 x HA':>9} {'RSS MiB':>8} {'lost':>5} {'dups':>5}")
    for r in rows:
        b = base(r) or {}
        cpu = f"{r['cpu_s_per_gb']:.3f}" if r["cpu_s_per_gb"] else "-"
        total = sum(r["statuses"].values())
        refused = 1 - r["statuses"].get("200", 0) / total if total else 0
        print(f"{r['mode']:24} {r['concurrency']:>4} {r['mb_per_sec']:>8.1f} {r['events_per_sec']:>10.0f} {refused:>8.2%} "
              f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} {cpu:>9} "
              f"{ratio(r['cpu_s_per_gb'], b.get('cpu_s_per_gb')):>9} {ratio(r['p50_ms'], b.get('p50_ms')):>9} "
              f"{ratio(r['p99_ms'], b.get('p99_ms')):>9} {r['peak_rss_mib']:>8.1f} {r['lost']:>5} {r['duplicates']:>5}")


PLOT_MODES = ["direct", "haproxy", "passthrough", "ndjson", "haproxy-tls", "passthrough-tls"]
FORWARDER_MODES = ["passthrough", "ndjson", "passthrough-tls"]


def plot(rows, out):
    if not shutil.which("gnuplot"):
        print("gnuplot not installed: no plot (apt-get install gnuplot-nox)")
        return
    data = out.parent / "plot.dat"
    # Only the modes that ran; "direct" has no proxy CPU to draw.
    modes = [m for m in PLOT_MODES if any(r["mode"] == m for r in rows)]
    proxies = [i for i, m in enumerate(modes) if m != "direct"]
    if not proxies:
        return
    with open(data, "w") as f:
        for mode in modes:
            f.write(f"# {mode}\n")
            for r in rows:
                if r["mode"] == mode:
                    f.write(f"{r['concurrency']} {r['mb_per_sec']} {r['cpu_s_per_gb'] or 0}\n")
            f.write("\n\n")
    words = " ".join(modes)
    script = f"""set terminal pngcairo size 1100,450
set output '{out}'
set multiplot layout 1,2
set logscale x 2
set xlabel 'concurrency'
set ylabel 'MB/s'
set title 'Throughput'
plot for [i=0:{len(modes) - 1}] '{data}' index i using 1:2 with linespoints title word('{words}', i+1)
set ylabel 'CPU-s per GB'
set title 'Proxy CPU per GB relayed'
plot for [i={proxies[0]}:{len(modes) - 1}] '{data}' index i using 1:3 with linespoints title word('{words}', i+1)
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--mix", default="metadata")
    p.add_argument("--modes", default="direct,haproxy,passthrough,ndjson,haproxy-tls,passthrough-tls",
                   help="which modes to run, of direct, haproxy, passthrough, ndjson, haproxy-tls, passthrough-tls")
    p.add_argument("--haproxy-tune", action="append", default=[],
                   help="a line added to HAProxy's global section, e.g. 'tune.h2.initial-window-size 1048576' (repeatable)")
    p.add_argument("--baseline-forwarder", metavar="BINARY",
                   help="another build of kube-audit-forwarder: each forwarder mode is also run with it, "
                        "as baseline-<mode>, right after this build's")
    p.add_argument("--no-scenarios", action="store_true", help="skip the steady and overload memory scenarios")
    p.add_argument("--steady-secs", type=float, default=20)
    p.add_argument("--overload-secs", type=float, default=10)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--scenario", choices=["compare", "buffer"], default="compare",
                   help="compare: against HAProxy (above); buffer: memory against disk buffer")
    b = p.add_argument_group("--scenario buffer")
    b.add_argument("--buffer-dir", default=str(ROOT / "target" / "bench-buffer"),
                   help="where the disk buffer and dd's file go (the file system under test)")
    b.add_argument("--buffer-mixes", default="metadata,mixed")
    b.add_argument("--api-rate", type=float, default=10, help="open loop: batches per second")
    b.add_argument("--open-secs", type=float, default=20)
    b.add_argument("--saturation-concurrency", type=int, default=4)
    b.add_argument("--closed-secs", type=float, default=6)
    b.add_argument("--floor-writes", type=int, default=100,
                   help="writes of one body + fdatasync timed at the API server's rate, per mix")
    b.add_argument("--catchup-mixes", default="metadata,mixed")
    b.add_argument("--outage-secs", type=float, default=60)
    b.add_argument("--drain-timeout", type=float, default=120)
    b.add_argument("--warm-cache", action="store_true", help="catch-up reads the log from the page cache")
    args = p.parse_args()
    HAPROXY_TUNE.extend(args.haproxy_tune)
    if args.scenario == "compare" and not shutil.which("haproxy"):
        sys.exit("haproxy is not installed: apt-get install haproxy")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.scenario == "buffer":
        buffer_scenario(args, out)
        return
    backend = Backend()
    rows = []
    modes = [m for m in args.modes.split(",") if m]
    if args.baseline_forwarder:
        BASELINE_FORWARDER.append(pathlib.Path(args.baseline_forwarder).resolve())
        modes = [x for m in modes for x in ([m, BASELINE_PREFIX + m] if m in FORWARDER_MODES else [m])]
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        if any(m.endswith("-tls") for m in modes):
            make_certs(tmp)
        for conc in [int(c) for c in args.concurrency.split(",")]:
            for rep in range(args.repeats):
                for mode in (modes if rep % 2 == 0 else modes[::-1]):
                    r = one_run(tmp, backend, mode, conc, args, 0)
                    print(f"  {mode} c={conc} run {rep + 1}: {r['mb_per_sec']:.0f} MB/s, "
                          f"{r['cpu_s_per_gb'] or 0:.3f} CPU-s/GB, p99 {r['p99_ms']:.2f} ms", file=sys.stderr)
                    rows.append(r)
        scenarios = [] if args.no_scenarios else [steady_rss(tmp, backend, args), overload(tmp, backend, args)]
    backend.stop()
    # Median of the repeats per mode and concurrency.
    merged = []
    for conc in sorted({r["concurrency"] for r in rows}):
        for mode in modes:
            rs = sorted((r for r in rows if r["mode"] == mode and r["concurrency"] == conc), key=lambda r: r["mb_per_sec"])
            if rs:
                m = dict(rs[len(rs) // 2])
                m["lost"] = sum(r["lost"] for r in rs)
                m["duplicates"] = sum(r["duplicates"] for r in rs)
                merged.append(m)
    machine = {"cpus": os.cpu_count(), "model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
               "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]}
    print(f"\n{machine['model']}, {machine['cpus']} cores; {machine['haproxy']}; mix {args.mix}, "
          f"{args.duration:.0f} s per run, median of {args.repeats}\n")
    table(merged)
    print()
    for s in scenarios:
        print(json.dumps(s))
    (out / "results.json").write_text(json.dumps({"machine": machine, "args": vars(args), "runs": rows, "median": merged,
                                                  "scenarios": scenarios}, indent=2))
    plot(merged, out / "compare.png")


if __name__ == "__main__":
    main()
