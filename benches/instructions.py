#!/usr/bin/env python3
"""User-space instructions per request: cutover, HAProxy and nginx under callgrind.

Wall-clock numbers on a shared machine drift by 10-20 % between runs; instruction
counts barely do (the same binary under the same load repeats within 0.2 %). Each proxy
runs alone under `valgrind --tool=callgrind` in front of the same upstream; after a
warm-up the counters are zeroed, `wrk -t1 -c16` runs for a fixed time, and the counters
are dumped: instructions ÷ requests answered. Two loads: HTTP/1.1 keep-alive
(`wrk -t1 -c16`, all three proxies) and h2c (`h2load -c16 -m32 -t1`, HAProxy and
cutover, as edge.py runs it), so the HTTP/2 gap can be followed without the noise of
wall-clock runs. Kernel time is not counted; see compare.py for that. Run through
compare.sh: `bash benches/compare.sh --instructions`.
"""
import os, re, signal, subprocess, sys, tempfile, time

import compare

SECONDS = int(os.environ.get("INSTR_SECONDS", "6"))
CONNS = 16
PORTS = {"haproxy": 18091, "nginx": 18092, "cutover": 18093}
STREAMS = 32


def callgrind(work, name, args):
    out = os.path.join(work, f"{name}.callgrind")
    return subprocess.Popen(
        ["taskset", "-c", compare.PROXY_CPU, "valgrind", "--tool=callgrind",
         f"--callgrind-out-file={out}"] + args,
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"{name}.log"), "w"),
        start_new_session=True, env=dict(os.environ, CUTOVER_LOG="warn")), out


def wrk(port, seconds):
    out = subprocess.run(["taskset", "-c", compare.LOAD_CPU, "wrk", "-t1", f"-c{CONNS}", f"-d{seconds}s",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return int(m.group(1)) if m else 0, int(errors.group(1)) if errors else 0


def h2load(port, seconds):
    out = subprocess.run(["taskset", "-c", compare.LOAD_CPU, "h2load", f"-c{CONNS}", f"-m{STREAMS}", "-t1",
                          "-D", str(seconds), f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    req = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    ok = re.search(r"status codes: (\d+) 2xx", out)
    answered = int(req.group(1)) if req else 0
    return answered, answered - (int(ok.group(1)) if ok else 0)


def measure(work, name, args, load=wrk, tag=""):
    proc, out = callgrind(work, name + tag, args)
    try:
        compare.wait_port(PORTS[name], timeout=60)
        load(PORTS[name], 2)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True)
        requests, errors = load(PORTS[name], SECONDS)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    name += tag
    dumps = sorted(f for f in os.listdir(work) if f.startswith(f"{name}.callgrind."))
    if not dumps or not requests:
        sys.exit(f"{name}: no dump or no requests (see {work}/{name}.log)")
    if errors:
        # Error answers take a much shorter path: the count would mean nothing.
        sys.exit(f"{name}: {errors} of {requests} answers were not 2xx; is the upstream up?")
    text = open(os.path.join(work, dumps[-1]), errors="replace").read()
    total = int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))
    return total / requests, requests, errors


def main():
    work = tempfile.mkdtemp(prefix="cutover-instr-")
    upstream = compare.start(compare.LOAD_CPU, ["nginx", "-c", compare.upstream_conf(work)])
    try:
        compare.wait_port(compare.PORTS["upstream"])
        hap = compare.haproxy_cfg(work, PORTS["haproxy"], 1000)
        # One process, so callgrind sees the worker itself.
        ngx = compare.nginx_proxy_conf(work, PORTS["nginx"], master=False)
        cfg = compare.cutover_toml(work, "cutover", PORTS["cutover"], metrics=True)
        proxies = [("haproxy", ["haproxy", "-db", "-f", hap]),
                   ("nginx", ["nginx", "-c", ngx]),
                   ("cutover", [compare.CUTOVER, "run", "--config", cfg])]
        rows, h2 = {}, {}
        for name, args in proxies:
            rows[name] = measure(work, name, args)
            print(f"{name:8} {rows[name][0]:>8.0f} instructions/request  "
                  f"({rows[name][1]} requests, {rows[name][2]} errors)", file=sys.stderr)
        # HAProxy takes h2c's preface on the same plain bind; the nginx row has no h2c.
        for name, args in proxies[::2]:
            h2[name] = measure(work, name, args, load=h2load, tag="-h2c")
            print(f"{name:8} {h2[name][0]:>8.0f} instructions/request, h2c  "
                  f"({h2[name][1]} requests, {h2[name][2]} errors)", file=sys.stderr)
        h, h2h = rows["haproxy"][0], h2["haproxy"][0]
        print(f"\nUser-space instructions per request under callgrind ({SECONDS} s after a 2 s warm-up; "
              f"HTTP/1.1: wrk -t1 -c{CONNS}; h2c: h2load -c{CONNS} -m{STREAMS} -t1):\n")
        print("| proxy | HTTP/1.1 instructions/request | ÷ HAProxy | h2c instructions/request | ÷ HAProxy |")
        print("|---|---:|---:|---:|---:|")
        for name, (ir, _, _) in rows.items():
            cells = f"{h2[name][0]:.0f} | {h2[name][0] / h2h:.2f}" if name in h2 else "- | -"
            print(f"| {name} | {ir:.0f} | {ir / h:.2f} | {cells} |")
    finally:
        os.killpg(upstream.pid, signal.SIGTERM)
        upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
