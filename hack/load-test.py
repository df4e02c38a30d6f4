#!/usr/bin/env python3
"""Load driver for hack/load-test.sh (Python standard library only).

Against a running nodewave on loopback it measures, without load and then
under a bounded flood of valid signed webhooks, invalid ones, replays and
slow clients:
  - fetches performed vs webhooks sent (nodewave_git_fetch_total),
  - slow connections cut by the header-read / request timeouts,
  - /metrics latency on the separate metrics listener,
  - commit -> template applied -> rollout Synced (the reconciler's cadence),
  - nodewave's peak RSS (VmHWM) and RSS samples.
Every loop is bounded in count and in time; only 127.0.0.1 is contacted.
"""

import argparse
import collections
import hashlib
import hmac
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--webhook-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("--kubectl", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--daemonset", default="agent")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--max-valid", type=int, default=100000)
    p.add_argument("--max-invalid", type=int, default=5000)
    p.add_argument("--max-replays", type=int, default=5000)
    p.add_argument("--threads", type=int, default=6)
    p.add_argument("--slow-loris", type=int, default=20)
    p.add_argument("--slow-body", type=int, default=10)
    p.add_argument("--header-timeout", type=float, required=True)
    p.add_argument("--request-timeout", type=float, required=True)
    p.add_argument("--coalesce-window", type=float, required=True)
    return p.parse_args()


ARGS = parse_args()
HOST = "127.0.0.1"
DEADLINE = time.monotonic() + ARGS.duration * 4 + 180  # hard stop for everything


def log(msg):
    print(f"[load {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(ARGS.secret.encode(), body, hashlib.sha256).hexdigest()


def push_request(after: str, n: int):
    """A GitHub-style push: distinct body and delivery id per call."""
    body = json.dumps(
        {"ref": "refs/heads/main", "after": after, "load_test_seq": n}
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body),
    }
    return headers, body


