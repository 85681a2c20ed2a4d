#!/usr/bin/env python3
"""How long the saga stalls when one node of a 3-node broker cluster freezes.

Brings up `commerce up --cluster 3` in a fresh data dir, places an order every 100 ms (each in
its own thread, retrying a 503 under its Idempotency-Key), SIGSTOPs one nats-server for
--freeze seconds after 10 s, SIGCONTs it, goes on for 20 s, and reports the longest time
without a confirmation, confirmations per second from the freeze on, and each order's time
from its first POST to a confirmed status, by when it was placed. Before it stops the system, it
traces the slowest order placed after the thaw (`commerce order trace`): when it was placed and
accepted, when the client saw it end, and each hop of its saga, so a wait shows where it was (in
the saga, or in the read model the client polls).

    cargo build --release --bin commerce
    scripts/freeze-a-node.py --node 1 --freeze 15

Python's standard library only; NATS_SERVER_BIN as for `commerce up`. Which nats-server
--node picks goes by process id: usually node-(N+1), the nodes being started in order.
"""
import argparse
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

CONFIRMED = {"CONFIRMED", "SHIPPED", "COMPLETED"}
ENDED = CONFIRMED | {"CANCELLED"}
WAIT = 120  # seconds an order is waited for after the run, at most

args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
args.add_argument("--commerce", default="target/release/commerce")
args.add_argument("--node", type=int, default=0, help="which node to freeze: 0, 1 or 2")
args.add_argument("--freeze", type=float, default=15.0, help="seconds")
args = args.parse_args()

data = tempfile.mkdtemp(prefix="freeze-a-node-")
log = open(os.path.join(data, "commerce.log"), "w")
up = subprocess.Popen(
    [args.commerce, "--data-dir", data, "up", "--cluster", "3", "--http", "127.0.0.1:0",
     "--admin", "127.0.0.1:0"],
    stdout=subprocess.PIPE, stderr=log, text=True)
base = None
for line in up.stdout:
    line = line.strip()
    if line.startswith("http: "):
        base = "http://" + line.split()[1].removeprefix("http://")
    if line.startswith("Press Ctrl-C"):
        break
token = subprocess.check_output(
    [args.commerce, "--data-dir", data, "token", "customer", "alice"], text=True).strip()
nodes = sorted(int(p) for p in subprocess.check_output(
    ["pgrep", "-f", f"nats-server.*{data}"], text=True).split())


def call(method, path, body=None, key=None):
    request = urllib.request.Request(
        base + path, method=method, data=json.dumps(body).encode() if body else None)
    request.add_header("authorization", "Bearer " + token)
    request.add_header("content-type", "application/json")
    if key:
        request.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except OSError:
        return 0, {}


orders = []  # (placed at, seconds to its end, its status at the end, its id, when accepted)


def place(i):
    placed = time.time()
    form = {"lines": [{"sku": "SKU-MUG", "quantity": 1}], "card_number": "4242424242424242",
            "shipping_address": "[hold] 1 Main Street"}
    while True:
        status, body = call("POST", "/orders", form, key=f"freeze-{i}")
        if status in (200, 201):
            accepted = time.time()
            break
        if status not in (0, 503):  # only "send it again" is sent again
            orders.append((placed, time.time() - placed, f"refused {status}", None, None))
            return
        time.sleep(0.2)  # a client's pause between tries, not a synchronization
    while (ended := call("GET", f"/orders/{body['order_id']}")[1].get("order_status")) not in ENDED:
        time.sleep(0.05)
    orders.append((placed, time.time() - placed, ended, body["order_id"], accepted))


start = time.time()
froze = thawed = None
threads = []
i = 0
try:
    while time.time() - start < 10 + args.freeze + 20:
        if froze is None and time.time() - start >= 10:
            os.kill(nodes[args.node], signal.SIGSTOP)
            froze = time.time()
        if froze and thawed is None and time.time() - froze >= args.freeze:
            os.kill(nodes[args.node], signal.SIGCONT)
            thawed = time.time()
        threads.append(threading.Thread(target=place, args=(i,), daemon=True))
        threads[-1].start()
        i += 1
        time.sleep(0.1)
    deadline = time.time() + WAIT
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.time()))
    end = time.time()
    # The slowest order placed after the thaw: where its saga waited, hop by hop.
    late = [o for o in orders if o[0] >= thawed and o[3]]
    if late:
        slowest = max(late, key=lambda o: o[1])
        hms = lambda t: time.strftime("%H:%M:%S", time.gmtime(t)) + f"{t % 1:.3f}"[1:]
        print(f"slowest order placed after the thaw ({slowest[1]:.2f} s): placed {hms(slowest[0])},"
              f" accepted {hms(slowest[4])}, seen ended {hms(slowest[0] + slowest[1])}; traced:")
        subprocess.run([args.commerce, "--data-dir", data, "order", "trace", slowest[3]])
finally:
    if froze and thawed is None:
        os.kill(nodes[args.node], signal.SIGCONT)
    up.send_signal(signal.SIGINT)
    up.wait(timeout=60)

confirmed = sorted(placed + took for placed, took, status, *_ in orders if status in CONFIRMED)
print(f"node {args.node} frozen for {args.freeze:.0f} s: {len(confirmed)} of {i} orders confirmed,"
      f" {sum(1 for o in orders if o[2] not in CONFIRMED)} ended otherwise,"
      f" {i - len(orders)} not ended {WAIT} s after the run")
# From the freeze to the end of the run: a saga that never came back is one long gap.
marks = sorted([froze, end] + [c for c in confirmed if froze <= c <= end])
gap, at = max((b - a, a) for a, b in zip(marks, marks[1:]))
print(f"longest time without a confirmation: {gap:.1f} s, from {at - froze:+.1f} s after the freeze")
after = [c - froze for c in confirmed if c >= froze]
print("confirmations per second from the freeze on:",
      [sum(1 for c in after if k <= c < k + 1) for k in range(int(args.freeze) + 20)])
for lo in range(-3, int(args.freeze) + 6, 3):
    took = sorted(t for placed, t, status, *_ in orders
                  if status in CONFIRMED and froze + lo <= placed < froze + lo + 3)
    if took:
        print(f"placed {lo:+3}..{lo + 3:+3} s from the freeze: p50 {took[len(took) // 2]:6.2f} s,"
              f" max {took[-1]:6.2f} s")
print(f"logs: {data}")
