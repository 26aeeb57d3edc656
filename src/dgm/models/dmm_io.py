"""Saving and loading trained Deep Markov Models.

``model.eqx`` in a ``dmm-polyphonic`` or ``dmm-synthetic`` run directory holds one JSON
header line (``format``, ``kind: "dmm"``, ``obs_dim``, ``likelihood`` and the constructor's
sizes and choices), then the Equinox leaves of the best-by-validation model, as for the
image models (:mod:`dgm.models.decoders`). :func:`load_run` gives the model back, ready for
:func:`dgm.models.dmm.log_joint` (exact MCMC on a latent path), the inference network
(:func:`~dgm.models.dmm.sequence_terms`) or :func:`~dgm.models.dmm.sample_sequences`.

Example:
    >>> import jax, tempfile, os
    >>> from dgm.models import dmm, dmm_io
    >>> model = dmm.DMM(3, z_dim=2, transition_dim=4, emission_dim=4, rnn_dim=4,
    ...                 key=jax.random.key(0))
    >>> with tempfile.TemporaryDirectory() as run:
    ...     path = os.path.join(run, "model.eqx")
    ...     dmm_io.save(path, model, dict(transition_dim=4, emission_dim=4, rnn_dim=4))
    ...     print(dmm_io.load(path)[0].z_dim)
    2
"""

import os
from pathlib import Path

import jax

from dgm.models import decoders
from dgm.models.dmm import DMM

KIND = "dmm"


def save(path: str | os.PathLike, model: DMM, options: dict, **extra) -> None:
    """Write ``model`` with a header from which :func:`load` rebuilds it.

    Args:
        options: the :class:`~dgm.models.dmm.DMM` keyword arguments it was built with
            (``transition_dim``, ``inference``, ...; ``z_dim``, ``obs_dim`` and the
            likelihood are read off the model).
        extra: more header fields (what the run was, its scores).
    """
    head = {"format": decoders.FORMAT, "kind": KIND, **extra}
    likelihood = "bernoulli" if model.emission.raw_var is None else "gaussian"
    head["options"] = {**options, "z_dim": model.z_dim, "likelihood": likelihood}
    head["obs_dim"] = model.obs_dim
    decoders.write_model(path, head, model)


def load(path: str | os.PathLike) -> tuple[DMM, dict]:
    """Read a model written by :func:`save`; returns ``(model, header)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a dgm model file, a model of another kind, or a truncated or
            corrupt file.
    """
    build = lambda head: DMM(head["obs_dim"], **head["options"], key=jax.random.key(0))  # noqa: E731
    return decoders.read_model(path, KIND, build)


def load_run(run_dir: str | os.PathLike) -> tuple[DMM, dict]:
    """The best-by-validation DMM of a ``dgm run dmm-polyphonic`` / ``dmm-synthetic`` run.

    Raises:
        FileNotFoundError: no directory or no ``model.eqx`` in it.
        ValueError: the file holds another kind of model or is not a model file.
    """
    old = Path(run_dir) / "model_best.eqx"  # written without a header before 2026-12-03
    if old.is_file() and not (Path(run_dir) / decoders.MODEL_FILE).is_file():
        raise FileNotFoundError(
            f"{run_dir} holds model_best.eqx from an older dgm, which cannot be loaded on its "
            "own; `dgm run ... --resume` on the run writes model.eqx"
        )
    return load(decoders.model_path(run_dir))
