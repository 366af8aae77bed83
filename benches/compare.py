#!/usr/bin/env python3
"""Side-by-side comparison of cutover with HAProxy and nginx (see compare.sh).

Setup (2 cores): the upstream (nginx, one worker, `return 200 "ok"`) and the load
generator share core 1; each proxy gets core 0 alone (HAProxy one thread, nginx one
worker, cutover `runtime.workers = 1`), pinned with taskset. Direct runs put the load
generator on core 0 instead. Every measurement alternates targets A B C D A B C D … so
drift on a shared machine hits all of them alike; medians are reported, with ratios to
HAProxy from this same run. Binds 127.0.0.1 only.

The fixed rate is a quarter of HAProxy's closed-loop maximum. Open loop, every request
is its own wake-up on every process, so each costs about twice what it does in wrk's
batches: at half of HAProxy's maximum, the core shared by the generator and the
upstream was 95% busy, queues formed there, and the p99 measured that core, not the
proxy. The busy share of that core during the fixed-rate runs is printed with the
table, so a run can be checked for it.

The closed loop runs twice. With a whole core each, a proxy faster than the load side
is capped by it: the generator and the upstream share the other core, and with cutover
that core was 99% busy while cutover's was 83-85%, so that req/s ratio measures the
load core as much as the proxy. The second closed loop gives each proxy the same CPU
budget of half a core (a cgroup CPU quota, 5 ms of every 10 ms), so the proxy is what
runs out first; it is skipped where no cgroup CPU controller can be written.

Proxy CPU per request (user + system time from /proc/PID/stat over the requests wrk or
the generator completed) is taken in all three: a whole core, the half-core budget, and
the fixed rate. They differ a lot: a process that waits for work pays a wake-up for a
handful of requests, so the same proxy costs more per request the less busy it is.
"""
import os, re, signal, socket, statistics, subprocess, sys, tempfile, time

