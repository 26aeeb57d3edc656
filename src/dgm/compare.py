"""``dgm compare RUN_DIR ...``: one Markdown table of several run directories.

A row per run: the config fields that differ between the runs (dotted names, from each
``config.json``), the epochs done (from ``train_metrics.jsonl``, so a run still training
has a row too), the values of a per-epoch record (``--curve test_neg_elbo --epochs 1,2``:
the same budget for every run) and the final scores of ``metrics.json``. A value a run
does not have is shown as ``–``. Nothing here imports JAX.
"""

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dgm import runs
from dgm.config import is_int, is_real

MISSING = "–"
SHOWN = {"epochs", "seed"}  # metrics.json fields the table shows anyway


def load_run(run_dir: str | os.PathLike) -> dict:
    """``{"name", "config", "metrics", "history"}`` of a run directory: its name, the
    flattened config (with the experiment, preset and seed), ``metrics.json`` (``{}`` while
    the run trains) and the records of ``train_metrics.jsonl``."""
    path = Path(run_dir)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(
            f"run directory {str(path)!r} has no config.json (expected a directory "
            "written by `dgm run`)"
        )
    record = runs.read_json(cfg)
    if not isinstance(record, dict) or not isinstance(record.get("config", {}), dict):
        raise ValueError(f"{cfg} is not a run's config (expected an object with a config object)")
    metrics_path = path / "metrics.json"
    metrics = runs.read_json(metrics_path) if metrics_path.is_file() else {}
    if not isinstance(metrics, dict):
        raise ValueError(f"{metrics_path} is not a JSON object")
    curve_path = path / "train_metrics.jsonl"
    history = runs.read_json(curve_path, lines=True) if curve_path.is_file() else []
    for i, entry in enumerate(history, 1):
        if not (isinstance(entry, dict) and is_int(entry.get("epoch"))):
            raise ValueError(f"{curve_path}: record {i} is not an object with an integer epoch")
    config = {k: record.get(k) for k in ("experiment", "preset", "seed")}
    config.update(_flatten(record.get("config", {})))
    name = path.resolve().name
    return {"name": name, "config": config, "metrics": metrics, "history": history}


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _fmt(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _epochs_done(run: dict) -> Any:
    if run["history"]:
        return run["history"][-1].get("epoch")
    return run["metrics"].get("epochs")


def _at_epoch(run: dict, key: str, epoch: int) -> Any:
    for entry in run["history"]:
        if entry.get("epoch") == epoch and key in entry:
            return entry[key]
    return None


def table(
    runs: Sequence[dict],
    metrics: Sequence[str] | None = None,
    curve: str | None = None,
    epochs: Sequence[int] | None = None,
    keys: Sequence[str] | None = None,
) -> str:
    """The Markdown table of ``runs`` (from :func:`load_run`).

    Args:
        metrics: ``metrics.json`` fields, one column each; default: every number that all
            finished runs have.
        curve: a field of the per-epoch records (``train_metrics.jsonl``) to show at
            ``epochs`` (default: every epoch any run recorded it at).
        keys: config fields to show; default: those that differ between the runs.
    """
    if not runs:
        raise ValueError("`runs`: expected at least one run directory; got none")
    all_keys = sorted({k for run in runs for k in run["config"]})
    if keys is None:
        keys = [k for k in all_keys if len({json.dumps(r["config"].get(k)) for r in runs}) > 1]
    else:
        _check_known("--keys", keys, all_keys)
    finished = [run["metrics"] for run in runs if run["metrics"]]
    if metrics is None:  # every number all finished runs have, but the epochs and seed
        common = set.intersection(*(set(m) for m in finished)) if finished else set()
        first = finished[0] if finished else {}
        metrics = [k for k in first if k in common - SHOWN and is_real(first[k])]
    elif metrics and not finished:
        raise ValueError("--metrics: no run has finished yet (none has a metrics.json)")
    else:
        _check_known("--metrics", metrics, sorted({k for m in finished for k in m}))
    if epochs is not None and curve is None:
        raise ValueError("--epochs: chooses the epochs of --curve FIELD; give --curve too")
    columns = []
    if curve is not None:
        recorded = sorted({e["epoch"] for r in runs for e in r["history"] if curve in e})
        if not recorded:
            fields = sorted({k for r in runs for e in r["history"] for k in e})
            raise ValueError(
                f"--curve: no run recorded {curve!r} in train_metrics.jsonl; "
                f"fields recorded: {', '.join(fields) or 'none'}"
            )
        columns = list(epochs) if epochs is not None else recorded
    # a metrics.json field named like a config column gets its own header
    results = [f"{k} (result)" if k in keys else k for k in metrics]
    header = ["run", *keys, "epochs", *(f"{curve} @ {e}" for e in columns), *results]
    rows = [header, ["---"] * len(header)]
    for run in runs:
        rows.append(
            [
                run["name"],
                *(_fmt(run["config"].get(k)) for k in keys),
                _fmt(_epochs_done(run)),
                *(_fmt(_at_epoch(run, curve, e)) for e in columns),
                *(_fmt(run["metrics"].get(k)) for k in metrics),
            ]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def _check_known(flag: str, asked: Sequence[str], known: Sequence[str]) -> None:
    unknown = [k for k in asked if k not in known]
    if unknown:
        raise ValueError(
            f"{flag}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"the runs have: {', '.join(known) or 'none'}"
        )
