"""Pieces shared by the DMM experiments: model config, loss, training, evaluation, checkpoints."""

import dataclasses
import functools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from dgm import runs, training
from dgm.config import check_choice, check_nonnegative, check_positive
from dgm.data.polyphonic import SequenceSet
from dgm.models import dmm
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
        ``nll_is`` = −Σ_i log p̂(x_i) / Σ_i T_i (only when ``is_samples > 0``).
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
            chunk = min(chunk_size, is_samples)
            log_p.append(np.asarray(_is_batch(model, x, mask, k_is, is_samples, chunk))[valid])
    nelbo_all, t_all = np.concatenate(nelbo).astype(np.float64), np.concatenate(lengths)
    out = {
        "bound_frame": float(nelbo_all.sum() / t_all.sum()),
        "bound_seq": float(np.mean(nelbo_all / t_all)),
    }
    if log_p:
        out["nll_is"] = float(-np.concatenate(log_p).astype(np.float64).sum() / t_all.sum())
    return out


def fingerprint(config, added: tuple[str, ...] = ()) -> str:
    """A stable text form of a config, stored in checkpoints to refuse foreign ones.

    ``added`` names fields (dotted for nested ones) introduced after runs were started:
    at their default values they are left out, so those runs' checkpoints still resume.
    """
    data, default = runs._to_jsonable(config), type(config)()
    for name in added:
        *parents, leaf = name.split(".")
        value, ref, node = config, default, data
        for part in parents:
            value, ref, node = getattr(value, part), getattr(ref, part), node[part]
        if getattr(value, leaf) == getattr(ref, leaf):
            node.pop(leaf)
    return json.dumps(data, sort_keys=True)


def save_model(ctx: runs.RunContext, name: str, model) -> None:
    """Equinox-serialise ``model`` to ``<run>/<name>`` atomically."""
    ctx.save_with(name, lambda p: eqx.tree_serialise_leaves(p, model))


@functools.cache
def _trainer(loss_fn, learning_rate, b1, b2, clip_norm) -> training.Trainer:
    config = training.TrainConfig(learning_rate=learning_rate, b1=b1, b2=b2, clip_norm=clip_norm)
    return training.Trainer.from_config(loss_fn, config)


def trainer(loss_fn, config: training.TrainConfig) -> training.Trainer:
    """One :class:`~dgm.training.Trainer` per (loss, optimizer settings) in this process,
    so repeated runs (tests, sweeps) reuse the compiled step."""
    c = config
    return _trainer(loss_fn, c.learning_rate, c.b1, c.b2, c.clip_norm)


def fit_outputs(ctx: runs.RunContext, name: str = "train") -> dict:
    """:func:`~dgm.training.fit`'s output arguments for a run directory.

    ``checkpoints/<name>.eqx``, ``--resume`` and ``--no-progress`` from ``ctx``, and the
    loggers: ``<name>_metrics.jsonl``, TensorBoard event files under ``tensorboard/`` (when
    tensorboardX is installed) and the loss curve ``<name>_loss.png``.
    """
    return {
        "checkpoint": ctx.out / "checkpoints" / f"{name}.eqx",
        "resume": ctx.resume,
        "progress": ctx.progress,
        "loggers": [
            training.JsonLinesLogger(ctx.path(f"{name}_metrics.jsonl")),
            training.TensorBoardLogger(ctx.path("tensorboard"), name),
            training.HistoryPlot(ctx.path(f"{name}_loss.png")),
        ],
    }


def fit(model, loss_fn, loader, config: training.TrainConfig, *, key, ctx, eval_fn, fingerprint):
    """Train a DMM: the KL anneal of ``config``, its L2 weight, outputs in ``ctx``'s directory."""
    return training.fit(
        model,
        trainer(loss_fn, config),
        loader,
        config,
        key=key,
        eval_fn=eval_fn,
        fingerprint=fingerprint,
        schedules=training.kl_schedule(config),
        constants={"l2": config.l2},
        **fit_outputs(ctx),
    )
