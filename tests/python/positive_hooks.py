"""Schemathesis hooks for the positive-data run (testkit/tests/fuzz_positive.rs).

`/openapi.json` states every constraint JSON Schema can express; the few it cannot are
listed in docs/API.md ("Constraints the OpenAPI document cannot express"). Generated valid
data is brought within those here, and only those, so that `positive_data_acceptance`
checks everything else:

- a Number is written as a JSON integer: `2`, never `2.0` (JSON Schema 2020-12 counts a whole
  float as an integer, and schemathesis sends such values on purpose);
- a /read range has `low <= high`;
- the key of /update's `data` equals its `Stud_id`;
- a String value is at most SHARDLINE_MAX_STRING_BYTES (4096) bytes of UTF-8 (`maxLength`
  counts characters).

Keys outside every shard cannot occur: the test's shards cover every key the document admits.
Loaded through SCHEMATHESIS_HOOKS; the test runs schemathesis with `--mode positive`.
"""

import schemathesis

MAX_STRING_BYTES = 4096


def _plain(value):
    """`value` with whole floats spelled as integers and strings cut to the byte limit."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > MAX_STRING_BYTES:
        cut = value.encode("utf-8", "surrogatepass")[:MAX_STRING_BYTES]
        return cut.decode("utf-8", "ignore")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@schemathesis.hook
def map_case(context, case):
    body = getattr(case, "body", None)
    if not isinstance(body, dict):
        return case
    body = _plain(body)
    path = case.operation.path
    if path == "/read":
        rng = body.get("Stud_id")
        if isinstance(rng, dict) and isinstance(rng.get("low"), int) and isinstance(rng.get("high"), int):
            if rng["low"] > rng["high"]:
                rng["low"], rng["high"] = rng["high"], rng["low"]
    elif path == "/update":
        data = body.get("data")
        if isinstance(data, dict) and "Stud_id" in body:
            data["Stud_id"] = body["Stud_id"]
    case.body = body
    return case
