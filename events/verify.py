#!/usr/bin/env python3
"""An independent verifier of a bindledger log, written from events/VERIFYING.md alone.

Standard library only (the Ed25519 check is the RFC 8032 reference arithmetic, slow but
plain). Usage:

    python3 events/verify.py EXPORT.ndjson [--checkpoints FILE --public-key HEX]
                             [--trusted-head SEQ:HASH]
    python3 events/verify.py --cluster DIR [--cluster-key HEX]

Prints `ok EVENTS HEAD` and exits 0, or `FAIL LINE SEQ REASON` (the first line, 1-based,
that breaks a rule) and exits 3; exits 2 on bad usage, 1 when the file cannot be read.
With --cluster (a directory `bindledger cluster export` wrote), one `ok SHARD EVENTS HEAD`
line per shard and `ok cluster SHARDS`, or `FAIL SHARD LINE SEQ REASON`.
"""

import datetime
import hashlib
import json
import re
import sys

# ---- Ed25519 verification (RFC 8032, section 5.1), affine coordinates ----
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)



class RepeatedKey(Exception):
    pass


def no_repeated_keys(pairs):
    """An object with a key twice has no one meaning: the ledger's readers refuse it."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise RepeatedKey(k)
        out[k] = v
    return out

class NotANumber(Exception):
    pass


def no_constants(name):
    """NaN and Infinity are not JSON: Python's reader takes them, the ledger's does not."""
    raise NotANumber(name)


# The envelope: every field of an event, and what it holds.
ENVELOPE = ("v", "id", "seq", "account", "account_seq", "event_time", "record_time",
            "context", "prev_hash", "payload")
# These three may also be absent, which is the same as null.
OPTIONAL = ("idempotency_key", "request_digest", "correlation_id")
TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$")
HEX64 = re.compile(r"^[0-9A-Fa-f]{64}$")
_H = "[0-9A-Fa-f]"
UUID = re.compile(rf"^(?:{_H}{{32}}|(urn:uuid:|\{{)?{_H}{{8}}-{_H}{{4}}-{_H}{{4}}-{_H}{{4}}-{_H}{{12}}\}}?)$")
# The schema versions this verifier knows (events/schema/event.v1 .. v9).
KNOWN_VERSIONS = range(1, 10)


def is_integer(x, low=0):
    """A JSON integer (no fraction, no exponent: 20001.0 and 2e4 are not), unsigned 64-bit."""
    return type(x) is int and low <= x < 2**64


def is_time(x):
    """RFC 3339, no finer than microseconds (digits past the sixth of the fraction are zeros)."""
    m = TIME.match(x) if isinstance(x, str) else None
    if not m:
        return False
    y, mo, d, h, mi, sec, frac, zone = m.groups()
    if frac and frac[6:9].strip("0"):
        return False
    if zone not in ("Z", "z") and (int(zone[1:3]) > 23 or int(zone[4:6]) > 59):
        return False
    try:
        datetime.datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(sec), 59))
    except ValueError:
        return False
    return int(sec) <= 60


def envelope_problem(event):
    """What is wrong with an event's envelope, or None."""
    if not isinstance(event, dict):
        return "not a JSON object"
    for key in ENVELOPE:
        if key not in event:
            return f"no {key} field"
    if not is_integer(event["v"], 1) or event["v"] not in KNOWN_VERSIONS:
        return "v is not a schema version this verifier knows"
    if not is_integer(event["seq"], 1) or not is_integer(event["account_seq"], 1):
        return "seq and account_seq are whole numbers from 1 (no fraction, no exponent)"
    if not isinstance(event["account"], str):
        return "account is a string"
    m = UUID.match(event["id"]) if isinstance(event["id"], str) else None
    if not m or (m.group(1) == "{") != event["id"].endswith("}"):
        return "id is a UUID"
    if not is_time(event["event_time"]) or not is_time(event["record_time"]):
        return "event_time and record_time are RFC 3339 times, to the microsecond at most"
    if not isinstance(event["prev_hash"], str) or not HEX64.match(event["prev_hash"]):
        return "prev_hash is 64 hex characters"
    if not isinstance(event["context"], dict) or not isinstance(event["payload"], dict):
        return "context and payload are objects"
    for key in OPTIONAL:
        if event.get(key) is not None and not isinstance(event[key], str):
            return f"{key} is a string or null"
    if event.get("request_digest") is not None and not HEX64.match(event["request_digest"]):
        return "request_digest is 64 hex characters or null"
    for key in ("device_fp", "ip_fp"):
        if key in event["context"]:
            if event["v"] < 9:
                return f"context.{key} is a field of schema version 9 on"
            if not isinstance(event["context"][key], str) or not HEX64.match(event["context"][key]):
                return f"context.{key} is 64 hex characters"
    return None


def _inv(x):
    return pow(x, P - 2, P)


