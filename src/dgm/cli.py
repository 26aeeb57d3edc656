"""Command-line interface: ``dgm list``, ``dgm run NAME``, ``dgm sample RUN_DIR`` and
``dgm compare RUN_DIR ...``.

Parses arguments, resolves the config, calls the experiment and writes the run's
``config.json`` and ``metrics.json``. It does no numerics. Exit codes: 0 success; 2 a
command line the argument parser refuses (an unknown flag, a missing or malformed flag
value: its usage, then one error line); 1 anything else that stops the command, a config
the experiment refuses (an unknown experiment or preset, a bad ``--set``) included, with
one line on stderr; 130 interrupted.
"""

import sys

from dgm._runtime import configure_cpu

# Training runs (the DMM experiments) keep freed memory for reuse; see configure_cpu. The
# arguments are not parsed yet (JAX must not be imported first): any `dmm-*` argument after
# `run` turns it on, wherever the options put the experiment name.
_after_run = sys.argv[sys.argv.index("run") + 1 :] if "run" in sys.argv[1:] else []
configure_cpu(reuse_freed_memory=any(arg.startswith("dmm-") for arg in _after_run))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from dgm import _sigint, experiments, runs  # noqa: E402
from dgm import config as config_lib  # noqa: E402
from dgm.data import DOWNLOAD_ENV  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgm", description="Differentiable generative models and inference in them."
    )
    from dgm import __version__

    parser.add_argument("--version", action="version", version=f"dgm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments")
    run = sub.add_parser(
        "run",
        help="run an experiment",
        add_help=False,  # -h after NAME also lists the experiment's options and fields
        epilog="The IAF code's form `dgm run NAME with FIELD=VALUE ...` is accepted too.",
    )
    run.add_argument(
        "-h",
        "--help",
        action="store_true",
        help="show this help and exit; after NAME, also the experiment's presets, options "
        "and config fields",
    )
    run.add_argument("name", nargs="?", help="experiment name (see `dgm list`)")
    run.add_argument(
        "--preset",
        default=None,
        help="smoke, quick, paper or another the experiment has (default: quick)",
    )
    run.add_argument("--smoke", action="store_true", help="shorthand for --preset smoke")
    run.add_argument("--seed", type=_seed, default=0, help="root PRNG seed (default 0)")
    run.add_argument("--out", type=Path, default=None, help="run directory")
    existing = run.add_mutually_exclusive_group()  # continue the run in --out, or replace it
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (--set train.num_epochs=N may extend or end it)",
    )
    existing.add_argument(
        "--overwrite", action="store_true", help="replace a finished run in --out"
    )
    run.add_argument(
        "--time-limit",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="training runs: stop training after this long (600, 600s, 45m, 2h), checkpointed "
        "where it stops; scoring follows and --resume continues the training",
    )
    run.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field"
    )
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (preset, options and --set applied) as JSON and exit",
    )
    run.add_argument(
        "--download",
        action="store_true",
        help="download missing datasets from their sources (checksums verified); the same as "
        "DGM_DOWNLOAD=1",
    )
    bars = run.add_mutually_exclusive_group()
    bars.add_argument(
        "--no-progress",
        action="store_true",
        help="hide progress bars (the default when stderr is not a terminal: a log or a pipe)",
    )
    bars.add_argument("--progress", action="store_true", help="show progress bars anyway")
    parser.subcommands = sub.choices  # the `run` parser prints its own help
    bvh = sub.add_parser("bvh", help="BVH motion files").add_subparsers(dest="bvh", required=True)
    parser.bvh_commands = bvh.choices  # for their usage errors
    render = bvh.add_parser("render", help="animate a BVH clip to a GIF (or MP4 with ffmpeg)")
    render.add_argument("file", type=Path, help="the .bvh file")
    render.add_argument("--out", type=Path, required=True, help="output .gif or .mp4")
    render.add_argument(
        "--stride", type=_int_at_least(1), default=4, help="draw every Nth frame (default 4)"
    )
    render.add_argument(
        "--max-frames", type=_int_at_least(1), default=None, help="draw at most N frames"
    )
    scale = run.add_argument_group("devices and processes")
    scale.add_argument(
        "--devices",
        type=_int_at_least(1),
        default=None,
        help="host (CPU) devices (default: one per core)",
    )
    scale.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0")
    scale.add_argument(
        "--num-processes", type=_int_at_least(1), default=None, help="processes in the run"
    )
    scale.add_argument(
        "--process-id", type=_int_at_least(0), default=None, help="this process, from 0"
    )
    scale.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run described by the cluster environment (Slurm, ...)",
    )
    sample = sub.add_parser(
        "sample", help="new samples (a DRAW's animation, a DMM's MIDI) from a trained run"
    )
    sample.add_argument("run_dir", type=Path, help="run directory of a trained image model or DMM")
    sample.add_argument(
        "--num", type=_int_at_least(1), default=64, help="number of samples (default 64)"
    )
    sample.add_argument(
        "--out", type=Path, default=None, help="a .png file (GIFs or a DMM's .mid beside it)"
    )
    sample.add_argument("--seed", type=_seed, default=0, help="PRNG seed (default 0)")
    sample.add_argument(
        "--steps",
        type=_int_at_least(1),
        default=100,
        help="time steps of a DMM's sequences (default 100)",
    )
    compare = sub.add_parser("compare", help="one Markdown table of several runs")
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    compare.add_argument(
        "--metrics",
        type=_names,
        default=None,
        help="metrics.json fields (comma-separated; default: all numbers)",
    )
    compare.add_argument(
        "--curve",
        default=None,
        metavar="FIELD",
        help="a train_metrics.jsonl field to show per epoch",
    )
    compare.add_argument(
        "--epochs",
        type=_integers,
        default=None,
        help="the epochs for --curve (comma-separated; default: all)",
    )
    compare.add_argument(
        "--keys",
        type=_names,
        default=None,
        help="config fields (comma-separated; default: those that differ)",
    )
    compare.add_argument("--out", type=Path, default=None, help="also write the table here")
    return parser


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _integers(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers; got {text!r}"
        ) from None


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def _int_at_least(low: int, below: int | None = None, shown: str | None = None):
    """An argparse type: an int ``>= low`` (and ``< below``, written ``shown`` in the
    message), so the error names the flag."""
    bound = f">= {low}" if below is None else f"in [{low}, {shown or below})"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (below is not None and value >= below):
            raise argparse.ArgumentTypeError(f"must be an int {bound}; got {text!r}")
        return value

    return parse


