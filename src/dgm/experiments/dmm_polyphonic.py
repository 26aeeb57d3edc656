"""DMM on the polyphonic music benchmarks (Krishnan, Shalit & Sontag, AAAI 2017, Tables 2-3).

``dgm run dmm-polyphonic --dataset jsb|nottingham|piano|muse --inference st-r|st-l|st-lr|
mf-r|mf-l|mf-lr [--cell lstm|gru|rnn] [--num-iafs K] [--preset smoke|quick|paper]``.
"""

import dataclasses
import time

import jax
import numpy as np

from dgm import runs, training
from dgm.config import check_choice, check_positive
from dgm.data import midi
from dgm.data.polyphonic import DATASETS, NUM_PITCHES, load_polyphonic
from dgm.experiments import _dmm, _training
from dgm.models import dmm

NAME = "dmm-polyphonic"
DESCRIPTION = "Deep Markov Model on JSB / Nottingham / Piano-midi / MuseData (IS-NLL per frame)"
TRAINS = True  # a training run: `dgm run --time-limit` applies
EXTRA_ARGS = {
    "dataset": "dataset",
    "inference": "model.inference",
    "cell": "model.cell",
    "num-iafs": "model.num_iafs",
}

# Paper numbers, nats per frame: (IS-NLL a, frame bound b, TSBN-style bound c).
PAPER = {
    "jsb": {
        "DMM (ST-R, annealed; Table 3)": (6.388, 6.926, 6.856),
        "DKS = ST-R (Table 2)": (6.605, 7.033, 6.983),
        "ST-L": (7.020, 7.519, 7.453),
        "ST-LR": (6.632, 7.078, 7.007),
        "MF-LR": (6.701, 7.101, 7.021),
        "Pyro DMM, 0 IAF (single-sample bound)": (None, 6.87, None),
    },
    "nottingham": {"DMM": (2.770, 2.964, 2.954), "DKS = ST-R": (3.136, 3.327, None)},
    "piano": {"DMM": (7.835, 7.980, 8.246), "DKS = ST-R": (8.471, 8.584, None)},
    "muse": {"DMM": (6.831, 6.989, 6.203), "DKS = ST-R": (7.280, 7.136, None)},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Paper defaults: 2000 epochs, batch 20, Adam 8e-4, clip 1, L2 0.05, KL annealed over
    5000 updates, validation bound (S = 2) every 25 epochs, test IS-NLL with S = 2000."""

    dataset: str = "jsb"
    model: _dmm.ModelConfig = _dmm.ModelConfig()
    train: training.TrainConfig = training.TrainConfig()
    valid_samples: int = 2
    test_bound_samples: int = 2
    test_samples: int = 2000
    chunk_size: int = 100
    eval_batch_size: int = 20
    max_train_sequences: int = 0
    max_eval_sequences: int = 0
    data_root: str = ""
    max_train_frames: int = 0
    max_eval_frames: int = 0

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, sorted(DATASETS))
        for name in ("valid_samples", "test_bound_samples", "test_samples", "chunk_size"):
            check_positive(name, getattr(self, name), integer=True)
        if self.test_samples % min(self.chunk_size, self.test_samples):
            raise ValueError(
                f"`test_samples` ({self.test_samples}) must be a multiple of `chunk_size` "
                f"({self.chunk_size})"
            )
        for name in (
            "max_train_sequences",
            "max_eval_sequences",
            "max_train_frames",
            "max_eval_frames",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0 (0 = all); got {getattr(self, name)}")


_SMALL = _dmm.ModelConfig(
    z_dim=4, transition_dim=8, emission_dim=8, rnn_dim=8, cell="gru", emission_layers=1
)
PRESETS = {
    "smoke": Config(
        model=_SMALL,
        train=training.TrainConfig(
            num_epochs=2, batch_size=10, anneal_steps=4, eval_every=1, bucket_width=64
        ),
        valid_samples=1,
        test_bound_samples=1,
        test_samples=4,
        chunk_size=4,
        eval_batch_size=10,
        max_train_sequences=20,
        max_eval_sequences=10,
    ),
    # 14,000 / 5,000 frames hold all of JSB (13,807 train, 4,602 valid, 4,725 test frames);
    # on Nottingham, Piano-midi and MuseData they keep the shortest sequences, a JSB-sized
    # subset, so that the preset stays a few minutes long.
    "quick": Config(
        model=_dmm.ModelConfig(
            z_dim=32, transition_dim=64, emission_dim=64, rnn_dim=128, cell="gru"
        ),
        train=training.TrainConfig(
            num_epochs=80,
            learning_rate=3e-3,
            anneal_steps=200,
            eval_every=20,
            l2=0.0,
            bucket_width=64,
        ),
        test_samples=100,
        chunk_size=50,
        eval_batch_size=40,
        max_train_frames=14_000,
        max_eval_frames=5_000,
    ),
    "paper": Config(),
}


# Fields added after runs were started: left out of checkpoint fingerprints at defaults.
_ADDED_FIELDS = ("max_train_frames", "max_eval_frames", "model.input_embedding")


def _subset(data, count, max_frames=0):
    """The first ``count`` sequences (0 = all), then as many of those as fit in
    ``max_frames`` frames (0 = no limit); splits are sorted by length, so the shortest."""
    data = data.subset(count) if count else data
    if max_frames:
        fits = int(np.searchsorted(np.cumsum(data.lengths), max_frames, side="right"))
        data = data.subset(max(fits, 1))
    return data


def splits(config: Config) -> tuple[dict, dict]:
    """The dataset's full splits and the ones the run uses (``max_*`` subsets applied)."""
    data = load_polyphonic(config.dataset, config.data_root or None)
    used = {
        "train": _subset(data["train"], config.max_train_sequences, config.max_train_frames),
        "valid": _subset(data["valid"], config.max_eval_sequences, config.max_eval_frames),
        "test": _subset(data["test"], config.max_eval_sequences, config.max_eval_frames),
    }
    return data, used


def _eval_kwargs(config: Config) -> dict:
    return dict(
        chunk_size=config.chunk_size,
        batch_size=config.eval_batch_size,
        bucket_width=config.train.bucket_width,
    )


def evaluate_test(config: Config, model: dmm.DMM, test, key, is_samples: int | None = None):
    """The paper's three test numbers (``is_samples`` defaults to ``config.test_samples``)."""
    return _dmm.evaluate(
        model,
        test,
        key,
        bound_samples=config.test_bound_samples,
        is_samples=config.test_samples if is_samples is None else is_samples,
        **_eval_kwargs(config),
    )


def run(config: Config, key, ctx: runs.RunContext) -> dict:
    """Train on the training split, select by validation bound, report test a (b) {c}."""
    start = time.perf_counter()
    key_model, key_train, key_test, key_sample = jax.random.split(key, 4)
    data, used = splits(config)
    train, valid, test = used["train"], used["valid"], used["test"]
    dmm.validate_sequences(train.x, train.mask, NUM_PITCHES, "bernoulli")
    model = _dmm.build_model(config.model, NUM_PITCHES, "bernoulli", key_model)
    cfg = config.train
    eval_kwargs = _eval_kwargs(config)

    def eval_fn(m, k):
        return _dmm.evaluate(
            m, valid, k, bound_samples=config.valid_samples, is_samples=0, **eval_kwargs
        )["bound_frame"]

    result = _training.fit(
        model,
        _dmm.dmm_loss,
        training.SequenceLoader(train.x, train.mask, cfg.batch_size, bucket_width=cfg.bucket_width),
        cfg,
        key=key_train,
        ctx=ctx,
        eval_fn=eval_fn,
        fingerprint=_training.fingerprint(config, _ADDED_FIELDS),
    )
    _dmm.save_model(ctx, result.best_model, config.model, experiment=NAME, dataset=config.dataset)
    t_eval = time.perf_counter()
    scores = evaluate_test(config, result.best_model, test, key_test)
    _plot_sample(ctx, result.best_model, key_sample)
    metrics = {
        "dataset": config.dataset,
        "inference": config.model.inference,
        "test_nll_is": scores["nll_is"],
        "test_bound_frame": scores["bound_frame"],
        "test_bound_seq": scores["bound_seq"],
        "best_valid_bound_frame": result.best_valid,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        **_training.run_length(result),
        "stopped_early": result.stopped_early,
        "train_wall_s": result.wall_s,
        "test_eval_s": time.perf_counter() - t_eval,
        "wall_s": time.perf_counter() - start,
        "s_per_epoch": result.s_per_epoch,
        "subset": any(len(used[name].lengths) < len(data[name].lengths) for name in used),
        "train_frames": train.num_frames,
        "test_sequences": len(test.lengths),
        "test_frames": test.num_frames,
        "test_samples": config.test_samples,
    }
    runs.write_text(ctx.path("report.md"), report(config, metrics))
    return metrics


def _plot_sample(ctx: runs.RunContext, model, key) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = np.asarray(jax.jit(dmm.sample_sequences, static_argnums=1)(model, 100, key))
    roll = np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), probs.shape)) < probs
    ctx.save_with("sample.mid", lambda p: midi.write_piano_roll(p, roll.astype(np.uint8)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    titles = ("note probabilities", "sampled piano roll")
    for ax, img, title in zip(axes, (probs, roll), titles, strict=True):
        ax.imshow(img.T, aspect="auto", origin="lower", cmap="Greys", interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("time step")
    axes[0].set_ylabel("pitch (MIDI − 21)")
    ctx.save_figure("sample_pianoroll.png", fig)


def report(config: Config, metrics: dict) -> str:
    """Markdown table: our a (b) {c} beside the paper's numbers."""

    def fmt(v):
        return "–" if v is None else f"{v:.3f}"

    lines = [
        f"# DMM on {config.dataset} ({config.model.inference}, {config.model.cell})",
        "",
        "Nats per frame, lower is better: a = IS-NLL, b = frame bound, c = TSBN-style bound.",
        "",
        "| run | IS-NLL (a) | frame bound (b) | TSBN bound (c) |",
        "|---|---|---|---|",
        f"| **dgm, this run** (S = {config.test_samples}, {metrics['epochs']} epochs) | "
        f"{fmt(metrics['test_nll_is'])} | {fmt(metrics['test_bound_frame'])} | "
        f"{fmt(metrics['test_bound_seq'])} |",
    ]
    for name, (a, b, c) in PAPER[config.dataset].items():
        lines.append(f"| paper: {name} | {fmt(a)} | {fmt(b)} | {fmt(c)} |")
    lines += [
        "",
        f"Training: {metrics['epochs']} epochs (best validation bound at epoch "
        f"{metrics['best_epoch']}), {metrics['s_per_epoch']:.2f} s per epoch, "
        f"{metrics['wall_s']:.0f} s in all. The paper trained 2000 epochs; shorter runs are "
        "not expected to reach its numbers.",
        "",
    ]
    if metrics.get("subset"):
        lines += [
            f"Subset (shortest sequences first): {metrics['train_frames']} training frames, "
            f"{metrics['test_sequences']} test sequences ({metrics['test_frames']} frames); "
            "the test numbers are not those of the full test split.",
            "",
        ]
    return "\n".join(lines)


def summary(metrics: dict) -> str:
    return (
        f"{metrics['dataset']} {metrics['inference']}: test IS-NLL {metrics['test_nll_is']:.3f}, "
        f"frame bound {metrics['test_bound_frame']:.3f}, seq bound {metrics['test_bound_seq']:.3f} "
        f"nats/frame after {metrics['epochs']} epochs ({metrics['s_per_epoch']:.2f} s/epoch)"
    )
