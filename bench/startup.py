"""Starts the server and measures the time from spawn to the first GET /health 200.

usage: startup.py BINARY PORT LOGFILE — prints `pid: N` and the time, leaves the server running.
"""
import socket
import subprocess
import sys
import time

binary, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
started = time.perf_counter()
proc = subprocess.Popen([binary, "serve"], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
while True:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                break
    except OSError:
        pass
    if time.perf_counter() - started > 10:
        sys.exit("no /health 200 within 10 s")
    time.sleep(0.0005)
print(f"pid: {proc.pid}")
print(f"first /health 200 after: {(time.perf_counter() - started) * 1000:.1f} ms")
