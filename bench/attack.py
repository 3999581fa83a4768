#!/usr/bin/env python3
"""The account attacks of issue 10 against a running server, with what each got.

40 concurrent wrong logins for one email, 300 concurrent wrong logins from one IP, 60
concurrent wrong current_password guesses, and 400 logins with 256 KiB "emails" while the
server's RSS is watched. Standard library only; talks to 127.0.0.1 only.

Usage: attack.py PORT PID
"""

import collections
import concurrent.futures
import http.client
import json
import sys
import time

PORT, PID = int(sys.argv[1]), int(sys.argv[2])


def call(method, path, body=None, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def rss_kib():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


def storm(n, make):
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        statuses = list(pool.map(lambda i: make(i)[0], range(n)))
    return dict(sorted(collections.Counter(statuses).items()))


status, data = call("POST", "/api/v1/auth/register",
                    {"email": "victim@example.com", "password": "the right password"})
token = json.loads(data)["access_token"] if status == 201 else None

print("40 concurrent wrong logins for one email:",
      storm(40, lambda i: call("POST", "/api/v1/auth/login",
                               {"email": "victim@example.com", "password": f"guess {i}"})))
print("  then the right password from the same address:",
      call("POST", "/api/v1/auth/login",
           {"email": "victim@example.com", "password": "the right password"})[0])
print("300 concurrent wrong logins from one IP:",
      storm(300, lambda i: call("POST", "/api/v1/auth/login",
                                {"email": f"user{i}@example.com", "password": "wrong password"})))
if token:
    print("60 concurrent wrong current_password guesses:",
          storm(60, lambda i: call("PUT", "/api/v1/user/password",
                                   {"current_password": f"guess {i}",
                                    "new_password": "a brand new password"}, token)))

before = rss_kib()
huge = "a" * (256 * 1024) + "@example.com"
started = time.monotonic()
statuses = collections.Counter(
    call("POST", "/api/v1/auth/login", {"email": huge + str(i), "password": "x" * 12})[0]
    for i in range(400))
print(f"400 logins with 256 KiB emails: {dict(statuses)} in {time.monotonic() - started:.1f} s")
time.sleep(1)
after = rss_kib()
print(f"  RSS before {before / 1024:.1f} MB, after {after / 1024:.1f} MB, "
      f"growth {(after - before) / 1024:.1f} MB")
