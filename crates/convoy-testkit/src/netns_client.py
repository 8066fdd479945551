"""A client for cluster tests, run inside the client namespace.

    python3 client.py '{"target": "10.88.0.100:80", "sources": [...], ...}'

Every request is `GET /` over a connection of its own (or, for the held
connections, over one kept-alive connection); the servers answer
"Hello from NAME at ADDR, for NODE_IP:PORT", so the client knows which
balancer node carried each connection. Bounded in count and in time.

Settings (JSON):
  target    "ip:port" of the virtual address
  sources   client addresses to bind, used in turn
  count     requests on new connections (burst: as fast as they go)
  duration  seconds of steady load instead (one new connection every
            `interval` seconds until then)
  interval  seconds between new connections in steady load
  hold      connections opened first and kept: each sends a request every
            `hold_every` seconds until the end
  timeout   seconds for a connection to connect and answer

Prints one JSON object: per attempt [start time, ok, node, error,
seconds, server], per held connection its node and whether it broke.
"""
import json
import socket
import sys
import threading
import time

cfg = json.loads(sys.argv[1])
host, port = cfg["target"].rsplit(":", 1)
port = int(port)
sources = cfg.get("sources") or [None]
timeout = cfg.get("timeout", 2.0)
REQ = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode()


def node_of(body):
    # "... for 10.88.0.11:40000"
    tail = body.rsplit("for ", 1)[-1].strip()
    return tail.rsplit(":", 1)[0] if ":" in tail else "?"


def server_of(body):
    # "Hello from NAME at ..."
    words = body.split()
    return words[2] if len(words) > 2 else "?"


def read_response(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise ConnectionAbortedError("closed before the answer")
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        d = s.recv(4096)
        if not d:
            raise ConnectionAbortedError("closed in the body")
        body += d
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head.split(b"\r\n")[0].decode(errors="replace"))
    return body[:length].decode(errors="replace")


def describe(e):
    # "ConnectionResetError", or the errno's name for a bare OSError.
    import errno as E
    name = type(e).__name__
    if name == "OSError" and getattr(e, "errno", None):
        name += ":" + E.errorcode.get(e.errno, str(e.errno))
    return name


def connect(i):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    src = sources[i % len(sources)]
    if src:
        s.bind((src, 0))
    s.connect((host, port))
    return s


def attempt(i):
    t0 = time.time()
    try:
        s = connect(i)
        try:
            s.sendall(REQ)
            body = read_response(s)
        finally:
            s.close()
        return [t0, True, node_of(body), None, time.time() - t0, server_of(body)]
    except Exception as e:  # noqa: BLE001 - every failure is a result
        return [t0, False, None, describe(e), time.time() - t0, None]


held = []
stop = threading.Event()


def keep(i, out):
    try:
        s = connect(10_000 + i)
        s.sendall(REQ)
        out["node"] = node_of(read_response(s))
    except Exception as e:  # noqa: BLE001
        out["broke"] = "open: " + type(e).__name__
        return
    n = 0
    while not stop.is_set():
        time.sleep(cfg.get("hold_every", 0.2))
        try:
            s.sendall(REQ)
            node = node_of(read_response(s))
            n += 1
            if node != out["node"]:
                out["broke"] = "moved to " + node
                return
        except Exception as e:  # noqa: BLE001
            out["broke"] = type(e).__name__
            return
    out["requests"] = n
    s.close()


threads = []
for i in range(cfg.get("hold", 0)):
    out = {"node": None, "broke": None}
    held.append(out)
    t = threading.Thread(target=keep, args=(i, out), daemon=True)
    t.start()
    threads.append(t)
time.sleep(0.5 if threads else 0)

def udp_round():
    # One datagram from each of `count` sockets; each must be answered
    # exactly once (two answers: two nodes took the flow).
    import select
    socks = []
    for i in range(cfg.get("count", 0)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        src = sources[i % len(sources)]
        s.bind((src or "0.0.0.0", 0))
        s.sendto(b"ping %d" % i, (host, port))
        socks.append((time.time(), s, []))
    end = time.time() + cfg.get("timeout", 2.0)
    while time.time() < end:
        r, _, _ = select.select([s for _, s, _ in socks], [], [], 0.1)
        for s in r:
            d = s.recv(2048).decode(errors="replace")
            for _, t, got in socks:
                if t is s:
                    got.append(d)
    out = []
    for t0, s, got in socks:
        if len(got) == 1:
            out.append([t0, True, node_of(got[0]), None, 0.0, server_of(got[0])])
        else:
            out.append([t0, False, None, "%d answers" % len(got), 0.0, None])
        s.close()
    return out


attempts = []
if cfg.get("udp"):
    attempts = udp_round()
elif "duration" in cfg:
    end = time.time() + cfg["duration"]
    i = 0
    pending = []
    lock = threading.Lock()

    def one(i):
        r = attempt(i)
        with lock:
            attempts.append(r)

    while time.time() < end:
        t = threading.Thread(target=one, args=(i,), daemon=True)
        t.start()
        pending.append(t)
        i += 1
        time.sleep(cfg.get("interval", 0.02))
    for t in pending:
        t.join(timeout + 1)
else:
    for i in range(cfg.get("count", 0)):
        attempts.append(attempt(i))

stop.set()
for t in threads:
    t.join(timeout + 1)
attempts.sort()
print(json.dumps({"attempts": attempts, "held": held}))
