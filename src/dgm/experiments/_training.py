"""Training pieces the experiments share: the cached trainer, ``fit`` with a run
directory's outputs, config fingerprints and model files."""

import functools
import json

import equinox as eqx

from dgm import runs, training


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

    ``checkpoints/<name>.eqx``, ``--resume``, ``--no-progress`` and ``--time-limit`` from
    ``ctx``, and the loggers: ``<name>_metrics.jsonl``, TensorBoard event files under
    ``tensorboard/`` (when tensorboardX is installed) and the loss curve ``<name>_loss.png``.
    """
    return {
        "checkpoint": ctx.out / "checkpoints" / f"{name}.eqx",
        "resume": ctx.resume,
        "progress": ctx.progress,
        "time_limit_s": ctx.time_limit_s,
        "loggers": [
            training.JsonLinesLogger(ctx.path(f"{name}_metrics.jsonl")),
            training.TensorBoardLogger(ctx.path("tensorboard"), name),
            training.HistoryPlot(ctx.path(f"{name}_loss.png")),
        ],
    }


def run_length(result: training.FitResult) -> dict:
    """The metrics every training run reports about its length: updates done in all, and
    whether training stopped at ``--time-limit`` (then ``--resume`` continues it)."""
    return {"updates": result.steps, "time_limited": result.time_limited}


def fit(model, loss_fn, loader, config: training.TrainConfig, *, key, ctx, eval_fn, fingerprint):
    """Train with ``config``'s KL anneal and L2 weight; outputs in ``ctx``'s directory."""
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
