"""DRAW on fixed binarized MNIST (Gregor et al. 2015): train, score, draw the animations.

Presets (spec ``draw.md`` §6): ``paper`` (T 64, LSTM 256, z 100, read 2×2, write 5×5),
``paper-noattn`` (same sizes, no attention), ``small`` (the reference code's T 10, z 10, 5×5
read and write, 10k updates, on binarized pixels), ``quick`` (a small model in about two
minutes) and ``smoke``. ``--read-attn false`` / ``--write-attn false`` switch attention off
as the reference code's flags do; ``--read-n``, ``--write-n``, ``--grid`` and ``--clip`` set
the glimpse sizes, the filterbank convention and the clipping.

Training: Adam with the reference code's options (β1 = 0.5, each gradient clipped to norm 5
per variable; ``--clip global`` clips the global norm) on the 50k training images, each
batch split over the host's devices (one per core; ``--split-batch false``: one program);
the validation bound on the 10k validation images every ``eval_every`` epochs picks the
model. A NaN loss stops training, naming the epoch and update; the last checkpoint (the
previous epoch's, or a later one with ``train.checkpoint_every``) is kept. Scores: the
single-sample bound L^x + L^z on the test images (the paper's number, nats per image) with
its two parts, and the importance-sampled log-likelihood (S samples from q). Pictures:
canvas-sequence GIFs of prior samples and of test reconstructions, with and without the
attention windows; the loss curve.
"""

import dataclasses
import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from dgm import runs, training
from dgm.config import check_choice, check_positive
from dgm.data.mnist import SPLIT_SIZES, binarized_splits, evenly_spaced
from dgm.experiments import _draw_eval, _training
from dgm.models import draw, draw_io
from dgm.nn import attention
from dgm.training.nan_guard import NaNGuardTrainer, update_index

NAME = "draw-mnist"
DESCRIPTION = "DRAW (recurrent VAE with read/write attention) on fixed binarized MNIST"
TRAINS = True  # a training run: `dgm run --time-limit` applies
EXTRA_ARGS = {
    "read-attn": "read_attn",
    "write-attn": "write_attn",
    "read-n": "read_n",
    "write-n": "write_n",
    "grid": "grid",
    "clip": "clip",
    "matmul-dtype": "matmul_dtype",
    "split-batch": "split_batch",
}
CLIPS = ("per-variable", "global")
MATMUL_DTYPES = draw.MATMUL_DTYPES
# Fields added after runs were started: left out of checkpoint fingerprints at defaults.
_ADDED_FIELDS = ("matmul_dtype", "split_batch")


@dataclasses.dataclass(frozen=True)
class Config:
    """Defaults: the paper's MNIST model (Table 3), the reference code's optimiser."""

    num_steps: int = 64
    z_size: int = 100
    enc_size: int = 256
    dec_size: int = 256
    read_attn: bool = True
    write_attn: bool = True
    read_n: int = 2
    write_n: int = 5
    grid: str = "paper"
    clip: str = "per-variable"  # the reference's clip_by_norm of each gradient, or "global"
    # the LSTM products' operands in training ("bfloat16": float32 accumulation, for CPUs
    # with bfloat16 matrix units); scoring is always float32
    matmul_dtype: str = "float32"
    # each update's batch split over the local devices (one per core), each slice's loss
    # and gradient on its own device, averaged (``Trainer(split_batch=True)``): the same
    # update with other noise draws; on two cores the bfloat16 paper step 24 % and the quick
    # preset 30 % faster, float32 paper steps unchanged; runs started before the field
    # existed resume with it on
    split_batch: bool = True
    train: training.TrainConfig = training.TrainConfig(
        num_epochs=300, batch_size=100, learning_rate=1e-3, b1=0.5, clip_norm=5.0, l2=0.0,
        anneal_steps=0, eval_every=1, patience=0,
    )  # fmt: skip
    num_train: int = 50_000
    num_valid: int = 10_000
    num_test: int = 10_000
    test_samples: int = 100  # S of the importance-sampled log-likelihood
    is_images: int = 10_000  # test images it is computed on (evenly spaced over the set)
    track_test: bool = True  # also score the test bound at each validation (test_curve.png)
    eval_batch_size: int = 500
    num_images: int = 64  # images per GIF

    def __post_init__(self) -> None:
        for name in ("num_steps", "z_size", "enc_size", "dec_size", "test_samples",
                     "is_images", "eval_batch_size", "num_images"):  # fmt: skip
            check_positive(name, getattr(self, name), integer=True)
        for name in ("read_n", "write_n"):
            attention.check_glimpse(name, getattr(self, name), 28, 28)
        check_choice("grid", self.grid, attention.GRIDS)
        check_choice("clip", self.clip, CLIPS)
        check_choice("matmul_dtype", self.matmul_dtype, MATMUL_DTYPES)
        for name, split in (("num_train", "train"), ("num_valid", "valid"), ("num_test", "test")):
            check_positive(name, getattr(self, name), integer=True)
            if getattr(self, name) > SPLIT_SIZES[split]:
                raise ValueError(
                    f"`{name}` must be at most {SPLIT_SIZES[split]}; got {getattr(self, name)}"
                )
        if self.num_train < self.train.batch_size:
            raise ValueError("`num_train` must be at least `train.batch_size`")