DURATION = int(os.environ.get("DURATION", "6"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
FIXED_DURATION = int(os.environ.get("FIXED_DURATION", "2"))
FIXED_ROUNDS = int(os.environ.get("FIXED_ROUNDS", "10"))
FIXED_SHARE = float(os.environ.get("FIXED_SHARE", "0.25"))  # of HAProxy's closed-loop req/s
BUDGET = float(os.environ.get("BUDGET", "0.5"))  # share of a core for the budgeted closed loop
BUDGET_DURATION = int(os.environ.get("BUDGET_DURATION", "4"))
BUDGET_ROUNDS = int(os.environ.get("BUDGET_ROUNDS", "3"))
CONNS = 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUTOVER = os.path.join(ROOT, "target/release/cutover")
LOADGEN = os.path.join(ROOT, "target/release/examples/loadgen")
PORTS = {"upstream": 18080, "haproxy": 18081, "nginx": 18082, "cutover": 18083, "cutover-nometrics": 18084}
EXTRA = os.environ.get("CUTOVER_BENCH_EXTRA", "")  # extra TOML for cutover's config
CANARY = float(os.environ.get("CANARY", "0"))  # percent of cutover's traffic split to green
PROXY_CPU, LOAD_CPU = "0", ("1" if os.cpu_count() and os.cpu_count() > 1 else "0")
CLK = os.sysconf("SC_CLK_TCK")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def nginx_conf(work, name, body, master=True):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    return write(os.path.join(d, "nginx.conf"), f"""
{"" if master else "master_process off;"}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 10000000;
  {body}
}}
""")


def upstream_conf(work):
    """The upstream every target sits in front of: nginx answering `200 ok`."""
    return nginx_conf(work, "upstream", f"""server {{ listen 127.0.0.1:{PORTS['upstream']} backlog=4096;
        location / {{ return 200 "ok"; }} }}""")


def nginx_proxy_conf(work, port, master=True):
    """nginx as the proxy: one worker, upstream keepalive."""
    return nginx_conf(work, "nginx", f"""upstream up {{ server 127.0.0.1:{PORTS['upstream']}; keepalive 128; }}
        server {{ listen 127.0.0.1:{port} backlog=4096;
          location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""",
                      master)


def haproxy_cfg(work, port, maxconn):
    """HAProxy as the proxy: one thread, `http-reuse always`."""
    return write(os.path.join(work, "haproxy.cfg"), f"""
global
  nbthread 1
  maxconn {maxconn}
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server s1 127.0.0.1:{PORTS['upstream']}
""")


def cutover_toml(work, name, port, metrics):
    """cutover as the proxy: one current-thread runtime, both pools on the upstream."""
    return write(os.path.join(work, f"{name}.toml"), f"""
[listen]
address = "127.0.0.1:{port}"
[admin]
socket = "{work}/{name}.sock"
[pools.blue]
backends = ["127.0.0.1:{PORTS['upstream']}"]
[pools.green]
backends = ["localhost:{PORTS['upstream']}"]
[routing]
live = "blue"
[runtime]
workers = 1
[metrics]
enabled = {"true" if metrics else "false"}
{EXTRA}
""")


def admin_post(sock_path, path, body, timeout=10):
    """POST `body` to cutover's admin socket until it answers 200 (green's first health
    check may still be on its way); returns the answer's first line."""
    deadline, line = time.time() + timeout, ""
    while time.time() < deadline:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sock_path)
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
            if " 200 " in line:
                return line
        except OSError as e:
            line = str(e)
        finally:
            s.close()
        time.sleep(0.2)
    raise SystemExit(f"POST {path} on {sock_path}: {line}")


def start(cpu, args, **kw):
    return subprocess.Popen(["taskset", "-c", cpu] + args, stdout=subprocess.DEVNULL,
                            stderr=open(os.devnull, "w") if not kw.get("log") else kw["log"],
                            start_new_session=True)


class CpuQuota:
    """A cgroup (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`) holding one target's processes,
    whose CPU quota can be set and lifted. `ok` is False where none can be made."""

    PERIOD_US = 10_000

    def __init__(self, name):
        self.path, self.v2, self.ok = None, False, False
        v2root, v1root = "/sys/fs/cgroup", "/sys/fs/cgroup/cpu"
        controllers = os.path.join(v2root, "cgroup.controllers")
        try:
            if os.path.exists(controllers) and "cpu" in open(controllers).read().split():
                write(os.path.join(v2root, "cgroup.subtree_control"), "+cpu")
                self.path, self.v2 = os.path.join(v2root, f"cutover-bench-{name}"), True
            elif os.path.exists(os.path.join(v1root, "cpu.cfs_quota_us")):
                self.path = os.path.join(v1root, f"cutover-bench-{name}")
            if self.path:
                os.makedirs(self.path, exist_ok=True)
                self.set(None)
                self.ok = True
        except OSError as e:
            print(f"no CPU quota for {name}: {e}", file=sys.stderr)

    def add(self, pid_list):
        for pid in pid_list:
            write(os.path.join(self.path, "cgroup.procs"), str(pid))

    def set(self, share):
        quota = int(share * self.PERIOD_US) if share else None
        if self.v2:
            write(os.path.join(self.path, "cpu.max"), f"{quota or 'max'} {self.PERIOD_US}")
        else:
            write(os.path.join(self.path, "cpu.cfs_period_us"), str(self.PERIOD_US))
            write(os.path.join(self.path, "cpu.cfs_quota_us"), str(quota or -1))

    def remove(self):
        try:
            os.rmdir(self.path)
        except (OSError, TypeError):
            pass


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def pids(proc):
    """The process and its children (nginx master + worker)."""
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
    return [proc.pid] + [int(p) for p in out.split()]


def cpu_seconds(proc):
    total = 0
    for pid in pids(proc):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK


def mem_kb(proc, key):
    total = 0
    for pid in pids(proc):
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def wrk(port, cpu, duration=DURATION):
    out = subprocess.run(["taskset", "-c", cpu, "wrk", "-t1", f"-c{CONNS}", f"-d{duration}s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    return dict(rps=rps, total=total, p50=p50, p99=p99,
                errors=int(errors.group(1)) if errors else 0, sock=sock_err.group(1) if sock_err else "")


def cpu_busy(cpu):
    """(busy, total) jiffies of one core, from /proc/stat."""
    for line in open("/proc/stat"):
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + v[4]  # idle, iowait
            return sum(v) - idle, sum(v)
    return 0, 1


def openloop(port, cpu, rate):
    out = subprocess.run(["taskset", "-c", cpu, LOADGEN, f"http://127.0.0.1:{port}/", str(rate),
                          str(FIXED_DURATION), str(CONNS)], capture_output=True, text=True).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", out)}


def measured(proc, cpu, count, run):
    """`run()`'s result, plus `cpu`: the proxy's CPU µs per request (its `count` key), and
    `busy`: how busy the load core was, in %."""
    c0, b0 = cpu_seconds(proc), cpu_busy(cpu)
    res = run()
    c1, b1 = cpu_seconds(proc), cpu_busy(cpu)
    res["cpu"] = (c1 - c0) * 1e6 / max(res.get(count, 0), 1)
    res["busy"] = 100 * (b1[0] - b0[0]) / max(b1[1] - b0[1], 1)
    return res


def idle_rss(proc, port, n=1000):
    before = mem_kb(proc, "VmRSS")
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    time.sleep(1.5)
    after = mem_kb(proc, "VmRSS")
    for s in socks:
        s.close()
    time.sleep(0.5)
    return before, after


def stop_all(procs):
    """SIGTERM every process group, then SIGKILL what is left after 10 s."""
    for p in procs.values():
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    time.sleep(0.2)


def main():
    work = tempfile.mkdtemp(prefix="cutover-bench-")
    procs, quotas = {}, {}
    try:
        procs["upstream"] = start(LOAD_CPU, ["nginx", "-c", upstream_conf(work)])
        procs["nginx"] = start(PROXY_CPU, ["nginx", "-c", nginx_proxy_conf(work, PORTS["nginx"])])
        procs["haproxy"] = start(PROXY_CPU, ["haproxy", "-db", "-f", haproxy_cfg(work, PORTS["haproxy"], 8000)])
        def cutover(name, metrics):
            cfg = cutover_toml(work, name, PORTS[name], metrics)
            log = open(os.path.join(work, f"{name}.log"), "w")
            return subprocess.Popen(["taskset", "-c", PROXY_CPU, CUTOVER, "run", "--config", cfg],
                                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                                    env=dict(os.environ, CUTOVER_LOG="warn"))
        procs["cutover"] = cutover("cutover", True)
        procs["cutover-nometrics"] = cutover("cutover-nometrics", False)
        for name, port in PORTS.items():
            wait_port(port)
        if CANARY > 0:  # wrk sends no cookie: every request draws a bucket and gets one set
            for name in ("cutover", "cutover-nometrics"):
                admin_post(f"{work}/{name}.sock", "/canary", f'{{"color":"green","percent":{CANARY}}}')
            print(f"cutover runs a {CANARY:g} % canary to green (its own backend name for the same upstream)",
                  file=sys.stderr)

        targets = ["direct", "haproxy", "nginx", "cutover", "cutover-nometrics"]
        port_of = {"direct": PORTS["upstream"], **{t: PORTS[t] for t in targets[1:]}}
        proc_of = {"direct": procs["upstream"], **{t: procs[t] for t in targets[1:]}}
        cpu_of = {t: (PROXY_CPU if t == "direct" else LOAD_CPU) for t in targets}

        for t in targets:  # warm-up: connections, pools, page cache
            subprocess.run(["wrk", "-t1", "-c64", "-d1s", f"http://127.0.0.1:{port_of[t]}/"], capture_output=True)

        closed = {t: [] for t in targets}
        for r in range(ROUNDS):
            for t in targets:
                res = measured(proc_of[t], cpu_of[t], "total", lambda: wrk(port_of[t], cpu_of[t]))
                closed[t].append(res)
                print(f"round {r+1} closed {t:17} {res['rps']:>9.0f} req/s  p50 {res['p50']:.3f} ms  "
                      f"p99 {res['p99']:.3f} ms  cpu {res['cpu']:.1f} us/req  load core busy {res['busy']:.0f}%  "
                      f"errors {res['errors']} {res['sock']}", file=sys.stderr)

        proxies = targets[1:]
        budgeted = {t: [] for t in proxies}
        for t in proxies:
            q = CpuQuota(t)
            if not q.ok:
                break
            quotas[t] = q
            q.add(pids(proc_of[t]))
        if len(quotas) == len(proxies):
            for q in quotas.values():
                q.set(BUDGET)
            for r in range(BUDGET_ROUNDS):
                for t in proxies:
                    res = measured(proc_of[t], cpu_of[t], "total",
                                   lambda: wrk(port_of[t], cpu_of[t], BUDGET_DURATION))
                    budgeted[t].append(res)
                    print(f"round {r+1} {BUDGET:g} core {t:17} {res['rps']:>9.0f} req/s  p99 {res['p99']:.3f} ms  "
                          f"cpu {res['cpu']:.1f} us/req  load core busy {res['busy']:.0f}%  "
                          f"errors {res['errors']} {res['sock']}", file=sys.stderr)
            for q in quotas.values():
                q.set(None)

        med = lambda xs: statistics.median(xs)
        hap_rps = med([x["rps"] for x in closed["haproxy"]])
        rate = int(hap_rps * FIXED_SHARE)
        fixed = {t: [] for t in targets}
        for r in range(FIXED_ROUNDS):
            for t in targets:
                res = measured(proc_of[t], cpu_of[t], "sent", lambda: openloop(port_of[t], cpu_of[t], rate))
                fixed[t].append(res)
                print(f"round {r+1} fixed  {t:17} {res.get('rate', 0):>9.0f} req/s  p99 {res.get('p99_us', 0)/1000:.3f} ms  "
                      f"p99.9 {res.get('p999_us', 0)/1000:.3f} ms  cpu {res['cpu']:.1f} us/req  load core busy {res['busy']:.0f}%  "
                      f"errors {res.get('errors', 0):.0f}", file=sys.stderr)

        idle = {t: idle_rss(proc_of[t], port_of[t]) for t in targets[1:]}
        peak = {t: mem_kb(proc_of[t], "VmHWM") for t in targets}

        budget_on = bool(budgeted.get("haproxy"))
        rows = []
        for t in targets:
            b = budgeted.get(t) or []
            rows.append(dict(
                t=t, rps=med([x["rps"] for x in closed[t]]), p50=med([x["p50"] for x in closed[t]]),
                p99=med([x["p99"] for x in closed[t]]), fp99=med([x.get("p99_us", 0) for x in fixed[t]]) / 1000,
                fp999=med([x.get("p999_us", 0) for x in fixed[t]]) / 1000, fcpu=med([x["cpu"] for x in fixed[t]]),
                errs=sum(x["errors"] for x in closed[t] + b) + sum(x.get("errors", 0) for x in fixed[t]),
                cpu=med([x["cpu"] for x in closed[t]]), peak=peak[t] / 1024, idle=(idle[t][1] / 1024 if t in idle else None),
                load=med([x["busy"] for x in closed[t]]), brps=med([x["rps"] for x in b]) if b else None,
                bp99=med([x["p99"] for x in b]) if b else None, bcpu=med([x["cpu"] for x in b]) if b else None))
        h = next(r for r in rows if r["t"] == "haproxy")
        busy = med([x["busy"] for t in proxies for x in fixed[t]])
        bbusy = med([x["busy"] for t in proxies for x in budgeted[t]]) if budget_on else 0
        num = lambda v, fmt: format(v, fmt) if v is not None else "-"
        ratio = lambda k, r: f"{r[k] / h[k]:.2f}" if r.get(k) and h.get(k) else "-"
        b = f"{BUDGET:g} core"

        print(f"\nClosed loop: wrk -t1 -c{CONNS}, {DURATION}s x {ROUNDS} rounds with a whole core per proxy; "
              + (f"{BUDGET_DURATION}s x {BUDGET_ROUNDS} rounds with {b} each (cgroup CPU quota), load core "
                 f"{bbusy:.0f}% busy" if budget_on else "no run on a CPU budget (no writable cgroup)")
              + f". Fixed rate: {rate} req/s ({FIXED_SHARE:g} of HAProxy's median), {FIXED_DURATION}s x "
              f"{FIXED_ROUNDS} rounds, {CONNS} connections, load core {busy:.0f}% busy. Medians; proxies on core "
              f"{PROXY_CPU}, upstream and load generator on core {LOAD_CPU}.\n")
        print(f"| target | req/s | p50 ms | p99 ms | CPU us/req | load core busy % | req/s on {b} | p99 ms on {b} | "
              f"CPU us/req on {b} | fixed p99 ms | fixed p99.9 ms | CPU us/req at fixed rate | peak RSS MiB | RSS 1k idle conns MiB | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['t']} | {r['rps']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['cpu']:.1f} | {r['load']:.0f} | "
                  f"{num(r['brps'], '.0f')} | {num(r['bp99'], '.3f')} | {num(r['bcpu'], '.1f')} | {r['fp99']:.3f} | "
                  f"{r['fp999']:.3f} | {r['fcpu']:.1f} | {r['peak']:.1f} | {num(r['idle'], '.1f')} | {r['errs']:.0f} |")
        print(f"\nRatios to HAProxy (goal: req/s ≥ 1.15, fixed p99 ≤ 1.00, CPU/req ≤ 0.80):\n")
        print(f"| target | req/s | req/s on {b} | fixed p99 | fixed p99.9 | CPU/req | CPU/req on {b} | "
              f"CPU/req at fixed rate | RSS 1k idle conns |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['t']} | {ratio('rps', r)} | {ratio('brps', r)} | {ratio('fp99', r)} | {ratio('fp999', r)} | "
                  f"{ratio('cpu', r)} | {ratio('bcpu', r)} | {ratio('fcpu', r)} | {ratio('idle', r)} |")
    finally:
        stop_all(procs)
        for q in quotas.values():
            q.remove()


if __name__ == "__main__":
    main()
