#!/usr/bin/env python3
"""The soak's load: many clients, each on its own HTTP/1.1 keep-alive connection, sending GET and POST (small
bodies) with random gaps, a fixed number of requests each; no client-side retry. Prints one JSON object.

The ids (`x-soak-id`) of failed requests are listed in `failed_ids`. An answer counts as ok when it is a 200 from the backend (a GET's body starts with "ok", a POST's body is the
request body). Everything else is an error, by kind: "status 503 <x-waypoint-error or body prefix>",
"eof before response", "reset", "timeout". A connection the server closed while idle (seen before writing)
is reopened without counting an error, as client pools do.

    client.py --target 127.0.61.100:9080 --host reviews --connections 32 --requests 60 --max-gap-ms 40 --tag run1
"""

import argparse
import asyncio
import json
import random
import string
import time

TIMEOUT = 10.0


async def read_response(reader):
    """(status, headers, body) of one response."""
    line = await reader.readline()
    if not line:
        raise EOFError("eof before response")
    parts = line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        h = await reader.readline()
        if not h:
            raise EOFError("eof in response headers")
        if h in (b"\r\n", b"\n"):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        return status, headers, bytes(body)
    n = int(headers.get("content-length", "0") or 0)
    return status, headers, await reader.readexactly(n)


def kind_of(exc):
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, (EOFError, asyncio.IncompleteReadError)):
        return "eof before response" if "before" in str(exc) else "eof in response"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, (BrokenPipeError, ConnectionAbortedError)):
        return "broken pipe"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    return type(exc).__name__


async def one_client(c, a, out):
    host, port = a.target.rsplit(":", 1)
    reader = writer = None
    for i in range(a.requests):
        await asyncio.sleep(random.uniform(0, a.max_gap_ms) / 1000.0)
        post = random.random() < a.post_share
        sid = f"{a.tag}-{c}-{i}"
        if post:
            body = "".join(random.choices(string.ascii_letters, k=random.randint(16, 512))).encode()
            req = (f"POST /post HTTP/1.1\r\nhost: {a.host}\r\nx-soak-id: {sid}\r\n"
                   f"content-type: text/plain\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body
        else:
            body = b""
            req = f"GET /get?i={i} HTTP/1.1\r\nhost: {a.host}\r\nx-soak-id: {sid}\r\n\r\n".encode()
        method = "POST" if post else "GET"
        out["requests"] += 1
        try:
            if reader is not None and reader.at_eof():
                out["reopened_idle"] += 1
                writer.close()
                reader = writer = None
            if reader is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), TIMEOUT)
            writer.write(req)
            await writer.drain()
            status, headers, rbody = await asyncio.wait_for(read_response(reader), TIMEOUT)
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
            if status == 200 and ((post and rbody == body) or (not post and rbody.startswith(b"ok"))):
                out["ok"] += 1
                continue
            if status == 200:
                kind = "200 with a wrong body"
            else:
                text = rbody[:300].decode("latin-1", "replace").strip()
                if headers.get("x-waypoint-error"):
                    flag = headers["x-waypoint-error"]
                elif "reset reason:" in text:  # Envoy's local reply
                    flag = "(envoy) reset reason: " + text.split("reset reason:", 1)[1].strip()[:50]
                else:
                    flag = text[:60]
                kind = f"status {status} {flag}"
        except Exception as e:  # noqa: BLE001 -- every failure is a data point
            kind = kind_of(e)
            if writer is not None:
                writer.close()
            reader = writer = None
        out["errors"][f"{method} {kind}"] = out["errors"].get(f"{method} {kind}", 0) + 1
        out["failed_ids"].append(sid)
        out[f"{method.lower()}_errors"] += 1
    if writer is not None:
        writer.close()


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="ip:port (the client tunnel's VIP)")
    ap.add_argument("--host", default="reviews")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--requests", type=int, default=60, help="per connection")
    ap.add_argument("--max-gap-ms", type=float, default=40.0)
    ap.add_argument("--post-share", type=float, default=0.5)
    ap.add_argument("--tag", default="soak", help="prefix of x-soak-id (unique per run)")
    a = ap.parse_args()
    out = {"requests": 0, "ok": 0, "get_errors": 0, "post_errors": 0, "reopened_idle": 0, "errors": {},
           "failed_ids": []}
    started = time.monotonic()
    await asyncio.gather(*(one_client(c, a, out) for c in range(a.connections)))
    out["elapsed_s"] = round(time.monotonic() - started, 2)
    out["errors_total"] = out["get_errors"] + out["post_errors"]
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