def _train(**kw) -> training.TrainConfig:
    return dataclasses.replace(Config().train, **kw)


PRESETS = {
    "smoke": Config(num_steps=4, z_size=4, enc_size=16, dec_size=16, read_n=2, write_n=3,
                    train=_train(num_epochs=2), num_train=500, num_valid=200, num_test=100,
                    test_samples=10, is_images=20, eval_batch_size=100, num_images=4),
    # A small model that draws recognisable digits in about two minutes.
    "quick": Config(num_steps=10, z_size=10, enc_size=128, dec_size=128, read_n=2, write_n=5,
                    train=_train(num_epochs=3), test_samples=100, is_images=200,
                    track_test=False),
    # The reference code's configuration: 10k updates of 100 images = 20 epochs.
    "small": Config(num_steps=10, z_size=10, read_n=5, write_n=5, train=_train(num_epochs=20),
                    is_images=1000, track_test=False),
    "paper": Config(),
    "paper-noattn": Config(read_attn=False, write_attn=False),
}  # fmt: skip


def build_model(config: Config, key) -> draw.DRAW:
    read_n = config.read_n if config.read_attn else None
    write_n = config.write_n if config.write_attn else None
    return draw.DRAW((28, 28), config.num_steps, config.z_size, config.enc_size,
                     config.dec_size, read_n, write_n, config.grid, key=key)  # fmt: skip


def loss(model: draw.DRAW, batch, key, matmul_dtype: str = "float32"):
    """Mean L^x + L^z over the batch; aux: the two parts."""
    x, _ = batch
    recon, kl, _ = draw.neg_elbo_parts(model, x, key, matmul_dtype=matmul_dtype)
    return jnp.mean(recon + kl), {"recon": jnp.mean(recon), "kl": jnp.mean(kl)}


def clip_per_variable(max_norm: float) -> optax.GradientTransformation:
    """Scale each gradient array to norm at most ``max_norm`` (TF ``clip_by_norm`` per
    variable, as the reference code does). The reference's μ and log σ are two layers; a
    :class:`~dgm.models.draw.DRAW` holds them as one (``posterior``, μ's rows first), so
    each half of its weight and bias is clipped alone."""

    def one(g):
        norm = jnp.sqrt(jnp.sum(g**2))
        return g * (max_norm / jnp.maximum(norm, max_norm))

    def halves(g):
        return jnp.concatenate([one(h) for h in jnp.split(g, 2)])

    def clip(updates, params=None):
        clipped = jax.tree.map(one, updates)
        if isinstance(updates, draw.DRAW):
            post = updates.posterior
            where = lambda m: (m.posterior.weight, m.posterior.bias)  # noqa: E731
            clipped = eqx.tree_at(where, clipped, (halves(post.weight), halves(post.bias)))
        return clipped

    return optax.stateless(clip)


