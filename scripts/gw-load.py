#!/usr/bin/env python3
"""A fixed number of /write or /read requests against a gateway, for counting the gateway's
instructions per request (scripts/gw-callgrind.sh). Not a throughput tool.

    gw-load.py URL write N FIRST_KEY [CONN]   N single-row /write, keys FIRST_KEY.., CONN connections
    gw-load.py URL read N ROWS [CONN]         N /read of ROWS keys each, over keys 0..2000

Every answer must be 200; the first other one stops the run with exit status 1.
"""

import http.client
import json
import sys
import threading
import urllib.parse


def main():
    url, op, n, arg = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    conns = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    u = urllib.parse.urlparse(url)
    failures = []

    def body(i):
        if op == "write":
            k = arg + i
            return "POST", "/write", {"data": [{"Stud_id": k, "Stud_name": f"n{k}", "Stud_marks": k % 100}]}
        low = (i * 37) % (2000 - arg)
        return "POST", "/read", {"Stud_id": {"low": low, "high": low + arg - 1}}

    def worker(w):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        for i in range(w, n, conns):
            if failures:
                return
            method, path, b = body(i)
            c.request(method, path, json.dumps(b), {"Content-Type": "application/json"})
            r = c.getresponse()
            text = r.read()
            if r.status != 200:
                failures.append(f"{method} {path} {b}: {r.status} {text[:300]!r}")
                return
        c.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        print(failures[0], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
