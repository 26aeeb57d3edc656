"""Chains across processes (dgm.distributed) and the public host-device setting.

Two local processes on 127.0.0.1 (one CPU device each, gloo collectives) run a small
constrained-HMC problem (``tests/_distributed_worker.py``: two chunks, so the draws are
gathered twice); their gathered draws must equal this process's single-process run (two
host devices) with the same key, bit for bit. The workers use ``ChainRunner`` directly
(what ``dgm.condition(...).sample`` runs): the front door would add an ArviZ import and
the Gauss–Newton start's compilation to each process. Bad input: each error names its
argument; an unreachable coordinator fails within its timeout.
"""

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import dgm
import dgm.distributed
from dgm import cli
from tests._distributed_worker import sphere_chains, svgd_particles

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_single_process_draws(tmp_path):
    port, out = _free_port(), tmp_path / "draws.npz"
    env = os.environ | {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    # One device per process (the worker asks for it); the suite's other XLA flags stay, so
    # the workers compile as this process does.
    flags = os.environ.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "host_platform_device_count" not in f)
    worker = str(ROOT / "tests" / "_distributed_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(port), str(i), str(out)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    draws, accepted = sphere_chains()  # while the workers run
    particles = svgd_particles()  # over this process's two host devices
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two-process run did not finish within 240 s")
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    got = np.load(out)
    assert got["draws"].shape == (4, 12, 3) and accepted.mean() > 0.5  # the chains move
    np.testing.assert_array_equal(got["draws"], draws)
    np.testing.assert_array_equal(got["accepted"], accepted)
    # SVGD particles sharded over the two processes come back whole (`result.particles`)
    np.testing.assert_allclose(got["particles"], particles, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("127.0.0.1:1234", 2, 2), r"`process_id` must be an int in \[0, num_processes\)"),
        (("127.0.0.1:1234", 2, -1), r"`process_id` must be an int in \[0, num_processes\)"),
        (("127.0.0.1:1234", 0, 0), "`num_processes` must be a positive int; got 0"),
        (("localhost", 2, 0), r"`coordinator_address` must be 'HOST:PORT' .*; got 'localhost'"),
        # process 1, not 0: the old check let these through, and process 0 then crashed
        (("http://127.0.0.1:8476", 2, 1), "got 'http://127.0.0.1:8476'"),
        (("127.0.0.1:1234:8476", 2, 1), "`coordinator_address` must be 'HOST:PORT'"),
        (("127.0.0.1 :8476", 2, 1), "`coordinator_address` must be 'HOST:PORT'"),
        (("127.0.0.1:\uff18\uff14", 2, 1), "`coordinator_address` must be 'HOST:PORT'"),
        (("127.0.0.1:0", 2, 1), r"a port in \[1, 65535\]\); got '127.0.0.1:0'"),
        (("127.0.0.1:65536", 2, 1), r"a port in \[1, 65535\]\); got '127.0.0.1:65536'"),
        (("127.0.0.1:1234", None, 0), "give all of `coordinator_address`"),
    ],
)
def test_bad_initialize_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        dgm.distributed.initialize(*args, timeout_s=0.5)


@pytest.mark.parametrize(
    "address", ["localhost:8476", "10.0.0.1:8476", "[::1]:8476", "h:1", "h:65535"]
)
def test_good_addresses_pass_the_check(address):
    assert dgm.distributed._check_address(address) == address


def test_unreachable_coordinator_fails_within_its_timeout():
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=f"no coordinator answered at 127.0.0.1:{port}"):
        dgm.distributed.initialize(f"127.0.0.1:{port}", 2, 1, timeout_s=0.5)
    assert time.monotonic() - t0 < 5.0


def test_cli_refuses_a_process_id_out_of_range(capsys):
    argv = ["run", "svgd-gmm1d", "--smoke", "--num-processes", "2", "--process-id", "2"]
    assert cli.main([*argv, "--coordinator", "127.0.0.1:1234"]) == 1
    assert "`process_id` must be an int in [0, num_processes)" in capsys.readouterr().err


def test_set_host_device_count(monkeypatch):
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "2")  # restored afterwards: the call sets it
    with pytest.raises(ValueError, match="`num_devices` must be a positive int; got 0"):
        dgm.set_host_device_count(0)
    jax.devices()  # the suite's two host devices exist by now
    dgm.set_host_device_count(2)  # the count JAX has: accepted
    with pytest.raises(RuntimeError, match=r"came too late: JAX has already initialized 2"):
        dgm.set_host_device_count(3)


def test_overwrite_tolerates_files_another_process_removed(tmp_path, monkeypatch):
    """Every process of a run prepares the shared --out before they join; with --overwrite
    each deletes the old checkpoints, so a file may be gone by the time one gets to it."""
    out = tmp_path / "r"
    for name in ("config.json", "metrics.json", "checkpoints/a.npz", "tensorboard/events"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("{}")
    real_glob = Path.glob

    def glob(self, pattern, **kwargs):
        found = list(real_glob(self, pattern, **kwargs))
        if pattern == "*":
            for p in found:  # the other process got there first
                p.unlink()
        return iter(found)

    monkeypatch.setattr(Path, "glob", glob)
    args = argparse.Namespace(out=out, name="svgd-gmm1d", seed=0, resume=False, overwrite=True)
    assert cli._prepare_out(args, "smoke", {}) == out
    assert not (out / "metrics.json").exists() and not any((out / "checkpoints").iterdir())
