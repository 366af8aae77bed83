#!/usr/bin/env python3
"""Edge loads side by side: cutover against HAProxy (see compare.sh --edge).

The same setup as compare.py: the upstream (nginx, one worker) and the load tool share
core 1, each proxy has core 0 alone (HAProxy one thread, cutover `runtime.workers = 1`),
targets alternate H C H C … and medians are reported with ratios to HAProxy from this
run. Binds 127.0.0.1 only. Loads:

- `keep-alive`: HTTP/1.1 keep-alive, `wrk -t1 -c64`.
- `close`: a new connection per request, `wrk -t1 -c64 -H 'Connection: close'`.
- `h2c`: HTTP/2 with prior knowledge, `h2load -c16 -m32 -t1`.
- `tls-handshake`: a full TLS handshake per request, `wrk -t1 -c64 -H 'Connection:
  close' https://…`. wrk offers its last session on each new connection, so both
  proxies have resumption off (HAProxy `no-tls-tickets` and `tune.ssl.cachesize 0`,
  cutover `resumption = false`): every handshake is a full one.
- `tls-keep-alive`: HTTP/1.1 keep-alive over TLS, `wrk -t1 -c64 https://…`.
- `h2-tls`: HTTP/2 over TLS (ALPN h2), `h2load -c16 -m32 -t1 https://…`.
- `1MiB-down`: 1 MiB responses, `wrk -t1 -c16` (throughput in MiB/s).
- `1MiB-up`: 1 MiB POST bodies, `wrk -t1 -c16` with a Lua body.
- `switching` (cutover only): keep-alive while the admin socket switches blue ↔ green
  ten times a second, as a ratio to a steady keep-alive run just before it; pairs of
  runs (EDGE_SWITCH_PAIRS per round) on the CPU budget, the median of their ratios.

Both proxies serve the same ECDSA P-256 certificate (HAProxy with Debian's OpenSSL,
cutover with rustls). Proxy CPU per request is user + system time from /proc over the
requests the tool completed. Last, RSS with EDGE_IDLE idle keep-alive client
connections (each has had one request answered; half of them TLS).

    EDGE_DURATION=5 EDGE_ROUNDS=3 (default, ~6 min); quick: EDGE_DURATION=2 EDGE_ROUNDS=1
"""
import os, re, ssl, socket, statistics, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as c  # noqa: E402

DURATION = int(os.environ.get("EDGE_DURATION", "5"))
ROUNDS = int(os.environ.get("EDGE_ROUNDS", "3"))
IDLE = int(os.environ.get("EDGE_IDLE", "10000"))
SWITCH_PAIRS = int(os.environ.get("EDGE_SWITCH_PAIRS", "3"))  # per round
BUDGET = float(os.environ.get("BUDGET", "0.5"))  # share of a core for the second pass of every load
MIB = 1 << 20
P = dict(upstream=18080, haproxy=18081, haproxy_tls=18085, cutover=18083, cutover_tls=18086)


