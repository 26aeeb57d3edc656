"""Where the DRAW training step's time goes: kernels per scan step, and op time by kind.

    PYTHONPATH=src python benchmarks/profile_draw.py --config paper --steps 3

Compiles the training step of ``draw_mnist`` (loss, gradient, clipping and Adam: the step
``bench_draw.py`` times) and prints

- the kernels (fusions, products, copies, concatenations) in each ``while`` body of the
  optimised HLO, and outside the loops: a count that does not depend on the machine's load;
- one JSON line per (place, kind) with the summed op time per step from a ``jax.profiler``
  trace of ``--steps`` steps: places ``forward scan``, ``backward scan``, ``other loop``
  (the noise draw) and ``outside`` (Adam, clipping, the scans' zero-filled stacks); kinds
  ``LSTM products`` (the products with the 4 × LSTM gate columns, their input
  cotangents and weight gradients), ``weight-sized adds`` (accumulating those gradients),
  ``small products`` (attention, posterior, write layers, filterbanks, and reductions that
  XLA hands to the same library), ``copies/stacks`` and ``elementwise``.

Op times are summed over XLA's threads (two on this machine) and include waiting while
the machine is shared: compare shares within one run, not absolute times across runs.
"""

import os

from dgm._runtime import configure_cpu

configure_cpu()

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dgm.experiments import draw_mnist  # noqa: E402

_KERNEL = re.compile(
    r"= \S+ (fusion|dot|copy|concatenate|custom-call|reduce|dynamic-update-slice|dynamic-slice"
    r"|transpose|broadcast)\("
)
_HEADER = re.compile(r"^(ENTRY )?%?([\w.-]+) .*\{$")
_INSTR = re.compile(r"^\s*(ROOT )?%([\w.-]+) = (\S+) (\S+)\(")


def compiled_step(config):
    """The jitted training step on the partitioned state, its arguments and HLO text."""
    model = draw_mnist.build_model(config, jax.random.key(0))
    cfg = config.train
    trainer = draw_mnist._trainer(cfg.learning_rate, cfg.b1, cfg.b2, cfg.clip_norm,
                                  config.clip, 1, config.matmul_dtype)  # fmt: skip
    arrays, static = eqx.partition(trainer.init(model), eqx.is_array)

    def step(a, batch, key):
        new, metrics = trainer._step(eqx.combine(a, static), batch, key)
        return eqx.filter(new, eqx.is_array), metrics

    x = (np.random.default_rng(0).uniform(size=(100, 784)) > 0.87).astype(np.float32)
    batch = (jnp.asarray(x), {"update_index": jnp.float32(0)})
    fn = jax.jit(step)
    text = fn.lower(arrays, batch, jax.random.key(0)).compile().as_text()
    return fn, (arrays, batch), text


def parse_hlo(text: str):
    """Per instruction: its computation, result shape and opcode; per ``while``: its body."""
    info, bodies, comp = {}, {}, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            comp = header.group(2)
            continue
        m = _INSTR.match(line)
        if m:
            info[m.group(2)] = (comp, m.group(3), m.group(4), bool(_KERNEL.search(line)))
        loop = re.search(r"%(while[\w.]*) = .*body=%([\w.-]+)", line)
        if loop:
            bodies[loop.group(2)] = (loop.group(1), line)
    return info, bodies


def loop_names(bodies) -> dict:
    """Names the loops: the two with the (batch, 4 × LSTM) stacks are the forward scan (the
    first) and the backward scan; any other is ``other loop``."""
    names, scans = {}, []
    for body, (_, line) in bodies.items():
        if "f32[100,784]" in line:
            scans.append(body)
        names[body] = "other loop"
    for body, place in zip(scans, ("forward scan", "backward scan"), strict=False):
        names[body] = place
    return names


def _lstm_inputs(config) -> str:
    """The widths of the LSTMs' inputs (encoder with and without x's columns, decoder)."""
    read = 2 * (784 if not config.read_attn else config.read_n**2)
    enc = read + config.dec_size + config.enc_size
    widths = {enc, enc - 784 * (not config.read_attn), config.z_size + config.dec_size}
    return "|".join(str(w) for w in sorted(widths))


def kind_of(name: str, shape: str, config, place: str) -> str:
    h4 = 4 * config.enc_size
    lstm = re.search(rf"\b{h4}\]|\[{h4},|\[\d+,({_lstm_inputs(config)})\]", shape)
    product = "dot" in name or "ynn" in name
    if product and lstm:
        return "LSTM products"
    if product:
        return "small products"
    if "add" in name and lstm and place == "backward scan":
        return "weight-sized adds"
    if any(s in name for s in ("dynamic", "copy", "concatenate", "broadcast", "slice")):
        return "copies/stacks"
    return "elementwise"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="paper", choices=sorted(draw_mnist.PRESETS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--matmul-dtype", default="float32", choices=draw_mnist.MATMUL_DTYPES)
    args = parser.parse_args()
    config = dataclasses.replace(draw_mnist.PRESETS[args.config], matmul_dtype=args.matmul_dtype)
    fn, (arrays, batch), text = compiled_step(config)
    info, bodies = parse_hlo(text)
    places = loop_names(bodies)
    kernels = collections.Counter()
    for comp, _, _, is_kernel in info.values():
        if is_kernel and (comp in places or comp.startswith("main")):
            kernels[places.get(comp, "outside")] += 1
    print(json.dumps({"bench": "draw_kernels", "config": args.config, **kernels}), flush=True)

    jax.block_until_ready(fn(arrays, batch, jax.random.key(1)))
    with tempfile.TemporaryDirectory(prefix="draw-profile-") as trace_dir:
        with jax.profiler.trace(trace_dir):
            for i in range(args.steps):
                arrays = jax.block_until_ready(fn(arrays, batch, jax.random.key(i))[0])
        pattern = os.path.join(trace_dir, "plugins/profile/*/*.trace.json.gz")
        events = json.load(gzip.open(sorted(glob.glob(pattern))[-1]))["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}  # fmt: skip
    total = collections.defaultdict(float)
    for e in events:
        if e.get("ph") != "X" or "XLAEigen" not in threads.get((e["pid"], e["tid"]), ""):
            continue
        if e["name"] not in info or e["name"].startswith("while"):
            continue
        comp, shape, _, _ = info[e["name"]]
        place = places.get(comp, "outside")
        total[(place, kind_of(e["name"], shape, config, place))] += e["dur"] / 1000
    grand = sum(total.values())
    for (place, kind), ms in sorted(total.items(), key=lambda kv: -kv[1]):
        print(json.dumps({"bench": "draw_op_time", "config": args.config, "place": place,
                          "kind": kind, "ms_per_step": round(ms / args.steps, 1),
                          "share": round(ms / grand, 3)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
