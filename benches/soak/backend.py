#!/usr/bin/env python3
"""The soak's application: an HTTP/1.1 server that closes idle keep-alive connections after a short random time.

Every connection left idle (no request being read or answered, no byte received) for a random time in
MIN..MAX ms, drawn anew for each idle period, is closed -- the keep-alive race: a request the proxy sends just
then meets a closed socket (a FIN, or a RST when its bytes were already in the socket when it closed).

Answers: GET -> 200 "ok <listen address>"; POST -> 200 with the request body echoed (the client checks it).
A POST carrying `x-soak-id` that was already seen is counted as processed twice.

Counters (cumulative, JSON): GET http://<stats address>/stats
    connections, requests, get, post, idle_closes (connections closed while idle), posts_processed_twice
Which of some request ids it received: POST http://<stats address>/seen with one `x-soak-id` a line
    -> {"asked": N, "seen": M}

    backend.py --listen 127.0.61.11:8080 --listen 127.0.61.12:8080 --idle-close-ms 5-30 --stats 127.0.61.11:8099
"""

import argparse
import asyncio
import json
import random
import signal
import sys

STATS = {
    "connections": 0,
    "requests": 0,
    "get": 0,
    "post": 0,
    "idle_closes": 0,
    "posts_processed_twice": 0,
    "bad_requests": 0,
}
POST_IDS = set()
SEEN_IDS = set()
MAX_HEAD = 64 * 1024


class Http1(asyncio.Protocol):
    """One keep-alive connection."""

    def __init__(self, name, idle):
        self.name, self.idle = name, idle
        self.buf = bytearray()
        self.transport = None
        self.timer = None

    def connection_made(self, transport):
        self.transport = transport
        STATS["connections"] += 1
        self.arm()

    def connection_lost(self, exc):
        self.disarm()
        self.transport = None

    def arm(self):
        """Starts a new idle period."""
        self.disarm()
        if self.idle is not None and self.transport is not None:
            lo, hi = self.idle
            delay = random.uniform(lo, hi) / 1000.0
            self.timer = asyncio.get_running_loop().call_later(delay, self.idle_close)

    def disarm(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def idle_close(self):
        self.timer = None
        if self.transport is None or self.buf:
            return
        STATS["idle_closes"] += 1
        # close(), as servers do: a FIN; the kernel answers a request arriving after it with a RST.
        self.transport.close()

    def data_received(self, data):
        self.disarm()
        self.buf += data
        while self.transport is not None:
            req = self.parse()
            if req is None:
                break
            self.answer(*req)
        if self.transport is not None and not self.buf:
            self.arm()

    def parse(self):
        """One whole request from the buffer: (method, path, headers, body), or None for more bytes."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self.bad()
            return None
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, path, _ = head[0].split(" ", 2)
        except ValueError:
            self.bad()
            return None
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        pos = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                eol = self.buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
                start = eol + 2
                if size == 0:
                    trailer_end = self.buf.find(b"\r\n", start)
                    if trailer_end < 0:
                        return None
                    pos = trailer_end + 2
                    break
                if len(self.buf) < start + size + 2:
                    return None
                body += self.buf[start:start + size]
                pos = start + size + 2
        else:
            n = int(headers.get("content-length", "0") or 0)
            if len(self.buf) < pos + n:
                return None
            body = bytes(self.buf[pos:pos + n])
            pos += n
        del self.buf[:pos]
        return method, path, headers, bytes(body)

    def bad(self):
        STATS["bad_requests"] += 1
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()
        self.transport = None

    def answer(self, method, path, headers, body):
        STATS["requests"] += 1
        if "x-soak-id" in headers:
            SEEN_IDS.add(headers["x-soak-id"])
        if method == "POST":
            STATS["post"] += 1
            sid = headers.get("x-soak-id")
            if sid is not None:
                if sid in POST_IDS:
                    STATS["posts_processed_twice"] += 1
                POST_IDS.add(sid)
            out = body
        else:
            STATS["get"] += 1
            out = f"ok {self.name}\n".encode()
        close = headers.get("connection", "").lower() == "close"
        head = (
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(out)}\r\nx-backend: {self.name}\r\n"
            + ("connection: close\r\n" if close else "")
            + "\r\n"
        )
        self.transport.write(head.encode() + out)
        if close:
            self.transport.close()
            self.transport = None


class Stats(asyncio.Protocol):
    """GET /stats; POST /seen (ids, one a line)."""

    def connection_made(self, transport):
        self.transport, self.buf = transport, bytearray()

    def data_received(self, data):
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").lower()
        n = 0
        for line in head.split("\r\n")[1:]:
            if line.startswith("content-length:"):
                n = int(line.split(":", 1)[1])
        if len(self.buf) < end + 4 + n:
            return
        if head.startswith("post /seen"):
            ids = [i for i in bytes(self.buf[end + 4:end + 4 + n]).decode().split("\n") if i]
            body = json.dumps({"asked": len(ids), "seen": sum(1 for i in ids if i in SEEN_IDS)}).encode()
        else:
            body = json.dumps(STATS).encode()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        self.transport.close()


def addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", action="append", required=True, help="ip:port (repeatable)")
    ap.add_argument("--idle-close-ms", default="5-30", help="MIN-MAX, or 'off'")
    ap.add_argument("--stats", required=True, help="ip:port of the counters endpoint")
    a = ap.parse_args()
    idle = None
    if a.idle_close_ms != "off":
        lo, _, hi = a.idle_close_ms.partition("-")
        idle = (float(lo), float(hi or lo))
    loop = asyncio.get_running_loop()
    servers = []
    for text in a.listen:
        host, port = addr(text)
        servers.append(await loop.create_server(lambda t=text: Http1(t, idle), host, port, backlog=1024))
    host, port = addr(a.stats)
    servers.append(await loop.create_server(Stats, host, port))
    print(f"backend listening on {a.listen}, idle close {a.idle_close_ms} ms, stats on {a.stats}", flush=True)
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    print(json.dumps(STATS), flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
