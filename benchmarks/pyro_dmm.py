"""A Pyro Deep Markov Model in the configuration of Pyro's ``examples/dmm.py``, for timing.

Written from the description in ``specs/dmm.md`` §7.2 (not copied from Pyro): emitter
z → 100 → 100 → 88 (ReLU, sigmoid output); gated transition of width 200 with its linear
mean path initialised to the identity and a softplus **scale**; combiner
½(tanh(W z_{t−1} + b) + h_t); guide RNN a ReLU ``nn.RNN(88 → 600)`` over the reversed
sequence; learned z₀ and z_q,0; sampled (not analytic) KL terms through ``Trace_ELBO``;
optional IAF steps ``affine_autoregressive(100, hidden_dims=[100])``; ``ClippedAdam``
(lr 3e-4, betas 0.96/0.999, clip norm 10, lr decay 0.99996, weight decay 2.0).

Only imported by ``bench_dmm.py`` when ``torch`` and ``pyro-ppl`` are installed.
"""

import time

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.transforms import affine_autoregressive
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from torch import nn


class Emitter(nn.Module):
    def __init__(self, obs_dim, z_dim, hidden):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, obs_dim),
            nn.Sigmoid(),
        )

    def forward(self, z):
        return self.net(z)


class GatedTransition(nn.Module):
    def __init__(self, z_dim, hidden):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, z_dim))
        self.proposal = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, z_dim))
        self.linear_loc = nn.Linear(z_dim, z_dim)
        with torch.no_grad():
            self.linear_loc.weight.copy_(torch.eye(z_dim))
            self.linear_loc.bias.zero_()
        self.scale = nn.Linear(z_dim, z_dim)

    def forward(self, z):
        g = torch.sigmoid(self.gate(z))
        prop = self.proposal(z)
        loc = (1.0 - g) * self.linear_loc(z) + g * prop
        return loc, nn.functional.softplus(self.scale(torch.relu(prop)))


class Combiner(nn.Module):
    def __init__(self, z_dim, rnn_dim):
        super().__init__()
        self.z_to_h = nn.Linear(z_dim, rnn_dim)
        self.loc = nn.Linear(rnn_dim, z_dim)
        self.scale = nn.Linear(rnn_dim, z_dim)

    def forward(self, z_prev, h_rnn):
        h = 0.5 * (torch.tanh(self.z_to_h(z_prev)) + h_rnn)
        return self.loc(h), nn.functional.softplus(self.scale(h))


class PyroDMM(nn.Module):
    """Model and guide over a padded batch ``x (B, T, 88)`` with ``mask (B, T)``."""

    def __init__(
        self,
        obs_dim=88,
        z_dim=100,
        emission_dim=100,
        transition_dim=200,
        rnn_dim=600,
        num_iafs=0,
        iaf_dim=100,
    ):
        super().__init__()
        self.emitter = Emitter(obs_dim, z_dim, emission_dim)
        self.trans = GatedTransition(z_dim, transition_dim)
        self.combiner = Combiner(z_dim, rnn_dim)
        self.rnn = nn.RNN(obs_dim, rnn_dim, nonlinearity="relu", batch_first=True)
        self.iafs = [affine_autoregressive(z_dim, hidden_dims=[iaf_dim]) for _ in range(num_iafs)]
        self.iafs_modules = nn.ModuleList(self.iafs)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))
        self.z_dim = z_dim

    def model(self, x, mask, annealing=1.0):
        pyro.module("dmm", self)
        batch, steps = x.shape[:2]
        z_prev = self.z_0.expand(batch, self.z_dim)
        with pyro.plate("batch", batch):
            for t in range(steps):
                loc, scale = self.trans(z_prev)
                m = mask[:, t : t + 1].bool()
                with poutine.scale(scale=annealing):
                    z_t = pyro.sample(f"z_{t + 1}", dist.Normal(loc, scale).mask(m).to_event(1))
                probs = self.emitter(z_t)
                pyro.sample(f"x_{t + 1}", dist.Bernoulli(probs).mask(m).to_event(1), obs=x[:, t])
                z_prev = z_t

    def guide(self, x, mask, annealing=1.0):
        pyro.module("dmm", self)
        batch, steps = x.shape[:2]
        lengths = mask.sum(1).long()
        # Reverse each sequence within its own length, so the RNN starts at the last frame.
        idx = (lengths[:, None] - 1 - torch.arange(steps)[None, :]).clamp(min=0)
        x_rev = torch.gather(x, 1, idx[:, :, None].expand_as(x))
        packed = nn.utils.rnn.pack_padded_sequence(
            x_rev, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        h0 = self.h_0.expand(1, batch, self.h_0.shape[-1]).contiguous()
        out, _ = self.rnn(packed, h0)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=steps)
        h_rnn = torch.gather(out, 1, idx[:, :, None].expand_as(out))  # back to forward time
        z_prev = self.z_q_0.expand(batch, self.z_dim)
        with pyro.plate("batch", batch):
            for t in range(steps):
                loc, scale = self.combiner(z_prev, h_rnn[:, t])
                base = dist.Normal(loc, scale)
                if self.iafs:
                    q = dist.TransformedDistribution(base.to_event(1), self.iafs)
                else:
                    q = base.to_event(1)
                with poutine.scale(scale=annealing):
                    z_prev = pyro.sample(f"z_{t + 1}", q.mask(mask[:, t].bool()))


def make_svi(num_iafs: int, seed: int = 0):
    """The model, an ``SVI`` object with Pyro's example optimiser settings."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    dmm = PyroDMM(num_iafs=num_iafs)
    optim = ClippedAdam(
        {"lr": 3e-4, "betas": (0.96, 0.999), "clip_norm": 10.0, "lrd": 0.99996, "weight_decay": 2.0}
    )
    return dmm, SVI(dmm.model, dmm.guide, optim, loss=Trace_ELBO())


def epoch_timer(batches, num_iafs: int, max_batches: int = 0):
    """A function ``timed(round) -> dict`` that runs Pyro's SVI over the given (x, mask)
    NumPy batches and times it; one untimed warm-up step is taken here.

    With ``max_batches`` > 0 only that many batches are run per call (a different slice
    each round) and the epoch time is extrapolated by padded time steps, in proportion to
    which Pyro's per-step cost grows.
    """
    _, svi = make_svi(num_iafs)
    tensors = [(torch.tensor(np.asarray(x)), torch.tensor(np.asarray(m))) for x, m in batches]
    svi.step(*tensors[0])  # registers parameters; not timed
    steps_all = sum(x.shape[0] * x.shape[1] for x, _ in tensors)

    def timed(round_: int) -> dict:
        if max_batches:
            start = (round_ * max_batches) % len(tensors)
            chosen = (tensors + tensors)[start : start + max_batches]
        else:
            chosen = tensors
        t0, c0 = time.perf_counter(), time.process_time()
        losses = [svi.step(x, m) for x, m in chosen]
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        scale = steps_all / sum(x.shape[0] * x.shape[1] for x, _ in chosen)
        return {
            "timed_batches": len(chosen),
            "s_per_epoch": elapsed * scale,
            "cpu_s_per_epoch": cpu * scale,
            "extrapolated": len(chosen) < len(tensors),
            "finite_loss": bool(np.all(np.isfinite(losses))),
        }

    return timed
