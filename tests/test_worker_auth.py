"""A held LocalCluster runs only what its master sent: another local process that joins its
TCPStore and posts a command (or a reply) gets nothing run (engines/processes/sealed.py)."""

import logging
import subprocess
import sys
import time

import pytest
import torch

import haloconv
from conftest import assert_bitwise, torch_reference
from haloconv.engines.processes import sealed

# The attacker: joins the store as a client, posts pickles whose unpickling creates a file,
# as plain pickles and behind a tag of its own (it does not know the secret).
ATTACKER = r"""
import os, pickle, sys
from datetime import timedelta
import torch.distributed as dist

port, seq, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

class Evil:
    def __reduce__(self):
        return (open, (marker, "w"))

store = dist.TCPStore("127.0.0.1", port, 2, False, timedelta(seconds=30))
evil = pickle.dumps(Evil())
store.set(f"haloconv/cmd/1/{seq}", evil)
store.set(f"haloconv/report/1/{seq}", evil)
store.set(f"haloconv/cmd/1/{seq + 1}", os.urandom(32) + evil)
store.set(f"haloconv/error/1", evil)
"""


def _conv_once(cluster):
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(1, 2, 20, 17, generator=g), torch.randn(3, 2, 3, 3, generator=g)
    y = haloconv.conv(x, w, padding=1, workers=2, partition="rows", engine=cluster, backend="torch")
    assert_bitwise(y, torch_reference(x, w, padding=1))


def test_a_process_that_joins_the_store_makes_no_one_run_its_code(tmp_path, capfd, caplog):
    marker = tmp_path / "attacker-was-here"
    caplog.set_level(logging.WARNING, logger="haloconv")
    with haloconv.LocalCluster(workers=2, timeout=30) as cluster:
        seq = cluster._seq  # the next command's number: the key the idle worker waits on
        subprocess.run([sys.executable, "-c", ATTACKER, str(cluster._store.port), str(seq), str(marker)],
                       check=True, timeout=120)
        # progress, not a sleep: the worker says it dropped the forged command it woke up to
        deadline = time.monotonic() + 60
        said = ""
        while "dropped" not in said and not marker.exists() and time.monotonic() < deadline:
            said += capfd.readouterr().err
            time.sleep(0.02)
        assert not marker.exists(), "a worker unpickled a forged command"
        assert "a worker dropped the value under 'haloconv/cmd/1/" in said
        _conv_once(cluster)  # the command after the forged one (whose key a forgery also holds)
        _conv_once(cluster)
        assert cluster.alive
    assert not marker.exists(), "a forged command or reply was unpickled"


def test_sealed_values_are_bound_to_their_key_and_secret():
    secret = sealed.new_secret()
    data = sealed.seal(secret, "haloconv/cmd/1/0", {"op": "stop"})
    assert sealed.unseal(secret, "haloconv/cmd/1/0", data) == {"op": "stop"}
    with pytest.raises(sealed.Forged):  # replayed under another rank's or step's key
        sealed.unseal(secret, "haloconv/cmd/2/0", data)
    with pytest.raises(sealed.Forged):  # another cluster's secret
        sealed.unseal(sealed.new_secret(), "haloconv/cmd/1/0", data)
    with pytest.raises(sealed.Forged):  # one bit of the payload changed
        sealed.unseal(secret, "haloconv/cmd/1/0", data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(sealed.Forged):
        sealed.unseal(secret, "haloconv/cmd/1/0", b"short")