def _recover_x(y, sign):
    xx = (y * y - 1) * _inv(D * y * y + 1) % P
    x = pow(xx, (P + 3) // 8, P)
    if (x * x - xx) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - xx) % P != 0:
        return None
    if x == 0 and sign:
        return None
    if x % 2 != sign:
        x = P - x
    return x


def _add(a, b):
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * _inv(1 + t) % P, (y1 * y2 + x1 * x2) * _inv(1 - t) % P)


def _mul(point, e):
    result = (0, 1)
    while e:
        if e & 1:
            result = _add(result, point)
        point = _add(point, point)
        e >>= 1
    return result


_BY = 4 * _inv(5) % P
_B = (_recover_x(_BY, 0), _BY)


def _decode_point(s):
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    x = _recover_x(y, sign)
    return None if x is None else (x, y)


def ed25519_verify(public_key, message, signature):
    if len(signature) != 64:
        return False
    a = _decode_point(public_key)
    r = _decode_point(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little") % L
    return _mul(_B, s) == _add(r, _mul(a, h))


# ---- the log ----
GENESIS = "0" * 64


# In a cluster, the shard whose log is being read (printed before the line of a failure).
SHARD = None


def fail(line, seq, reason):
    where = f"{SHARD} " if SHARD else ""
    print(f"FAIL {where}{line} {seq} {reason}")
    sys.exit(3)


def checkpoint_verifies(cp, key_hex):
    """A checkpoint's signature, by the key it names, which must be `key_hex`."""
    if cp["public_key"].lower() != key_hex.lower():
        return False
    message = f"bindledger-checkpoint:v1:{cp['seq']}:{cp['head']}:{cp['time']}".encode("ascii")
    return ed25519_verify(bytes.fromhex(key_hex), message, bytes.fromhex(cp["signature"]))


def read_checkpoints(path, public_key):
    """Signed heads by seq; exits 3 at the first checkpoint that does not verify."""
    heads = {}
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    key = bytes.fromhex(public_key)
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue  # blank lines in a checkpoints file are skipped
        try:
            cp = json.loads(raw.decode("utf-8"), object_pairs_hook=no_repeated_keys, parse_constant=no_constants)
            cp["seq"], cp["head"], cp["time"], cp["public_key"], cp["signature"]
        except (ValueError, KeyError, TypeError, RepeatedKey, NotANumber):
            print(f"error: {path}: line {n}: not a checkpoint", file=sys.stderr)
            sys.exit(1)
        if cp["public_key"].lower() != public_key.lower():
            fail(0, cp["seq"], f"checkpoint line {n} is signed with another key")
        message = f"bindledger-checkpoint:v1:{cp['seq']}:{cp['head']}:{cp['time']}".encode("ascii")
        if not ed25519_verify(key, message, bytes.fromhex(cp["signature"])):
            fail(0, cp["seq"], f"checkpoint line {n}: the signature does not verify")
        heads[cp["seq"]] = cp["head"]
    return heads


def verify_log(path, heads, seq, prev, trusted, owner=None):
    """Verifies one log from (seq, prev); returns its last (seq, hash). With `owner` (a cluster),
    every event's account must belong to the shard being read."""
    accounts = {}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if data and not data.endswith(b"\n"):
        data += b"\n"  # a last line without its newline is still a line
    lines = data.split(b"\n")[:-1]
    if not lines:
        fail(1, seq + 1, "the source holds no event")
    for n, line in enumerate(lines, 1):
        expected = seq + 1
        if not line:
            fail(n, expected, "a blank line")
        if line.endswith(b"\r"):
            fail(n, expected, "a line ending in \\r\\n")
        if line.startswith(b"\xef\xbb\xbf"):
            fail(n, expected, "a byte order mark before the event")
        try:
            text = line.decode("utf-8")  # strictly: json.loads would guess UTF-16 or drop a BOM
            event = json.loads(text, object_pairs_hook=no_repeated_keys, parse_constant=no_constants)
        except RepeatedKey:
            fail(n, expected, "a key appears twice in one object")
        except NotANumber:
            fail(n, expected, "NaN or Infinity, which JSON does not have")
        except ValueError:
            fail(n, expected, "not UTF-8 JSON")
        problem = envelope_problem(event)
        if problem:
            fail(n, expected, problem)
        if event.get("seq") != expected:
            fail(n, expected, f"seq {event.get('seq')} where {expected} was expected")
        if event["prev_hash"].lower() != prev:
            fail(n, expected, "prev_hash is not the hash of the line before")
        account, account_seq = event.get("account"), event.get("account_seq")
        if account in accounts:
            if account_seq != accounts[account] + 1:
                fail(n, expected, f"account_seq {account_seq} where {accounts[account] + 1} was expected")
        elif not trusted and account_seq != 1:
            fail(n, expected, f"account_seq {account_seq} for the account's first event")
        accounts[account] = account_seq
        if owner is not None and owner(account) != SHARD:
            fail(n, expected, "an account the shard map gives another shard")
        digest = hashlib.sha256(line).hexdigest()
        if expected in heads and heads[expected] != digest:
            fail(n, expected, "the event does not hash to its signed checkpoint's head")
        seq, prev = expected, digest
    if heads and max(heads) > seq:
        fail(len(lines) + 1, max(heads), f"the log ends at event {seq}, before a signed checkpoint")
    return seq, prev


def murmur2(data):
    """Kafka's murmur2 (seed 0x9747b28c), as the ledger takes an account's slot from it."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    h = (0x9747B28C ^ len(data)) & mask
    n = len(data) // 4 * 4
    for i in range(0, n, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    rest = data[n:]
    if len(rest) >= 3:
        h ^= rest[2] << 16
    if len(rest) >= 2:
        h ^= rest[1] << 8
    if rest:
        h ^= rest[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def read_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"), object_pairs_hook=no_repeated_keys, parse_constant=no_constants)
    except (OSError, ValueError, RepeatedKey, NotANumber) as e:
        print(f"error: {path}: {e}", file=sys.stderr)
        sys.exit(1)


def verify_cluster(root, cluster_key):
    """A cluster export: every shard's log, each event on its shard, held to the heads the
    cluster checkpoints sign (checked with `cluster_key`; without it they are only counted)."""
    global SHARD
    import os
    shard_map = read_json(os.path.join(root, "map.json"))
    owners = [None] * shard_map["slots"]
    for r in shard_map["ranges"]:
        for slot in range(r["from"], r["to"] + 1):
            owners[slot] = r["shard"]
    if shard_map["slots"] != 1024 or None in owners:
        print("error: map.json does not give every one of the 1024 slots a shard", file=sys.stderr)
        sys.exit(1)

    def owner(account):
        return owners[(murmur2(account.encode("utf-8")) & 0x7FFFFFFF) % 1024]

    heads = {shard: {} for shard in shard_map["shards"]}
    path = os.path.join(root, "cluster-checkpoints.ndjson")
    with open(path, "rb") as f:
        lines = [line for line in f.read().split(b"\n") if line.strip()]
    for n, raw in enumerate(lines, 1):
        cp = json.loads(raw.decode("utf-8"), object_pairs_hook=no_repeated_keys, parse_constant=no_constants)
        if cluster_key is None:
            continue
        if cp["public_key"].lower() != cluster_key.lower():
            fail(0, 0, f"cluster checkpoint line {n} is signed with another key")
        message = f"bindledger-cluster-checkpoint:v1:{cp['map_version']}:{cp['time']}"
        for shard in sorted(cp["shards"]):
            c = cp["shards"][shard]
            message += f":{shard}={c['seq']},{c['head']},{c['public_key']}"
        if not ed25519_verify(bytes.fromhex(cluster_key), message.encode("ascii"), bytes.fromhex(cp["signature"])):
            fail(0, 0, f"cluster checkpoint line {n}: the signature does not verify")
        for shard, c in sorted(cp["shards"].items()):
            if not checkpoint_verifies(c, c["public_key"]):
                fail(0, c["seq"], f"cluster checkpoint line {n}: shard {shard}'s checkpoint does not verify")
            if shard not in heads:
                fail(0, c["seq"], f"cluster checkpoint line {n} names shard {shard}, which the map no longer holds")
            if heads[shard].get(c["seq"], c["head"]).lower() != c["head"].lower():
                SHARD = shard
                fail(0, c["seq"], "two signed checkpoints name different hashes for this event")
            heads[shard][c["seq"]] = c["head"].lower()
    for shard in sorted(shard_map["shards"]):
        SHARD = shard
        seq, prev = verify_log(os.path.join(root, f"{shard}.events.ndjson"), heads[shard], 0, GENESIS, False, owner)
        print(f"ok {shard} {seq} {prev}")
    SHARD = None
    print(f"ok cluster {len(shard_map['shards'])}")
    return 0


def main(argv):
    args = argv[1:]
    opts = {}
    positional = []
    while args:
        a = args.pop(0)
        if a in ("--checkpoints", "--public-key", "--trusted-head", "--cluster", "--cluster-key"):
            if not args:
                print(f"usage: {a} needs a value", file=sys.stderr)
                return 2
            opts[a] = args.pop(0)
        else:
            positional.append(a)
    if "--cluster" in opts:
        if positional or len(opts) > 2 or (len(opts) == 2 and "--cluster-key" not in opts):
            print(__doc__, file=sys.stderr)
            return 2
        return verify_cluster(opts["--cluster"], opts.get("--cluster-key"))
    if len(positional) != 1 or (("--checkpoints" in opts) != ("--public-key" in opts)) or "--cluster-key" in opts:
        print(__doc__, file=sys.stderr)
        return 2
    heads = read_checkpoints(opts["--checkpoints"], opts["--public-key"]) if "--checkpoints" in opts else {}
    seq, prev = 0, GENESIS
    if "--trusted-head" in opts:
        s, h = opts["--trusted-head"].split(":")
        seq, prev = int(s), h.lower()
    seq, prev = verify_log(positional[0], heads, seq, prev, "--trusted-head" in opts)
    print(f"ok {seq} {prev}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
