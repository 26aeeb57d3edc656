"""Where :func:`~dgm.training.fit` sends each epoch's record.

A logger is any object with ``start(history)``, ``log(record)`` and ``close()`` (the
:class:`Logger` protocol). ``start`` receives the records already done (restored from the
checkpoint when resuming, else empty); ``log`` one new record per epoch; ``close`` is
called once at the end, also when training is interrupted.
"""

import json
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from dgm import runs


@runtime_checkable
class Logger(Protocol):
    """Receives each epoch's record (a flat dict of numbers with an ``epoch`` field)."""

    def start(self, history: list[dict]) -> None: ...

    def log(self, record: dict) -> None: ...

    def close(self) -> None: ...


def _jsonl(record: dict) -> str:
    return json.dumps(runs._to_jsonable(record)) + "\n"


class JsonLinesLogger:
    """One JSON line per epoch, appended and fsynced at once.

    At ``start`` an existing file is rewritten from the restored history (a crash between
    the checkpoint and the append may have left it behind or ahead), so the log always
    matches the checkpoint.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def start(self, history: list[dict]) -> None:
        if history or self.path.exists():
            runs.write_text(self.path, "".join(_jsonl(h) for h in history))

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(_jsonl(record))
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """TensorBoard event files under ``directory`` when tensorboardX is installed (else nothing).

    Each record is logged under ``<name>/<field>`` with the epoch as the step and flushed at
    once, so a killed run loses no logged epoch. A resumed run adds an event file, which
    TensorBoard reads as a continuation; its name ends in ``.<name>.<start>``, the first
    epoch of this fit (the time in the name has a resolution of seconds).

    Args:
        directory: where the event files go.
        name: the tag prefix and file-name suffix.
        start: the epochs done before this fit; ``None``: the restored history's length.
    """

    def __init__(self, directory: str | os.PathLike, name: str = "train", start: int | None = None):
        self.directory, self.name, self.start_epoch = Path(directory), name, start
        self.writer = None

    def start(self, history: list[dict]) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return
        start = self.start_epoch
        if start is None:
            start = history[-1]["epoch"] if history else 0
        suffix = f".{self.name}.{start}"
        self.writer = SummaryWriter(str(self.directory), filename_suffix=suffix)

    def log(self, record: dict) -> None:
        if self.writer is None:
            return
        for field, value in record.items():
            if field != "epoch":
                self.writer.add_scalar(f"{self.name}/{field}", value, global_step=record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class HistoryPlot:
    """The loss curve (train loss per epoch, validation points) saved to ``path`` at close."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.history: list[dict] = []

    def start(self, history: list[dict]) -> None:
        self.history = list(history)

    def log(self, record: dict) -> None:
        self.history.append(record)

    def close(self) -> None:
        if self.history:
            _plot_history(self.history, self.path)


def _plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], label="train")
    valid = [h for h in history if "valid" in h]
    if valid:
        ax.plot([h["epoch"] for h in valid], [h["valid"] for h in valid], "o-", label="valid")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    suffix = path.suffix.lstrip(".") or "png"
    try:
        with runs.atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