# a PRNG key holds 32 bits, so 2^32 gave seed 0's numbers
_seed = _int_at_least(0, 2**32, "2^32")


def _duration(text: str) -> float:
    """Seconds in ``600``, ``600s``, ``45m`` or ``1.5h``."""
    number, unit = text.strip(), ""
    if number[-1:].lower() in ("s", "m", "h"):
        number, unit = number[:-1], number[-1].lower()
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(
            f"expected a positive duration such as 600, 600s, 45m or 2h; got {text!r}"
        )
    return seconds


def _compare(args: argparse.Namespace) -> int:
    from dgm import compare

    loaded = [compare.load_run(d) for d in args.run_dirs]
    text = compare.table(loaded, args.metrics, args.curve, args.epochs, args.keys)
    if args.out is not None:
        runs.write_text(args.out, text)
    print(text, end="")
    return 0


def _start_devices(args: argparse.Namespace) -> None:
    """Host devices and the processes of a distributed run, before JAX runs anything."""
    from dgm import distributed
    from dgm._runtime import set_host_device_count

    if args.devices is not None:
        set_host_device_count(args.devices)
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed or any(x is not None for x in explicit):
        if args.distributed and any(x is not None for x in explicit):
            raise ValueError("--distributed reads the cluster environment: drop --coordinator etc.")
        distributed.initialize(*explicit)


def _sample(args: argparse.Namespace) -> int:
    from dgm.experiments import sample

    for path in sample.sample_run(args.run_dir, args.num, args.out, args.seed, args.steps):
        print(f"wrote {path}")
    return 0


