"""What a LocalCluster's master and workers pass through their TCPStore, sealed with the
cluster's secret, so that no one else can make a worker (or the master) run code.

The store listens on 127.0.0.1 without authentication: any local process, of any user,
can join it and post keys.  Commands and replies are pickles, and unpickling runs code.
So every value is ``tag + payload``, the tag an HMAC-SHA256 of the key's name and the
payload under a secret of 32 random bytes the master draws per cluster and hands to each
worker through an inherited pipe (its stdin: never argv, the environment or a file).  A
value whose tag does not check is dropped, and logged, before anything is unpickled: the
name in the tag keeps a sealed command from being replayed under another rank's or step's
key.  A forger can still delete or overwrite keys (the store has no access control): that
stops a run (a step times out, the cluster heals or fails), it never runs their code.

The torchrun path trusts its network, as torch.distributed itself does.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import secrets

SECRET_BYTES = 32
_TAG_BYTES = hashlib.sha256().digest_size


class Forged(Exception):
    """A value in the store that the cluster's secret did not seal."""


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def _tag(secret: bytes, key: str, payload: bytes) -> bytes:
    return hmac.new(secret, key.encode() + b"\0" + payload, hashlib.sha256).digest()


def seal(secret: bytes, key: str, obj: object) -> bytes:
    """``obj`` pickled, behind the tag that binds it to ``key`` under ``secret``."""
    payload = pickle.dumps(obj)
    return _tag(secret, key, payload) + payload


def unseal(secret: bytes, key: str, data: bytes) -> object:
    """The object ``seal(secret, key, obj)`` made; Forged (nothing unpickled) for anything else."""
    tag, payload = data[:_TAG_BYTES], data[_TAG_BYTES:]
    if len(data) < _TAG_BYTES or not hmac.compare_digest(tag, _tag(secret, key, payload)):
        raise Forged(f"the value under {key!r}: it failed authentication")
    return pickle.loads(payload)


def read_secret(fd: int) -> bytes:
    """The secret a worker's master wrote into ``fd`` (the pipe on its stdin), read whole;
    the fd is then closed and /dev/null takes its place."""
    data = b""
    while len(data) < SECRET_BYTES:
        chunk = os.read(fd, SECRET_BYTES - len(data))
        if not chunk:
            raise RuntimeError("haloconv worker: no secret on stdin (workers are started by LocalCluster)")
        data += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, fd)
    os.close(null)
    return data