@functools.cache
def _trainer(
    lr, b1, b2, clip_norm, clip, num_batches, matmul_dtype="float32", split_batch=False
) -> NaNGuardTrainer:
    adam = optax.adam(lr, b1=b1, b2=b2, eps=1e-8)
    if clip_norm > 0:
        clipper = clip_per_variable if clip == "per-variable" else optax.clip_by_global_norm
        adam = optax.chain(clipper(clip_norm), adam)
    return NaNGuardTrainer(
        functools.partial(loss, matmul_dtype=matmul_dtype), adam, num_batches,
        split_batch=split_batch,
    )  # fmt: skip


def _eval_fn(config: Config, valid, test):
    """The validation bound; with ``track_test``, the test bound and its two parts too (in
    each epoch's record: ``train_metrics.jsonl`` holds the test curve)."""
    batch = config.eval_batch_size

    def fn(model, key):
        k_valid, k_test = jax.random.split(key)
        scores = {"valid": sum(_draw_eval.bound_parts(model, valid, k_valid, batch))}
        if config.track_test:
            recon, kl = _draw_eval.bound_parts(model, test, k_test, batch)
            scores.update(test=recon + kl, test_recon=recon, test_kl=kl)
        return scores

    return fn


def run(config: Config, key, ctx: runs.RunContext) -> dict:
    """Train, keep the best-by-validation model, score it on the test set, save it, draw."""
    start = time.perf_counter()
    k_model, k_train, k_bound, k_is, k_pics = jax.random.split(key, 5)
    train, valid, test = binarized_splits(config.num_train, config.num_valid, config.num_test)
    model = build_model(config, k_model)
    cfg = config.train
    loader = training.ArrayLoader(train, cfg.batch_size)
    trainer = _trainer(cfg.learning_rate, cfg.b1, cfg.b2, cfg.clip_norm, config.clip,
                       loader.num_batches, config.matmul_dtype, config.split_batch)  # fmt: skip
    result = training.fit(
        model, trainer, loader, cfg, key=k_train,
        eval_fn=_eval_fn(config, valid, test),
        fingerprint=_training.fingerprint(config, _ADDED_FIELDS),
        schedules={"update_index": update_index},
        **_training.fit_outputs(ctx),
    )  # fmt: skip
    best = result.best_model
    recon, kl = _draw_eval.bound_parts(best, test, k_bound, config.eval_batch_size)
    # Evenly spaced: the test set is ordered (its first 1000 images scored 173 nats, the
    # next 1000 69, under one quick-preset model), so a prefix is not a fair subset.
    is_x = evenly_spaced(test, config.is_images)
    nll = _draw_eval.is_nll(best, is_x, k_is, config.test_samples, config.eval_batch_size)
    draw_io.save(ctx.path(draw_io.decoders.MODEL_FILE), best, dataset="binarized_mnist",
                 epochs=result.epochs)  # fmt: skip
    metrics = {
        "test_bound": recon + kl,
        "test_recon": recon,
        "test_kl": kl,
        "test_nll_is": nll,
        "is_samples": config.test_samples,
        "is_images": len(is_x),
        "num_test": len(test),
        "valid_bound": result.best_valid,
        "epochs": result.epochs,
        **_training.run_length(result),
        "best_epoch": result.best_epoch,
        "s_per_epoch": result.s_per_epoch,
        "wall_s": time.perf_counter() - start,
    }
    _draw_eval.pictures(ctx.out, best, evenly_spaced(test, config.num_images), k_pics)
    _draw_eval.plot_test_curve(ctx, result.history, config)
    runs.write_text(ctx.path("report.md"), _draw_eval.report(config, metrics))
    return metrics


def summary(m: dict) -> str:
    return (
        f"draw-mnist: test bound {m['test_bound']:.2f} nats (L^x {m['test_recon']:.2f} + "
        f"L^z {m['test_kl']:.2f}; {m['num_test']} images), IS-NLL {m['test_nll_is']:.2f} "
        f"(S = {m['is_samples']}, {m['is_images']} images); {m['epochs']} epochs, "
        f"{m['s_per_epoch']:.1f} s/epoch"
    )