def _resolve(args: argparse.Namespace, extra: list[str]):
    module = experiments.get(args.name)
    if args.smoke and args.preset not in (None, "smoke"):
        raise ValueError(f"--smoke means --preset smoke; got --preset {args.preset} as well")
    preset = "smoke" if args.smoke else args.preset or "quick"
    if preset not in module.PRESETS:
        raise ValueError(
            f"unknown preset {preset!r} for {args.name}; expected one of {sorted(module.PRESETS)}"
        )
    config = module.PRESETS[preset]
    extra_args: dict[str, str] = getattr(module, "EXTRA_ARGS", {})
    if extra[:1] == ["with"]:  # sacred's `with KEY=VALUE ...` (the IAF code's command line)
        config, extra = config_lib.override(config, extra[1:]), []
    if extra:
        sub = argparse.ArgumentParser(prog=f"dgm run {args.name}", add_help=False)
        for flag in extra_args:
            sub.add_argument(f"--{flag}", dest=flag)  # keep hyphens: the EXTRA_ARGS key
        parsed, unknown = sub.parse_known_args(extra)
        if unknown:
            raise ValueError(f"unrecognized arguments for {args.name}: {' '.join(unknown)}")
        sets = [f"{extra_args[k]}={v}" for k, v in vars(parsed).items() if v is not None]
        config = config_lib.override(config, sets)
    config = config_lib.override(config, args.set)
    return module, preset, config


