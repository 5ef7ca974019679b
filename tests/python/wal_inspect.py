"""Inspect shardline's write-ahead log with the official NATS Python client (nats-py), the
way an operator would with the NATS CLI:

    nats stream ls                  -> js.streams_info()
    nats stream info WAL_sh1        -> js.stream_info("WAL_sh1")
    nats stream view WAL_sh1        -> js.get_msg("WAL_sh1", seq) for seq = first..last
    nats consumer ls WAL_sh1        -> js.consumers_info("WAL_sh1")

Checks every WAL_* stream's subject, every entry of one shard in sequence order (its JSON
fields and its Nats-Msg-Id header), and each replica's durable consumer (named after the
server) against the stream's last sequence. Exits non-zero with a message on the first
violation; on success prints one JSON document describing what it saw, for the Rust test
(testkit/tests/wal_inspect.rs) to compare with the writes it made.

Usage: wal_inspect.py --url nats://127.0.0.1:4222 --shard sh1 --replicas Server0,Server3
       [--user U --password P | --token T]
"""

import argparse
import asyncio
import json
import sys

import nats
from nats.js.errors import NotFoundError

OPS = {"insert", "update", "delete", "term"}


def fail(msg):
    print(f"wal_inspect: {msg}", file=sys.stderr)
    sys.exit(1)


def check_entry(seq, entry):
    """The documented WAL entry shape: op, term, by, ts_ms, plus the op's own fields."""
    for field, kind in (("op", str), ("term", int), ("by", str), ("ts_ms", int)):
        if not isinstance(entry.get(field), kind):
            fail(f"seq {seq}: field {field!r} missing or not {kind.__name__}: {entry}")
    op = entry["op"]
    if op not in OPS:
        fail(f"seq {seq}: unknown op {op!r}")
    if op == "insert":
        rows = entry.get("rows")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            fail(f"seq {seq}: insert without a list of row objects: {entry}")
    elif op == "update":
        if not isinstance(entry.get("key"), int) or not isinstance(entry.get("row"), dict):
            fail(f"seq {seq}: update needs an integer key and a row: {entry}")
    elif op == "delete":
        if not isinstance(entry.get("key"), int):
            fail(f"seq {seq}: delete needs an integer key: {entry}")
    elif op == "term":
        if not isinstance(entry.get("primary"), str) or entry["by"] != "manager":
            fail(f"seq {seq}: a term marker names the primary and is written by the manager: {entry}")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--shard", required=True)
    ap.add_argument("--replicas", required=True, help="comma-separated server names")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--token")
    args = ap.parse_args()

    auth = {}
    if args.user:
        auth = {"user": args.user, "password": args.password}
    elif args.token:
        auth = {"token": args.token}
    nc = await nats.connect(args.url, connect_timeout=5, max_reconnect_attempts=2, **auth)
    js = nc.jetstream()

    # nats stream ls: one WAL_<shard> stream per shard, capturing wal.<shard>.
    streams = {}
    for info in await js.streams_info():
        name = info.config.name
        if name.startswith("WAL_"):
            shard = name[len("WAL_"):]
            if info.config.subjects != [f"wal.{shard}"]:
                fail(f"stream {name} captures {info.config.subjects}, expected wal.{shard}")
            streams[name] = info.state.last_seq
    stream = f"WAL_{args.shard}"
    if stream not in streams:
        fail(f"no stream {stream} among {sorted(streams)}")

    # nats stream view: every entry in order, JSON with a de-duplication id.
    info = await js.stream_info(stream)
    first, last = info.state.first_seq, info.state.last_seq
    entries, ids = [], set()
    for seq in range(first, last + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:
            fail(f"{stream}: sequence {seq} missing between {first} and {last}")
        if msg.seq != seq or msg.subject != f"wal.{args.shard}":
            fail(f"{stream}: asked for seq {seq}, got seq {msg.seq} on {msg.subject}")
        try:
            entry = json.loads(msg.data)
        except ValueError as e:
            fail(f"{stream} seq {seq}: not JSON ({e}): {msg.data[:200]!r}")
        check_entry(seq, entry)
        msg_id = (msg.headers or {}).get("Nats-Msg-Id")
        if entry["op"] != "term":
            # Data entries carry the id their primary de-duplicates and waits on.
            if not msg_id:
                fail(f"{stream} seq {seq}: {entry['op']} entry without a Nats-Msg-Id header")
            if msg_id in ids:
                fail(f"{stream} seq {seq}: Nats-Msg-Id {msg_id} used twice")
            ids.add(msg_id)
        entries.append({"seq": seq, "msg_id": msg_id, **entry})

    # nats consumer ls: one durable consumer per replica, named after the server.
    progress = {}
    for ci in await js.consumers_info(stream):
        progress[ci.name] = {
            "ack_floor": ci.ack_floor.stream_seq if ci.ack_floor else 0,
            "delivered": ci.delivered.stream_seq if ci.delivered else 0,
            "num_pending": ci.num_pending,
            "durable": ci.config.durable_name,
        }
    for server in args.replicas.split(","):
        c = progress.get(server)
        if c is None:
            fail(f"{stream}: replica {server} has no consumer; consumers: {sorted(progress)}")
        if c["durable"] != server:
            fail(f"{stream}: consumer {server} is not durable: {c}")

    await nc.close()
    json.dump(
        {"streams": streams, "stream": stream, "first_seq": first, "last_seq": last,
         "entries": entries, "consumers": progress},
        sys.stdout,
    )


if __name__ == "__main__":
    asyncio.run(main())
