#!/usr/bin/env python3
"""An independent, plain (no extensions) implementation of daisy/WIRE.md, stdlib only.

Used by daisy/tests/shell.rs to check compatibility both ways:
  plain_daisy.py send --clients N --port P [--group G] [--payload 1460] [--ppb 1024] FILE
  plain_daisy.py recv --port P [--server 127.0.0.1] --out FILE

Written from the wire facts alone: little-endian u32 fields, a raw sockaddr_in greeting,
1-byte signals, CLIENT_REQ with a count and sequence numbers, 12-byte packet headers whose
"crc" is the wrapping sum of the payload's little-endian u32 words. Every wait is bounded.
"""
import argparse
import select
import socket
import struct
import sys
import time

READY, REQ, DONE, SENT = 1, 2, 4, 8
TIMEOUT = 20.0


def add_sum(data):
    pad = (-len(data)) % 4
    if pad:
        data = data + b"\0" * pad
    return sum(struct.unpack("<%dI" % (len(data) // 4), data)) & 0xFFFFFFFF


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed with %d of %d bytes read" % (len(buf), n))
        buf += chunk
    return buf


def send(args):
    data = open(args.file, "rb").read()
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", args.port))
    ls.listen(16)
    ls.settimeout(TIMEOUT)
    clients = []
    greeting = struct.pack("<H", 2) + struct.pack(">H", args.port) + socket.inet_aton(args.group) + b"\0" * 8
    while len(clients) < args.clients:
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        c.sendall(greeting)
        clients.append(c)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 8)
    u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    pos, seq, bid = 0, 0, 0
    while True:
        chunk = data[pos:pos + args.payload * args.ppb]
        pos += len(chunk)
        pkts = [chunk[i:i + args.payload] for i in range(0, len(chunk), args.payload)]
        bid += 1
        hdr = struct.pack("<4I", bid, len(chunk), seq, len(pkts))
        for c in clients:
            c.sendall(hdr)
        for c in clients:
            if read_exact(c, 1)[0] != READY:
                raise RuntimeError("expected CLIENT_READY")
        # The deployed sender goes last-to-first; order carries no meaning.
        for i in reversed(range(len(pkts))):
            p = pkts[i]
            u.sendto(struct.pack("<3I", seq + i, add_sum(p), len(p)) + p, (args.group, args.port))
            if i % 64 == 0:
                time.sleep(0.0005)
        for c in clients:
            c.sendall(bytes([SENT]))
        for c in clients:
            while True:
                t = read_exact(c, 1)[0]
                if t == DONE:
                    break
                if t != REQ:
                    raise RuntimeError("unexpected signal %d" % t)
                n = struct.unpack("<I", read_exact(c, 4))[0]
                seqs = struct.unpack("<%dI" % n, read_exact(c, 4 * n))
                out = b""
                for s in seqs:
                    k = s - seq
                    if 0 <= k < len(pkts):
                        p = pkts[k]
                        out += struct.pack("<3I", s, add_sum(p), len(p)) + p
                    else:
                        out += struct.pack("<3I", s, 0, 0)
                c.sendall(out)
        seq += len(pkts)
        if not pkts:
            break
    for c in clients:
        c.shutdown(socket.SHUT_RDWR)
        c.close()
    print("plain_daisy send: %d bytes" % len(data), file=sys.stderr)


def recv(args):
    deadline = time.time() + TIMEOUT
    while True:
        try:
            t = socket.create_connection((args.server, args.port), timeout=TIMEOUT)
            break
        except ConnectionRefusedError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    g = read_exact(t, 16)
    port = struct.unpack(">H", g[2:4])[0]
    group = socket.inet_ntoa(g[4:8])  # bytes 8..16 are ignored by a plain receiver
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    u.bind((group, port))
    u.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
    u.setblocking(False)
    out = open(args.out, "wb")
    total = 0
    while True:
        bid, size, base, count = struct.unpack("<4I", read_exact(t, 16))
        got = {}
        t.sendall(bytes([READY]))
        sent = False
        while not sent:
            r, _, _ = select.select([u, t], [], [], TIMEOUT)
            if not r:
                raise TimeoutError("no SERVER_SENT")
            if u in r:
                drain(u, got, base, count)
            if t in r:
                if read_exact(t, 1)[0] != SENT:
                    raise RuntimeError("expected SERVER_SENT")
                sent = True
        drain(u, got, base, count)
        missing = [base + i for i in range(count) if i not in got]
        if missing:
            t.sendall(bytes([REQ]) + struct.pack("<I", len(missing)) + struct.pack("<%dI" % len(missing), *missing))
            for s in missing:
                sq, crc, n = struct.unpack("<3I", read_exact(t, 12))
                p = read_exact(t, n)
                if sq != s or n == 0 or add_sum(p) != crc:
                    raise RuntimeError("bad repair for %d" % s)
                got[s - base] = p
        for i in range(count):
            out.write(got[i])
            total += len(got[i])
        t.sendall(bytes([DONE]))
        if count == 0:
            break
    out.close()
    print("plain_daisy recv: %d bytes" % total, file=sys.stderr)


def drain(u, got, base, count):
    while True:
        try:
            d = u.recv(70000)
        except BlockingIOError:
            return
        if len(d) < 12:
            continue
        s, crc, n = struct.unpack("<3I", d[:12])
        p = d[12:]
        if n == 0 or n != len(p) or add_sum(p) != crc or not (base <= s < base + count):
            continue
        got.setdefault(s - base, p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["send", "recv"])
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--port", type=int, default=18383)
    ap.add_argument("--group", default="224.238.0.31")
    ap.add_argument("--payload", type=int, default=1460)
    ap.add_argument("--ppb", type=int, default=1024)
    ap.add_argument("--server", default="127.0.0.1")
    ap.add_argument("--out")
    ap.add_argument("file", nargs="?")
    a = ap.parse_intermixed_args()
    send(a) if a.mode == "send" else recv(a)


if __name__ == "__main__":
    main()