def _flat(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the names ``--set`` takes."""
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _run_help(run: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> str:
    """``dgm run [NAME] --help``: the options of ``run``; with NAME, the experiment's
    description, presets, own options and every config field with its value in the
    chosen preset (after any options and ``--set`` given with ``--help``)."""
    text = run.format_help()
    if args.name is None:
        return text
    module, preset, config = _resolve(args, extra)
    fields = _flat(_jsonable(config))
    lines = [
        f"{args.name}: {module.DESCRIPTION}",
        "",
        "presets: "
        + ", ".join(f"{p} (shown)" if p == preset else p for p in module.PRESETS)
        + " (default: quick)",
    ]
    extra_args = getattr(module, "EXTRA_ARGS", {})
    if extra_args:
        lines += ["", f"options of {args.name} (each sets a config field):"]
        lines += [
            f"  --{flag} VALUE".ljust(26) + f"sets {field}" for flag, field in extra_args.items()
        ]
    lines += ["", f"config fields, {preset} preset (--set FIELD=VALUE):"]
    lines += [f"  {k} = {json.dumps(v)}" for k, v in fields.items()]
    return text + "\n" + "\n".join(lines) + "\n"


def _differences(saved: dict, current: dict, preset: dict, prefix: str = "") -> list[str]:
    """The fields in which a saved config differs from the current one. A field missing
    from the saved config (added to dgm after that run started) matches while it keeps its
    ``preset`` value (an experiment's ``FORMER_DEFAULTS``, dotted field -> value as
    ``--set`` takes it, override that value where the field changed what runs did before it
    existed); the run length (``num_epochs``) may
    change, to extend a run or end it, and so may the checkpoint interval
    (``checkpoint_every``)."""
    from dgm.training.checkpoint import run_identity

    saved, current = run_identity(saved), run_identity(current)
    out = [f"{prefix}{name}" for name in saved if name not in current]
    for name, value in current.items():
        if name not in saved:
            differs = value != preset.get(name)
        elif isinstance(value, dict) and isinstance(saved[name], dict):
            sub = preset.get(name) or {}
            out += _differences(saved[name], value, sub, f"{prefix}{name}.")
            continue
        else:
            differs = saved[name] != value
        if differs:
            out.append(f"{prefix}{name}")
    return out


def _prepare_out(args: argparse.Namespace, preset: str, record: dict) -> Path:
    out = args.out or Path("runs") / f"{args.name}-{preset}-seed{args.seed}"
    for place in (out, *out.absolute().parents):  # the nearest that exists must take the run
        if place.exists() or place.is_symlink():
            problem = None
            if not place.is_dir():
                problem = "is not a directory"
            elif not os.access(place, os.W_OK | os.X_OK):
                problem = "is not writable"
            if problem:
                raise ValueError(f"--out: expected a directory to hold the run; {place} {problem}")
            break
    cfg_path = out / "config.json"
    # A run that failed before writing anything but its config (missing data, say) is no run.
    produced = cfg_path.exists() and any(p.is_file() and p != cfg_path for p in out.rglob("*"))
    if produced:
        previous = runs.read_json(cfg_path)
        if args.resume:
            module = experiments.get(args.name)
            former = getattr(module, "FORMER_DEFAULTS", {}).items()
            defaults = config_lib.override(module.PRESETS[preset], [f"{k}={v}" for k, v in former])
            differ = _differences(previous.get("config", {}), record["config"], _jsonable(defaults))
            if previous.get("seed") != args.seed:
                differ.append("seed")
            if differ:
                raise ValueError(
                    f"--resume: {out} holds a run with a different config or seed "
                    f"({', '.join(differ)}); use another --out"
                )
            # the record describes this call; what the earlier calls ran on stays beside it
            earlier = {
                k: previous[k] for k in ("versions", "processes", "devices") if k in previous
            }
            record["earlier_segments"] = [*previous.get("earlier_segments", []), earlier]
        elif not args.overwrite:
            raise ValueError(
                f"{out} already holds a run; pass --resume to continue it, --overwrite to "
                "replace it, or --out DIR"
            )
        else:  # the old run's state, scores and outputs go: none may sit beside the new config
            # missing_ok: every process of a multi-process run clears the shared --out
            for f in (out / "checkpoints").glob("*"):
                f.unlink(missing_ok=True)
            for f in (out / "tensorboard").glob("*"):  # TensorBoard would mix the two runs
                f.unlink(missing_ok=True)
            for name in ("metrics.json", "report.md", *_outputs(out), OUTPUTS):
                (out / name).unlink(missing_ok=True)
    return out


OUTPUTS = "outputs.json"  # the files a run made in its directory, for --overwrite to remove


def _files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def _outputs(out: Path) -> list[str]:
    """The files the run in ``out`` listed as its own (none for a run older than the list,
    or one stopped before its end); only paths inside ``out``."""
    path = out / OUTPUTS
    names = runs.read_json(path).get("files", []) if path.exists() else []
    return [n for n in names if not Path(n).is_absolute() and ".." not in Path(n).parts]


def _record_outputs(out: Path, before: set[str]) -> None:
    """List the files this call made (and those an earlier call of the run listed): a later
    ``--overwrite`` removes them, and nothing the user put beside them."""
    made = (_files(out) - before) | set(_outputs(out))
    runs.write_json(out / OUTPUTS, {"files": sorted(made - {OUTPUTS})})


def _jsonable(config) -> dict:
    return json.loads(json.dumps(runs._to_jsonable(config)))


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    import jax

    module, preset, config = _resolve(args, extra)
    record = {
        "experiment": args.name,
        "preset": preset,
        "seed": args.seed,
        "config": _jsonable(config),
    }
    if args.print_config:  # every field a --set may name, with its value for this run
        print(json.dumps(record, indent=2))
        return 0
    if args.time_limit is not None and not getattr(module, "TRAINS", False):
        trains = [n for n in experiments.names() if getattr(experiments.get(n), "TRAINS", False)]
        raise ValueError(
            f"--time-limit applies to the training runs ({', '.join(trains)}); "
            f"{args.name} trains no model"
        )
    out = args.output_dir = _prepare_out(args, preset, record)  # for a Ctrl-C's line
    if args.download:  # read by dgm.data.downloads_allowed
        os.environ[DOWNLOAD_ENV] = "1"
    # After every process checked --out (joining is a barrier), before process 0 writes.
    _start_devices(args)
    progress = args.progress or (not args.no_progress and sys.stderr.isatty())
    try:
        ctx = runs.RunContext(
            out=out, resume=args.resume, progress=progress, time_limit_s=args.time_limit
        )
    except OSError as err:  # a place no directory can be made (/proc, a full disk, ...)
        raise ValueError(f"--out: cannot create the run directory {out} ({err.strerror})") from None
    record["versions"] = runs.versions()
    record["processes"] = jax.process_count()
    record["devices"] = [str(d) for d in jax.devices()]
    before = _files(out)
    runs.write_json(out / "config.json", record)
    start = time.perf_counter()
    metrics = module.run(config, jax.random.key(args.seed), ctx)
    metrics = {**metrics, "total_wall_s": time.perf_counter() - start, "seed": args.seed}
    runs.write_json(out / "metrics.json", metrics)
    from dgm.distributed import is_main_process

    if not is_main_process():  # process 0 prints and has written everything
        return 0
    _record_outputs(out, before - {"config.json", "metrics.json"})
    if hasattr(module, "summary"):
        print(module.summary(metrics))
    print(f"outputs written to {out}")
    if metrics.get("time_limited"):
        print(
            f"dgm: training stopped at --time-limit after update {metrics['updates']} and was "
            "scored there; continue it with --resume",
            file=sys.stderr,
        )
    return 0


def _bvh(args: argparse.Namespace) -> int:
    from dgm.bvh import read_bvh
    from dgm.bvh.render import animate, drawn_frames

    clip = read_bvh(args.file)
    out = animate(clip, args.out, stride=args.stride, max_frames=args.max_frames)
    drawn = len(drawn_frames(clip, args.stride, args.max_frames))
    print(f"{drawn} of the {clip.num_frames} frames of {args.file} drawn to {out}")
    return 0


def _wait_for_jax() -> None:
    """Let computations still running finish before the interpreter shuts down (exiting
    under a running XLA computation can crash), even through further Ctrl-C presses."""
    if "jax" not in sys.modules:
        return
    import jax

    while True:
        try:
            jax.block_until_ready(jax.live_arrays())
            return
        except KeyboardInterrupt:
            continue


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dgm`` console script."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "list":
        for name in experiments.names():
            print(f"{name:24s} {experiments.description(name)}")
        return 0
    if args.command in ("bvh", "sample", "compare") and extra:
        sub = parser.subcommands[args.command]
        if args.command == "bvh":
            sub = parser.bvh_commands[args.bvh]
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    ours = _sigint.install()
    try:
        if args.command == "bvh":
            return _bvh(args)
        if args.command in ("sample", "compare"):
            return _sample(args) if args.command == "sample" else _compare(args)
        run = parser.subcommands["run"]
        if args.help:
            print(_run_help(run, args, extra), end="")
            return 0
        if args.name is None:
            run.error("the following arguments are required: name")
        return _run(args, extra)
    except KeyboardInterrupt:
        _sigint.acknowledge()
        _wait_for_jax()
        print(_interrupted_line(args), file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as err:
        msg = " ".join(str(err).split()) or type(err).__name__
        print(f"dgm: error: {msg}", file=sys.stderr)
        return 1
    finally:
        if ours:
            _sigint.uninstall()


def _interrupted_line(args: argparse.Namespace) -> str:
    """The one line a Ctrl-C leaves: whether a ``dgm run`` has a checkpoint to resume."""
    run_dir = getattr(args, "output_dir", None)
    if run_dir is None:  # not a run, or one stopped before its directory was checked
        return "dgm: interrupted"
    if any(not f.name.startswith(".") for f in (run_dir / "checkpoints").glob("*")):
        return "dgm: interrupted; the last checkpoint is kept, continue with --resume"
    return "dgm: interrupted before the first checkpoint; --resume starts the run again"


def console() -> None:
    """The ``dgm`` command: :func:`main`, and after a Ctrl-C an immediate exit with 130. A
    Ctrl-C that lands while XLA compiles outside training (data generation, scoring) left
    the interpreter to crash in its finalisation (a segmentation fault, exit -11, in 7 of
    10 presses); every output is written atomically, so skipping finalisation loses
    nothing. Output piped into a reader that stops early (``dgm list | head -1``) ends
    quietly, as other commands do, not with a ``BrokenPipeError`` traceback."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        sys.exit(141)  # 128 + SIGPIPE, as a shell reports it
    if code == 130:
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    console()