def certificate(work):
    """A self-signed ECDSA P-256 certificate: cert, PKCS#8 key, and both in one file."""
    crt, key, both = (os.path.join(work, n) for n in ("edge.crt", "edge.key", "edge.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    c.write(both, open(crt).read() + open(key).read())
    return crt, key, both


def upstream_conf(work):
    """nginx answering `ok` on /, a 1 MiB file on /1m, and reading (and dropping) uploads."""
    c.write(os.path.join(work, "1m"), "x" * MIB)
    return c.nginx_conf(work, "upstream", f"""server {{ listen 127.0.0.1:{P['upstream']} backlog=4096;
        client_max_body_size 2m;
        location = /1m {{ alias {work}/1m; }}
        location / {{ return 200 "ok"; }} }}""")


def haproxy_cfg(work, pem):
    return c.write(os.path.join(work, "haproxy.cfg"), f"""
global
  nbthread 1
  no strict-limits
  maxconn {IDLE + 2000}
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{P['haproxy']}
  bind 127.0.0.1:{P['haproxy_tls']} ssl crt {pem} alpn h2,http/1.1 no-tls-tickets
  default_backend be
backend be
  server s1 127.0.0.1:{P['upstream']}
""")


def cutover_toml(work, crt, key):
    return c.write(os.path.join(work, "cutover.toml"), f"""
[listen]
address = "127.0.0.1:{P['cutover']}"
[[listen.extra]]
address = "127.0.0.1:{P['cutover_tls']}"
[listen.extra.tls]
cert = "{crt}"
key = "{key}"
resumption = false
[admin]
socket = "{work}/cutover.sock"
[pools.blue]
backends = ["127.0.0.1:{P['upstream']}"]
[pools.green]
backends = ["localhost:{P['upstream']}"]
[routing]
live = "blue"
[limits]
max_connections = {IDLE + 2000}
[runtime]
workers = 1
{c.EXTRA}
""")


def wrk(url, conns, *extra):
    out = subprocess.run(["taskset", "-c", c.LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{DURATION}s", *extra, url],
                         capture_output=True, text=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not rps:
        sys.exit(f"wrk {url}: {out}")
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return dict(rps=float(rps.group(1)), total=int(total.group(1)), errors=errors)


def h2load(url):
    out = subprocess.run(["taskset", "-c", c.LOAD_CPU, "h2load", "-c16", "-m32", "-t1", "-D", str(DURATION), url],
                         capture_output=True, text=True).stdout
    rps = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    req = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    if not rps or not req:
        sys.exit(f"h2load {url}: {out}")
    ok = int(status.group(1)) if status else 0
    return dict(rps=float(rps.group(1)), total=ok, errors=int(req.group(2)) + int(req.group(3)) + int(req.group(1)) - ok)


def switcher(sock, stop, count):
    """Switches cutover blue ↔ green every 100 ms until `stop` is set."""
    colours = ["green", "blue"]
    while not stop.wait(0.1):
        c.admin_post(sock, "/switch", f'{{"to":"{colours[count[0] % 2]}","force":true}}')
        count[0] += 1


def loads(work, upload_lua):
    h, ht, cu, ct = (f"127.0.0.1:{P[k]}" for k in ("haproxy", "haproxy_tls", "cutover", "cutover_tls"))
    close = ("-H", "Connection: close")
    up = ("-s", upload_lua)
    return [
        ("keep-alive", lambda a: wrk(f"http://{a[0]}/", 64)),
        ("close", lambda a: wrk(f"http://{a[0]}/", 64, *close)),
        ("h2c", lambda a: h2load(f"http://{a[0]}/")),
        ("tls-handshake", lambda a: wrk(f"https://{a[1]}/", 64, *close)),
        ("tls-keep-alive", lambda a: wrk(f"https://{a[1]}/", 64)),
        ("h2-tls", lambda a: h2load(f"https://{a[1]}/")),
        ("1MiB-down", lambda a: wrk(f"http://{a[0]}/1m", 16)),
        ("1MiB-up", lambda a: wrk(f"http://{a[0]}/up", 16, *up)),
    ], {"haproxy": (h, ht), "cutover": (cu, ct)}


def idle_rss(proc, port, tls_port, n):
    """RSS with `n` idle keep-alive connections, every other one TLS, each having had
    one request answered."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    before, conns = c.mem_kb(proc, "VmRSS"), []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", tls_port if i % 2 else port))
            if i % 2:
                s = ctx.wrap_socket(s, server_hostname="localhost")
            s.sendall(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n")
            got = b""
            while not got.endswith(b"ok"):
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError(f"connection {i} closed before its answer")
                got += chunk
            conns.append(s)
        time.sleep(2)
        return before, c.mem_kb(proc, "VmRSS")
    finally:
        for s in conns:
            s.close()
        time.sleep(0.5)


def main():
    work = tempfile.mkdtemp(prefix="cutover-edge-")
    os.chmod(work, 0o755)  # nginx's workers (user nobody) read /1m from here
    os.sched_setaffinity(0, {int(c.LOAD_CPU)})  # this script's clients and switcher stay off the proxy core
    crt, key, pem = certificate(work)
    lua = c.write(os.path.join(work, "up.lua"), f'wrk.method = "POST"\nwrk.body = string.rep("u", {MIB})\n'
                  'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    procs, quotas = {}, {}
    try:
        procs["upstream"] = c.start(c.LOAD_CPU, ["nginx", "-c", upstream_conf(work)])
        procs["haproxy"] = c.start(c.PROXY_CPU, ["haproxy", "-db", "-f", haproxy_cfg(work, pem)])
        log = open(os.path.join(work, "cutover.log"), "w")
        procs["cutover"] = subprocess.Popen(
            ["taskset", "-c", c.PROXY_CPU, c.CUTOVER, "run", "--config", cutover_toml(work, crt, key)],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, env=dict(os.environ, CUTOVER_LOG="warn"))
        for port in P.values():
            c.wait_port(port)
        table, addr = loads(work, lua)
        targets = ["haproxy", "cutover"]
        for t in targets:  # warm-up: connections, pools, page cache
            subprocess.run(["wrk", "-t1", "-c16", "-d1s", f"http://{addr[t][0]}/"], capture_output=True)
        idle = {}
        for t in targets:  # before the loads, so no allocator keeps what a 1 MiB body left
            idle[t] = idle_rss(procs[t], P[t], P[f"{t}_tls"], IDLE)
            print(f"idle {t}: RSS {idle[t][0] / 1024:.1f} → {idle[t][1] / 1024:.1f} MiB with {IDLE} connections",
                  file=sys.stderr)
        for t in targets:
            q = c.CpuQuota(f"edge-{t}")
            if q.ok:
                quotas[t] = q
                q.add(c.pids(procs[t]))
        budgets = [None] + ([BUDGET] if len(quotas) == len(targets) else [])
        res = {(name, t, b): [] for name, _ in table for t in targets for b in budgets}
        steady, switching, switches = [], [], [0]
        sock = f"{work}/cutover.sock"
        for r in range(ROUNDS):
            for name, run in table:
                for b in budgets:
                    for t in targets:
                        for q in quotas.values():
                            q.set(b)
                        m = c.measured(procs[t], c.LOAD_CPU, "total", lambda: run(addr[t]))
                        res[(name, t, b)].append(m)
                        print(f"round {r+1} {name:15} {t:8} {f'{b:g} core' if b else 'a core':8} {m['rps']:>9.0f} "
                              f"req/s  cpu {m['cpu']:6.1f} us/req  load core {m['busy']:3.0f}%  errors {m['errors']}",
                              file=sys.stderr)
            # Switching: steady and switching runs in pairs, on the CPU budget when there is
            # one (so the proxy, not the load core, is what runs out), ratio per pair.
            for q in quotas.values():
                q.set(budgets[-1])
            for i in range(SWITCH_PAIRS):
                pair = {}
                # Alternate which runs first, so a drift within the pair cancels out.
                for phase in ("steady", "switching") if i % 2 == 0 else ("switching", "steady"):
                    stop, th = threading.Event(), None
                    if phase == "switching":
                        th = threading.Thread(target=switcher, args=(sock, stop, switches))
                        th.start()
                    m = c.measured(procs["cutover"], c.LOAD_CPU, "total",
                                   lambda: wrk(f"http://{addr['cutover'][0]}/", 64))
                    if th:
                        stop.set()
                        th.join()
                    pair[phase] = m
                    print(f"round {r+1} {phase:15} cutover  {m['rps']:>9.0f} req/s  cpu {m['cpu']:6.1f} us/req  "
                          f"errors {m['errors']}", file=sys.stderr)
                steady.append(pair["steady"])
                switching.append(dict(pair["switching"], ratio=pair["switching"]["rps"] / pair["steady"]["rps"]))
            for q in quotas.values():
                q.set(None)

        med = statistics.median
        print(f"\nEdge loads: {DURATION}s x {ROUNDS} rounds, alternating; proxies on core {c.PROXY_CPU} (a whole "
              f"core, then {BUDGET:g} of it by cgroup quota), upstream and load tool on core {c.LOAD_CPU}. Medians; "
              "req/s (1 MiB loads: req/s = MiB/s); CPU us/req with a whole core.\n")
        bcol = f"{BUDGET:g} core" if len(budgets) > 1 else "no budget"
        print(f"| load | HAProxy req/s | cutover req/s | ratio | HAProxy on {bcol} | cutover on {bcol} | ratio | "
              "HAProxy CPU us/req | cutover CPU us/req | CPU ratio | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, _ in table:
            cell = lambda t, b, k: med([x[k] for x in res[(name, t, b)]]) if (name, t, b) in res else None
            hr, cr, hc, cc = cell("haproxy", None, "rps"), cell("cutover", None, "rps"), \
                cell("haproxy", None, "cpu"), cell("cutover", None, "cpu")
            hb, cb = cell("haproxy", budgets[-1], "rps"), cell("cutover", budgets[-1], "rps")
            errs = sum(x["errors"] for k, v in res.items() if k[0] == name for x in v)
            print(f"| {name} | {hr:.0f} | {cr:.0f} | **{cr / hr:.2f}** | {hb:.0f} | {cb:.0f} | **{cb / hb:.2f}** | "
                  f"{hc:.1f} | {cc:.1f} | **{cc / hc:.2f}** | {errs} |")
        sr, wr = med([x["rps"] for x in steady]), med([x["rps"] for x in switching])
        print(f"| switching 10/s (cutover on {bcol}, vs steady; median of {len(switching)} pairs) | - | {wr:.0f} | "
              f"**{med([x['ratio'] for x in switching]):.3f}** | - | {sr:.0f} steady | - | - | "
              f"{med([x['cpu'] for x in switching]):.1f} | - | {sum(x['errors'] for x in switching)} |")
        hi, ci = idle["haproxy"][1] / 1024, idle["cutover"][1] / 1024
        print(f"| RSS MiB, {IDLE} idle conns (half TLS) | {hi:.1f} | {ci:.1f} | **{ci / hi:.2f}** | - | - | - | - | - | "
              "- | - |")
        print(f"\n{switches[0]} switches made during the switching runs.")
    finally:
        c.stop_all(procs)
        for q in quotas.values():
            q.remove()


if __name__ == "__main__":
    main()
