"""The IAF ResNet VAE (Kingma et al. 2016) on static binarized MNIST or CIFAR-10.

Config keys are the Theano ``train.py``'s (spec ``iaf.md`` §2.11), so the original's
command line works as given::

    dgm run iaf-vae with problem=mnist n_h=64 depths=[2,2] margs.posterior=down_iaf2_nl \
        margs.kl_min=0.25

(``with KEY=VALUE ...`` is the same as ``--set KEY=VALUE ...``). Presets: ``smoke``;
``quick`` (a small MNIST model, under two minutes); ``mnist`` (the original's MNIST branch:
60k training images, valid merged into train, 10k test, padded to 32×32, n_h 64); and
``cifar10-readme`` (the README's 3.28 bits/dim command; it needs the CIFAR-10 files).

Training: Adamax without bias correction (α 0.002), Polyak averaging (0.999) of the weights,
data-dependent initialisation on the first minibatch, free bits ``margs.kl_min``. A
non-finite loss stops training naming the update; the last epoch's checkpoint is kept and
``--resume`` continues a run. Scores on the averaged weights, free bits off: the test ELBO,
the importance-sampled log-likelihood (``est_marglik`` samples per image), nats per image
(MNIST, the 784 real pixels) or bits/dim (CIFAR-10), the KL of each block; sample and
reconstruction grids and the sampling time per image.
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from dgm import runs, training
from dgm.config import check_choice, check_nonnegative, check_positive
from dgm.experiments import _iaf_vae_eval as evaluation
from dgm.experiments import _training
from dgm.models import iaf_vae, iaf_vae_io
from dgm.training.adamax import adamax_no_bias_correction
from dgm.training.nan_guard import NaNGuardTrainer, update_index

NAME = "iaf-vae"
DESCRIPTION = "ResNet VAE with IAF posteriors (six variants, free bits) on MNIST or CIFAR-10"
TRAINS = True  # a training run: `dgm run --time-limit` applies
PROBLEMS = ("mnist", "cifar10")
PRIORS = ("diag",)
# Fields added after runs were started: left out of checkpoint fingerprints at defaults.
_ADDED_FIELDS = ("curve_every", "curve_images", "split_batch")
_POSITIVE = ("n_h", "n_z", "n_batch", "num_epochs", "num_train", "num_test", "est_marglik",
             "is_images", "is_chunk", "eval_batch_size", "num_images", "curve_images")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    """The original's ``margs``: posterior variant, prior, free bits, AR depth."""

    posterior: str = "down_diag"
    prior: str = "diag"
    kl_min: float = 0.25
    depth_ar: int = 1

    def __post_init__(self) -> None:
        check_choice("margs.posterior", self.posterior, iaf_vae.POSTERIORS)
        check_choice("margs.prior", self.prior, PRIORS)
        check_nonnegative("margs.kl_min", self.kl_min)
        check_positive("margs.depth_ar", self.depth_ar, integer=True)


