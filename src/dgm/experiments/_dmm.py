"""Pieces shared by the DMM experiments: model config, losses, evaluation.

Training, fingerprints and model files: :mod:`dgm.experiments._training`.
"""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from dgm import training
from dgm.config import check_choice, check_nonnegative, check_positive
from dgm.data.polyphonic import SequenceSet
from dgm.models import dmm, dmm_io
from dgm.nn.rnn import CELLS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """DMM sizes and choices (defaults: the paper's appendix, ST-R = DKS with an LSTM)."""

    z_dim: int = 100
    transition_dim: int = 200
    emission_dim: int = 100
    emission_layers: int = 2
    rnn_dim: int = 600
    inference: str = "st-r"
    cell: str = "lstm"
    transition: str = "gated"
    num_iafs: int = 0
    iaf_dim: int = 100
    input_embedding: bool = True  # False: the RNN reads x directly (Pyro's guide)

    def __post_init__(self) -> None:
        check_choice("model.inference", self.inference, dmm.INFERENCE_NETWORKS)
        check_choice("model.cell", self.cell, CELLS)
        check_choice("model.transition", self.transition, dmm.TRANSITIONS)
        for name in ("z_dim", "transition_dim", "emission_dim", "rnn_dim", "iaf_dim"):
            check_positive(f"model.{name}", getattr(self, name), integer=True)
        for name in ("emission_layers", "num_iafs"):
            check_nonnegative(f"model.{name}", getattr(self, name), integer=True)


def build_model(config: ModelConfig, obs_dim: int, likelihood: str, key) -> dmm.DMM:
    """A :class:`~dgm.models.dmm.DMM` from a :class:`ModelConfig`."""
    return dmm.DMM(obs_dim, likelihood=likelihood, key=key, **dataclasses.asdict(config))


def save_model(ctx, model: dmm.DMM, config: ModelConfig, **extra) -> None:
    """``RUN/model.eqx``: the model with a header :func:`dgm.models.dmm_io.load_run` reads
    (``extra``: more header fields, such as the experiment and dataset)."""
    dmm_io.save(ctx.path("model.eqx"), model, dataclasses.asdict(config), **extra)


def dmm_loss(model: dmm.DMM, batch, key):
    """(Σ_i −ELBO_i(β) + l2·Σθ²) / batch size; aux: the β-weighted loss per frame."""
    (x, mask), hyper = batch
    keys = jax.random.split(key, x.shape[0])
    losses = dmm.batch_neg_elbo(model, x, mask, keys, hyper["kl_weight"])
    total = jnp.sum(losses) + hyper["l2"] * training.l2_penalty(model)
    frames = jnp.maximum(jnp.sum(mask), 1.0)
    return total / x.shape[0], {"loss_per_frame": jnp.sum(losses) / frames}


def frozen_generative_loss(model: dmm.DMM, batch, key):
    """:func:`dmm_loss` with the generative model held fixed (only q is trained)."""
    model = eqx.tree_at(
        lambda m: (m.transition, m.emission),
        model,
        replace_fn=lambda sub: jax.tree.map(jax.lax.stop_gradient, sub),
    )
    return dmm_loss(model, batch, key)


@eqx.filter_jit
def _bound_batch(model, x, mask, key, num_samples: int):
    keys = jax.random.split(key, num_samples * x.shape[0]).reshape(num_samples, x.shape[0])
    per_seq = jax.vmap(dmm.neg_elbo, in_axes=(None, 0, 0, 0))
    return jnp.mean(jax.vmap(per_seq, in_axes=(None, None, None, 0))(model, x, mask, keys), 0)


_is_batch = eqx.filter_jit(dmm.importance_log_likelihood)

# Sample-path frames (chunk × batch × padded length) one IS chunk may hold: the paper
# preset's JSB batches (100 × 20 × 160), whose temporaries XLA put at 1.33 GiB.
IS_CHUNK_FRAMES = 320_000


def is_chunk(chunk_size: int, num_samples: int, frames: int) -> int:
    """The IS chunk for a batch of ``frames`` (batch × padded length) sequence frames: the
    largest divisor of ``num_samples`` that is at most ``chunk_size`` and keeps chunk ×
    frames within :data:`IS_CHUNK_FRAMES` (at least 1). Each sample draws its own key, so
    the chunk changes no number, only the memory a long batch needs."""
    cap = max(1, min(chunk_size, num_samples, IS_CHUNK_FRAMES // max(frames, 1)))
    return max(d for d in range(1, cap + 1) if num_samples % d == 0)


def evaluate(
    model: dmm.DMM,
    data: SequenceSet,
    key,
    *,
    bound_samples: int,
    is_samples: int,
    chunk_size: int,
    batch_size: int,
    bucket_width: int,
) -> dict[str, float]:
    """The paper's three numbers (β = 1): per-frame IS-NLL (a), frame bound (b), TSBN bound (c).

    Returns:
        ``bound_frame`` = Σ_i mean_s(−ELBO_i) / Σ_i T_i; ``bound_seq`` = mean_i(−ELBO_i / T_i);
        ``nll_is`` = −Σ_i log p̂(x_i) / Σ_i T_i (only when ``is_samples > 0``), from
        ``chunk_size`` samples at a time, fewer for long batches (:func:`is_chunk`).
    """
    loader = training.SequenceLoader(
        data.x, data.mask, batch_size, bucket=True, bucket_width=bucket_width
    )
    rows = np.argsort(data.lengths, kind="stable")
    rows = np.concatenate([rows, np.full(loader.num_batches * batch_size - len(rows), -1)])
    nelbo, lengths, log_p = [], [], []
    for i, row in enumerate(rows.reshape(loader.num_batches, batch_size)):
        x, mask = loader.batch(row)
        valid = row >= 0
        k_bound, k_is = jax.random.split(jax.random.fold_in(key, i))
        nelbo.append(np.asarray(_bound_batch(model, x, mask, k_bound, bound_samples))[valid])
        lengths.append(data.lengths[row[valid]])
        if is_samples > 0:
            chunk = is_chunk(chunk_size, is_samples, x.shape[0] * x.shape[1])
            log_p.append(np.asarray(_is_batch(model, x, mask, k_is, is_samples, chunk))[valid])
    nelbo_all, t_all = np.concatenate(nelbo).astype(np.float64), np.concatenate(lengths)
    out = {
        "bound_frame": float(nelbo_all.sum() / t_all.sum()),
        "bound_seq": float(np.mean(nelbo_all / t_all)),
    }
    if log_p:
        out["nll_is"] = float(-np.concatenate(log_p).astype(np.float64).sum() / t_all.sum())
    return out