class Client:
    """One keep-alive connection; reconnects when the server closed it
    (idle keep-alive connections are closed by the header-read timeout)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def post(self, path, headers, body):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                r = self.conn.getresponse()
                r.read()
                return r.status
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    return None
        return None

    def get(self, path):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            self.conn.request("GET", path)
            r = self.conn.getresponse()
            return r.status, r.read().decode()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = None
            return None, ""


def metrics_text():
    c = http.client.HTTPConnection(HOST, ARGS.metrics_port, timeout=10)
    try:
        c.request("GET", "/metrics")
        return c.getresponse().read().decode()
    finally:
        c.close()


def metric_sum(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if not (head == name or head.startswith(name + "{")):
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def proc_status(field):
    with open(f"/proc/{ARGS.pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    return 0


def git(*args):
    return subprocess.run(
        ["git", "-C", ARGS.repo, *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def ds_annotation(key):
    out = subprocess.run(
        [ARGS.kubectl, "-n", ARGS.namespace, "get", "ds", ARGS.daemonset, "-o",
         "jsonpath={.metadata.annotations.nodewave\\.io/" + key + "}"],
        capture_output=True, text=True, timeout=20,
    )
    return out.stdout.strip()


def commit_and_notify(tag):
    """Commits a new image tag, sends one valid webhook for it, and measures
    the time to the template being applied and to the rollout finishing."""
    path = os.path.join(ARGS.repo, "agent.yaml")
    with open(path) as f:
        text = f.read()
    import re
    text = re.sub(r"image: registry\.example/agent:\S+", f"image: registry.example/agent:{tag}", text)
    with open(path, "w") as f:
        f.write(text)
    git("add", "-A")
    git("-c", "user.name=load", "-c", "user.email=load@nodewave.invalid", "commit", "-qm", f"agent {tag}")
    sha = git("rev-parse", "HEAD")
    headers, body = push_request(sha, -1)
    t0 = time.monotonic()
    status = Client(ARGS.webhook_port).post("/webhook", headers, body)
    applied = synced = None
    while time.monotonic() - t0 < 120 and time.monotonic() < DEADLINE:
        if applied is None and ds_annotation("applied-commit") == sha:
            applied = time.monotonic() - t0
        if applied is not None and ds_annotation("sync-status") == "Synced":
            synced = time.monotonic() - t0
            break
        time.sleep(0.2)
    return {"webhook_status": status, "applied_s": applied, "synced_s": synced}


# --- flood workers -----------------------------------------------------------

stop = threading.Event()
lock = threading.Lock()
counts = {"valid_sent": 0, "valid_202": 0, "invalid_sent": 0, "invalid_401": 0,
          "replay_sent": 0, "replay_200": 0, "errors": 0}
# The most recent valid deliveries (headers, body), what an eavesdropper
# would replay; bounded.
sent_valid = collections.deque(maxlen=500)


def bump(key, n=1):
    with lock:
        counts[key] += n


def valid_worker(wid):
    c = Client(ARGS.webhook_port)
    n = 0
    head = git("rev-parse", "HEAD")
    while not stop.is_set() and time.monotonic() < DEADLINE:
        with lock:
            if counts["valid_sent"] >= ARGS.max_valid:
                return
            counts["valid_sent"] += 1
        headers, body = push_request(head, wid * 1_000_000 + n)
        n += 1
        status = c.post("/webhook", headers, body)
        if status == 202:
            bump("valid_202")
            with lock:
                sent_valid.append((headers, body))
        elif status is None:
            bump("errors")


def invalid_worker():
    c = Client(ARGS.webhook_port)
    while not stop.is_set() and time.monotonic() < DEADLINE:
        with lock:
            if counts["invalid_sent"] >= ARGS.max_invalid:
                return
            counts["invalid_sent"] += 1
        headers, body = push_request("0" * 40, 0)
        headers["X-Hub-Signature-256"] = "sha256=" + "00" * 32
        status = c.post("/webhook", headers, body)
        if status == 401:
            bump("invalid_401")
        elif status is None:
            bump("errors")
        time.sleep(0.002)


def replay_worker():
    c = Client(ARGS.webhook_port)
    i = 0
    while not stop.is_set() and time.monotonic() < DEADLINE:
        with lock:
            if counts["replay_sent"] >= ARGS.max_replays:
                return
            if not sent_valid:
                pick = None
            else:
                pick = sent_valid[i % len(sent_valid)]
                counts["replay_sent"] += 1
        i += 1
        if pick is None:
            time.sleep(0.05)
            continue
        headers, body = dict(pick[0]), pick[1]
        if i % 2:
            # A replay under a made-up delivery id (the id is not signed).
            headers["X-GitHub-Delivery"] = str(uuid.uuid4())
        status = c.post("/webhook", headers, body)
        if status == 200:
            bump("replay_200")
        elif status is None:
            bump("errors")
        time.sleep(0.002)


slow_results = []  # (kind, seconds until the server closed, what it answered)


def slow_loris(idx):
    """Sends the request head one byte per second; records when it is cut."""
    s = socket.create_connection((HOST, ARGS.webhook_port), timeout=5)
    t0 = time.monotonic()
    head = b"POST /webhook HTTP/1.1\r\nHost: nodewave\r\nX-Padding: " + b"a" * 200
    answer = None
    s.settimeout(1.0)
    try:
        for b in head:
            if time.monotonic() - t0 > ARGS.header_timeout * 6 or time.monotonic() > DEADLINE:
                break
            s.sendall(bytes([b]))
            try:
                # Waiting for an answer is the one-second pause.
                answer = s.recv(200)
                break  # b"" (closed) or something the server said
            except socket.timeout:
                pass
    except OSError:
        answer = b""
    with lock:
        slow_results.append(("slow-loris", time.monotonic() - t0, answer))
    s.close()


def slow_body(idx):
    """Complete headers, then a 1000-byte body at one byte per second."""
    s = socket.create_connection((HOST, ARGS.webhook_port), timeout=5)
    t0 = time.monotonic()
    s.sendall(b"POST /webhook HTTP/1.1\r\nHost: nodewave\r\nX-Nodewave-Signature: sha256=00\r\n"
              b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    answer = b""
    s.settimeout(1.0)
    try:
        for _ in range(1000):
            if time.monotonic() - t0 > ARGS.request_timeout * 4 or time.monotonic() > DEADLINE:
                break
            s.sendall(b" ")
            try:
                chunk = s.recv(200)
                if chunk:
                    answer += chunk
                    break
                break  # closed
            except socket.timeout:
                pass
    except OSError:
        pass
    with lock:
        slow_results.append(("slow-body", time.monotonic() - t0, answer[:40]))
    s.close()


scrapes = []  # (latency seconds)
fetch_timeline = []  # (t, fetch_total)
rss_samples = []


def sampler(t_start):
    while not stop.is_set() and time.monotonic() < DEADLINE:
        t0 = time.monotonic()
        try:
            text = metrics_text()
            scrapes.append(time.monotonic() - t0)
            fetch_timeline.append((t0 - t_start, metric_sum(text, "nodewave_git_fetch_total")))
        except OSError:
            scrapes.append(None)
        rss_samples.append(proc_status("VmRSS"))
        time.sleep(0.5)


def pct(values, p):
    v = sorted(x for x in values if x is not None)
    if not v:
        return float("nan")
    return v[min(len(v) - 1, int(p / 100 * len(v)))]


def main():
    log(f"nodewave pid {ARGS.pid}, webhook :{ARGS.webhook_port}, metrics :{ARGS.metrics_port}")
    rss_idle = proc_status("VmRSS")
    log("baseline: one commit + webhook without load")
    baseline = commit_and_notify("2.0.0")
    log(f"baseline: {baseline}")

    before = metrics_text()
    fetch0 = metric_sum(before, "nodewave_git_fetch_total")
    t_start = time.monotonic()
    threads = [threading.Thread(target=sampler, args=(t_start,), daemon=True)]
    threads += [threading.Thread(target=valid_worker, args=(i,), daemon=True) for i in range(ARGS.threads)]
    threads += [threading.Thread(target=invalid_worker, daemon=True),
                threading.Thread(target=replay_worker, daemon=True)]
    slow = [threading.Thread(target=slow_loris, args=(i,), daemon=True) for i in range(ARGS.slow_loris)]
    slow += [threading.Thread(target=slow_body, args=(i,), daemon=True) for i in range(ARGS.slow_body)]
    for t in threads + slow:
        t.start()
    log(f"flood running for {ARGS.duration:.0f}s")
    time.sleep(min(5, ARGS.duration / 4))
    log("commit + webhook under load")
    loaded = commit_and_notify("3.0.0")
    log(f"under load: {loaded}")
    remaining = ARGS.duration - (time.monotonic() - t_start)
    if remaining > 0:
        time.sleep(remaining)
    stop.set()
    flood_s = time.monotonic() - t_start
    for t in threads:
        t.join(timeout=35)
    for t in slow:
        t.join(timeout=max(1.0, DEADLINE - time.monotonic()))
    # Let a trailing coalesced fetch run before counting.
    time.sleep(ARGS.coalesce_window + 2)
    after = metrics_text()
    fetches = metric_sum(after, "nodewave_git_fetch_total") - fetch0
    webhook = {r: metric_sum(after, "nodewave_webhook_requests_total", result=r)
               - metric_sum(before, "nodewave_webhook_requests_total", result=r)
               for r in ("accepted", "ignored", "bad_signature", "bad_request", "replayed")}
    hwm = proc_status("VmHWM")

    loris = [r for r in slow_results if r[0] == "slow-loris"]
    bodies = [r for r in slow_results if r[0] == "slow-body"]
    loris_cut = [r for r in loris if r[2] is not None]
    body_408 = [r for r in bodies if b"408" in r[2]]
    sent = counts["valid_sent"] + counts["invalid_sent"] + counts["replay_sent"]
    bound = 1 + int(flood_s / ARGS.coalesce_window) + 1
    # When the fetch counter went up (sampled every 0.5 s): with coalescing,
    # at most one step per window.
    fetch_times = [round(b[0], 1) for a, b in zip(fetch_timeline, fetch_timeline[1:]) if b[1] > a[1]]

    report = {
        "flood_seconds": round(flood_s, 1),
        "requests_sent": sent,
        "requests_per_second": round(sent / flood_s),
        "valid_webhooks_sent": counts["valid_sent"],
        "valid_answered_202": counts["valid_202"],
        "invalid_sent": counts["invalid_sent"],
        "invalid_answered_401": counts["invalid_401"],
        "replays_sent": counts["replay_sent"],
        "replays_answered_200": counts["replay_200"],
        "client_errors": counts["errors"],
        "nodewave_counted": webhook,
        "fetches_performed": int(fetches),
        "fetch_bound_1_plus_duration_over_window": bound,
        "slow_loris_connections": len(loris),
        "slow_loris_cut_by_header_timeout": len(loris_cut),
        "slow_loris_seconds_to_cut_max": round(max((r[1] for r in loris_cut), default=float("nan")), 1),
        "slow_body_connections": len(bodies),
        "slow_body_answered_408": len(body_408),
        "slow_body_seconds_to_408_max": round(max((r[1] for r in body_408), default=float("nan")), 1),
        "metrics_scrapes": len(scrapes),
        "metrics_scrape_failures": sum(1 for s in scrapes if s is None),
        "metrics_scrape_p50_ms": round(pct(scrapes, 50) * 1000, 1),
        "metrics_scrape_max_ms": round(pct(scrapes, 100) * 1000, 1),
        "baseline_commit": baseline,
        "loaded_commit": loaded,
        "rss_idle_mb": round(rss_idle / 1024, 1),
        "rss_max_sampled_mb": round(max(rss_samples, default=0) / 1024, 1),
        "vm_hwm_mb": round(hwm / 1024, 1),
        "fetch_seen_at_s": fetch_times[:40],
    }
    print(json.dumps(report, indent=2))
    ok = (fetches <= bound and loaded["synced_s"] is not None
          and len(loris_cut) == len(loris) and len(body_408) == len(bodies)
          and counts["replay_200"] == counts["replay_sent"])
    print("RESULT:", "ok" if ok else "CHECK THE NUMBERS ABOVE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