@dataclasses.dataclass(frozen=True)
class Config:
    """Defaults: the Theano ``train.py`` config (CIFAR-10, n_h 160, depths [2, 2]).

    ``beta1``/``beta2`` are the original's "1 − decay" forms (0.1 and 0.001); ``polyak`` is
    the weight-average decay; ``est_marglik`` the importance samples per image, computed
    ``is_chunk`` at a time on ``is_images`` test images (evenly spaced).
    """

    problem: str = "cifar10"
    n_h: int = 160
    n_z: int = 32
    n_batch: int = 16
    depths: tuple[int, ...] = (2, 2)
    margs: ModelArgs = ModelArgs()
    alpha: float = 0.002
    beta1: float = 0.1
    beta2: float = 0.001
    polyak: float = 0.999
    num_epochs: int = 1000
    num_train: int = 60_000  # MNIST: 50k train + 10k valid; CIFAR-10: 50k
    num_test: int = 10_000
    est_marglik: int = 1000
    is_images: int = 10_000
    is_chunk: int = 100
    eval_batch_size: int = 100
    num_images: int = 64
    # the test −ELBO on ``curve_images`` test images after every ``curve_every`` epochs
    # (0: never), in train_metrics.jsonl; it never picks the model (the last average is kept)
    curve_every: int = 0
    curve_images: int = 1000
    # each batch split over the local devices, each slice's loss (free bits on the slice's
    # mean KL, as the TF code's per-GPU losses) and gradient on its own device, averaged
    split_batch: bool = False
    # also checkpoint every this many updates inside an epoch (0: at epoch ends only); it
    # may change on --resume, which continues mid-epoch, bit-identically
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        check_choice("problem", self.problem, PROBLEMS)
        for name in _POSITIVE:
            check_positive(name, getattr(self, name), integer=True)
        check_nonnegative("curve_every", self.curve_every, integer=True)
        check_nonnegative("checkpoint_every", self.checkpoint_every, integer=True)
        iaf_vae.check_depths(self.depths, 32)
        for name in ("beta1", "beta2"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must lie in (0, 1]; got {getattr(self, name)!r}")
        if not 0 <= self.polyak < 1:
            raise ValueError(f"`polyak` must lie in [0, 1); got {self.polyak!r}")
        check_positive("alpha", self.alpha)
        if self.est_marglik % min(self.is_chunk, self.est_marglik):
            raise ValueError("`est_marglik` must be a multiple of `is_chunk`")
        if self.num_train < self.n_batch:
            raise ValueError(f"`num_train` must be at least `n_batch` ({self.n_batch})")


PRESETS = {
    "smoke": Config(problem="mnist", n_h=8, n_z=2, n_batch=16, depths=(1, 1), num_epochs=1,
                    num_train=64, num_test=32, est_marglik=20, is_images=4, is_chunk=10,
                    eval_batch_size=32, num_images=4, polyak=0.5),
    # A small MNIST model in under two minutes (IS with K = 1000 on 20 test images).
    "quick": Config(problem="mnist", n_h=16, n_z=4, n_batch=32, depths=(1, 1),
                    margs=ModelArgs(posterior="down_diag", kl_min=0.1), num_epochs=10,
                    num_train=3200, num_test=1000, is_images=20, eval_batch_size=100,
                    polyak=0.98),
    # The Theano MNIST branch (spec §2.11): n_h 64, n_z 32, pad to 32×32.
    "mnist": Config(problem="mnist", n_h=64, n_z=32, depths=(2, 2),
                    margs=ModelArgs(posterior="down_iaf2_nl", kl_min=0.25), curve_every=1,
                    checkpoint_every=500),
    # README: problem=cifar10 n_h=160 depths=[10,10] margs.depth_ar=2
    # margs.posterior=down_iaf2_nl margs.prior=diag margs.kl_min=0.25  (3.28 bits/dim).
    "cifar10-readme": Config(problem="cifar10", n_h=160, depths=(10, 10), num_train=50_000,
                             margs=ModelArgs(posterior="down_iaf2_nl", kl_min=0.25,
                                             depth_ar=2), checkpoint_every=500),
}  # fmt: skip
PRESETS["paper"] = PRESETS["mnist"]  # the paper's MNIST model (every experiment has `paper`)


def build_model(config: Config, key) -> iaf_vae.ResNetVAE:
    mnist = config.problem == "mnist"
    return iaf_vae.ResNetVAE(
        1 if mnist else 3, config.n_h, config.n_z, config.depths, config.margs.posterior,
        config.margs.depth_ar, "bernoulli" if mnist else "logistic", 32, 2 if mnist else 0,
        key=key,
    )  # fmt: skip


def loss(model: iaf_vae.ResNetVAE, batch, key):
    """Free-bits cost (nats per image); aux: the one-sample −ELBO parts."""
    x, hyper = batch
    t = iaf_vae.terms(model, x, key, hyper["kl_min"])
    cost = -jnp.mean(t.log_px) + t.kl_free_bits
    return cost, {"recon": -jnp.mean(t.log_px), "kl": jnp.mean(t.kl)}


@functools.cache
def _trainer(alpha, beta1, beta2, polyak, num_batches, split_batch=False) -> NaNGuardTrainer:
    optimizer = adamax_no_bias_correction(alpha, 1.0 - beta1, 1.0 - beta2)
    return NaNGuardTrainer(loss, optimizer, num_batches, ema_decay=polyak, split_batch=split_batch)


def load_data(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` as float32 NHWC 32×32 images (MNIST: {0, 1}; CIFAR: 0..255)."""
    if config.problem == "mnist":
        from dgm.data.mnist import evenly_spaced, load_binarized_mnist

        train = np.concatenate([load_binarized_mnist("train"), load_binarized_mnist("valid")])
        test = load_binarized_mnist("test")
        pad = lambda a: np.pad(a.reshape(-1, 28, 28, 1), ((0, 0), (2, 2), (2, 2), (0, 0)))  # noqa: E731
        train, test = pad(train), pad(test)
    else:
        train, test = load_cifar10()
    # the binarized test file is ordered by class: a subset is spread over all of it
    return (np.asarray(train[: config.num_train], np.float32),
            np.asarray(evenly_spaced(test, config.num_test), np.float32))  # fmt: skip


def load_cifar10() -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``(train (50000, 32, 32, 3), test (10000, 32, 32, 3))`` uint8 NHWC, from the
    binary or the Python version in ``$DGM_DATA_DIR/cifar10``, downloaded only when allowed
    (:func:`dgm.data.downloads_allowed`: ``dgm run --download``).

    Raises:
        FileNotFoundError: neither version is there.
    """
    from dgm.data import DOWNLOAD_HINT, cifar10, downloads_allowed

    def both(fmt: str, download_ok: bool):
        train, _ = cifar10.load_cifar10("train", fmt=fmt, download_ok=download_ok)
        test, _ = cifar10.load_cifar10("test", fmt=fmt, download_ok=download_ok)
        return train.transpose(0, 2, 3, 1), test.transpose(0, 2, 3, 1)

    for fmt in cifar10.FORMATS:  # a copy at hand, of either version
        try:
            return both(fmt, False)
        except FileNotFoundError:
            continue
    if downloads_allowed():
        return both(cifar10.FORMATS[0], True)
    raise FileNotFoundError(
        "CIFAR-10 files not found in $DGM_DATA_DIR/cifar10 (cifar-10-binary.tar.gz or "
        "cifar-10-python.tar.gz, or their extracted folders); the cifar10 problem is skipped; "
        + DOWNLOAD_HINT
    )


def run(config: Config, key, ctx: runs.RunContext) -> dict:
    """Initialise on the first minibatch, train, score the averaged weights, draw."""
    start = time.perf_counter()
    k_model, k_init, k_train, k_eval = jax.random.split(key, 4)
    train, test = load_data(config)
    model = build_model(config, k_model)
    model = iaf_vae.data_dependent_init(model, jnp.asarray(train[: config.n_batch]), k_init)
    loader = training.ArrayLoader(train, config.n_batch)
    trainer = _trainer(config.alpha, config.beta1, config.beta2, config.polyak,
                       loader.num_batches, config.split_batch)  # fmt: skip
    cfg = training.TrainConfig(num_epochs=config.num_epochs, batch_size=config.n_batch,
                               learning_rate=config.alpha, clip_norm=0.0, l2=0.0,
                               anneal_steps=0, eval_every=max(config.curve_every, 1),
                               checkpoint_every=config.checkpoint_every)  # fmt: skip
    track = evaluation.test_bound(config, test) if config.curve_every else None
    result = training.fit(
        model, trainer, loader, cfg, key=k_train, track_fn=track,
        fingerprint=_training.fingerprint(config, _ADDED_FIELDS),
        schedules={"update_index": update_index},
        constants={"kl_min": config.margs.kl_min},
        **_training.fit_outputs(ctx),
    )  # fmt: skip
    averaged = result.best_model  # no validation: the last weight average
    train_s = time.perf_counter() - start
    iaf_vae_io.save(ctx.path(iaf_vae_io.decoders.MODEL_FILE), averaged,
                    dataset=config.problem, epochs=result.epochs)  # fmt: skip
    metrics = evaluation.score(config, averaged, test, k_eval)
    metrics.update(epochs=result.epochs, s_per_epoch=result.s_per_epoch,
                   s_per_step=result.s_per_epoch / loader.num_batches, train_s=train_s,
                   final_train_loss=result.history[-1]["train_loss"] if result.history else None,
                   **_training.run_length(result))  # fmt: skip
    metrics["sample_s_per_image"] = evaluation.pictures(ctx, config, averaged, test, k_eval)
    metrics["wall_s"] = time.perf_counter() - start
    runs.write_text(ctx.path("report.md"), evaluation.report(config, metrics))
    return metrics


def summary(m: dict) -> str:
    return (
        f"iaf-vae ({m['problem']}, {m['posterior']}): test −ELBO {m['test_neg_elbo']:.3f}, "
        f"IS −log p(x) {m['test_nll_is']:.3f} {m['unit']} (K = {m['is_samples']}, "
        f"{m['is_images']} images); {m['epochs']} epochs, {m['s_per_step'] * 1e3:.1f} ms/step"
    )
