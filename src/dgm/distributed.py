"""Several processes (machines) running one set of chains: ``jax.distributed``, set up for you.

Every process runs the same program. :func:`initialize` connects it to the others before
JAX touches a device; from then on ``jax.devices()`` lists the devices of every process,
the chain mesh (:mod:`dgm.inference.mesh`) spans them all, each process runs the chains on
its own devices, and the draws are gathered to every process (so ``dgm.condition(...)
.sample`` returns the same ``InferenceData`` everywhere). Write outputs from process 0 only
(:func:`is_main_process`; the CLI does).

On CPU the processes exchange data through gloo collectives, which :func:`initialize`
selects. The coordination service is unauthenticated: it binds to the coordinator
address given (a private interface), not to every interface.

Command line: ``dgm run NAME --coordinator HOST:PORT --num-processes N --process-id I``
on each machine, or ``dgm run NAME --distributed`` under Slurm (and the other cluster
environments JAX detects), which reads the process count, id and coordinator from the
environment.
"""

import re
import socket
import time
from typing import Any

__all__ = ["initialize", "is_main_process", "process_count"]

_STATE = {"process_id": 0}  # this process's index once initialized


# A host name or IPv4 address, or an IPv6 address in brackets; a port of ASCII digits.
_ADDRESS = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Za-z:.%]+\]):([0-9]{1,5})")


def _check_address(address: Any) -> str:
    # Anything else (a scheme, a second colon, a space) reaches gRPC, which crashes
    # process 0 (a segmentation fault, no Python exception) when it cannot bind it.
    match = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if match is None or not 0 < int(match.group(1)) < 65536:
        raise ValueError(
            "`coordinator_address` must be 'HOST:PORT' (a host name or IPv4 address, or an "
            f"IPv6 address in brackets, and a port in [1, 65535]); got {address!r}"
        )
    return address


def _check_ids(num_processes: Any, process_id: Any) -> tuple[int, int]:
    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    if not (is_int(num_processes) and num_processes >= 1):
        raise ValueError(f"`num_processes` must be a positive int; got {num_processes!r}")
    if not (is_int(process_id) and 0 <= process_id < num_processes):
        raise ValueError(
            f"`process_id` must be an int in [0, num_processes) = [0, {num_processes}); "
            f"got {process_id!r}"
        )
    return num_processes, process_id


def initialize(
    coordinator_address: Any = None,
    num_processes: Any = None,
    process_id: Any = None,
    *,
    timeout_s: Any = 120,
) -> None:
    """Join the processes of one run; call before JAX runs anything.

    With no arguments, JAX reads them from the cluster's environment (Slurm,
    Open MPI, Kubernetes, Cloud TPU). With one process (``num_processes=1``) nothing is
    set up.

    Args:
        coordinator_address: ``"HOST:PORT"`` of process 0, reachable from every process.
        num_processes: how many processes take part.
        process_id: this process's index, in ``[0, num_processes)``.
        timeout_s: how long to wait for the coordinator and the other processes.

    Raises:
        ValueError: a malformed address, a non-positive count, a process id outside
            ``[0, num_processes)``, or only some of the three arguments.
        RuntimeError: the coordinator or the other processes did not answer within
            ``timeout_s``, or JAX already initialized its devices.

    Example:
        >>> import dgm.distributed  # on each of two machines, process_id 0 and 1
        >>> dgm.distributed.initialize("10.0.0.1:8476", 2, 0)  # doctest: +SKIP
    """
    given = [x is not None for x in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError(
            "give all of `coordinator_address`, `num_processes` and `process_id`, or none "
            "(to read them from the cluster environment)"
        )
    ok = isinstance(timeout_s, int | float) and not isinstance(timeout_s, bool)
    if not (ok and timeout_s > 0):
        raise ValueError(f"`timeout_s` must be a positive number; got {timeout_s!r}")
    if all(given):
        _check_address(coordinator_address)
        num_processes, process_id = _check_ids(num_processes, process_id)
        if num_processes == 1:
            return
    if all(given) and process_id != 0:
        timeout_s = max(1.0, wait_for_coordinator(coordinator_address, timeout_s))
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if all(given):
        kwargs = dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            coordinator_bind_address=coordinator_address,
        )
    try:
        jax.distributed.initialize(initialization_timeout=max(1, int(timeout_s)), **kwargs)
    except Exception as err:  # XLA reports timeouts and refusals as assorted runtime errors
        reason = " ".join(str(err).split())[:300]
        if not all(given):
            raise RuntimeError(
                "could not join a run described by the cluster environment (Slurm, Open "
                f"MPI, Kubernetes, Cloud TPU): {reason}; outside such a cluster pass "
                "`coordinator_address`, `num_processes` and `process_id`"
            ) from err
        raise RuntimeError(
            f"process {process_id} of {num_processes} could not join the run through the "
            f"coordinator at {coordinator_address} within {timeout_s} s: {reason}"
        ) from err
    _STATE["process_id"] = jax.process_index()


def is_main_process() -> bool:
    """Whether this is process 0 (the one that writes outputs); True without
    :func:`initialize`. Touches no device."""
    return _STATE["process_id"] == 0


def process_count() -> int:
    """How many processes take part (1 without :func:`initialize`)."""
    import jax

    return jax.process_count()


def wait_for_coordinator(address: str, timeout_s: float) -> float:
    """Wait until something listens at ``address`` (``HOST:PORT``); return the seconds left.

    JAX's own client aborts the whole process (no Python exception) when the coordinator
    does not answer in time, so processes other than 0 look for it first.

    Raises:
        RuntimeError: nothing answered within ``timeout_s``.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(
                f"no coordinator answered at {address} within {timeout_s} s ({last}); start "
                "process 0 there, or check `coordinator_address` and the firewall"
            )
        try:
            with socket.create_connection((host, int(port)), timeout=min(2.0, left)):
                return deadline - time.monotonic()
        except OSError as err:
            last = f"{type(err).__name__}: {err}"
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
