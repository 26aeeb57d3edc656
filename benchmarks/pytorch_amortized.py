"""``dgm.amortize``'s training written straightforwardly in PyTorch: the peer of
``bench_amortized.py``.

The same q(z | y) as :class:`dgm.models.amortized.AmortizedPosterior`: an ELU MLP encoder
(two hidden layers) giving the mean, softplus scale and a context; then affine IAF steps
(``z ← (z − 0.1 m) / exp(0.1 s)``), each a MADE network with one ReLU hidden layer, the
context added to its pre-activation, strict output masks, the variable order reversed
between steps. The loss is the batch-mean negative ELBO of a linear-Gaussian model
(``z ~ N(0, I)``, ``y = A z + σ n``) on ``y`` simulated each step; Adam with a
cosine-decayed learning rate. Used for timing: parameter count equal to dgm's
(``bench_amortized.py`` asserts it).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _made(n_in: int, n_out: int, strict: bool) -> torch.Tensor:
    i = np.arange(n_in)[None, :] * n_out
    o = np.arange(n_out)[:, None] * n_in
    return torch.as_tensor(i < o if strict else i <= o, dtype=torch.float32)


class IAFStep(nn.Module):
    def __init__(self, dim: int, hidden: int, context: int, reverse: bool):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.ctx = nn.Linear(context, hidden)
        self.out = nn.Linear(hidden, 2 * dim)
        self.register_buffer("m_in", _made(dim, hidden, strict=False))
        self.register_buffer("m_out", _made(hidden, dim, strict=True).repeat(2, 1))
        self.reverse = reverse

    def forward(self, z, h):
        x = z.flip(-1) if self.reverse else z
        a = F.relu(F.linear(x, self.inp.weight * self.m_in, self.inp.bias) + self.ctx(h))
        m, s = F.linear(a, self.out.weight * self.m_out, self.out.bias).chunk(2, -1)
        if self.reverse:
            m, s = m.flip(-1), s.flip(-1)
        return (z - 0.1 * m) * torch.exp(-0.1 * s), -(0.1 * s).sum(-1)


class AmortizedQ(nn.Module):
    def __init__(self, latent: int, obs: int, hidden: int, context: int, num_flows: int):
        super().__init__()
        self.k = latent
        self.encoder = nn.Sequential(
            nn.Linear(obs, hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
            nn.Linear(hidden, 2 * latent + context),
        )  # fmt: skip
        self.steps = nn.ModuleList(
            IAFStep(latent, hidden, context, bool(i % 2)) for i in range(num_flows)
        )

    def sample_and_log_prob(self, y):
        out = self.encoder(y)
        k = self.k
        mean, scale, h = out[:, :k], F.softplus(out[:, k : 2 * k] + 0.5413), out[:, 2 * k :]
        eps = torch.randn_like(mean)
        z = mean + scale * eps
        log_q = -0.5 * (eps**2).sum(-1) - 0.5 * k * math.log(2 * math.pi) - scale.log().sum(-1)
        for step in self.steps:
            z, log_det = step(z, h)
            log_q = log_q - log_det
        return z, log_q


def train(q, a: np.ndarray, sigma: float, num_steps: int, batch: int, lr: float = 1e-3):
    """``num_steps`` Adam steps on the linear-Gaussian model ``y = A z + σ n``; the losses."""
    a = torch.as_tensor(a, dtype=torch.float32)
    opt = torch.optim.Adam(q.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, num_steps)
    losses = []
    for _ in range(num_steps):
        z_true = torch.randn(batch, a.shape[1])
        y = z_true @ a.T + sigma * torch.randn(batch, a.shape[0])
        z, log_q = q.sample_and_log_prob(y)
        r = y - z @ a.T
        log_joint = -0.5 * (z**2).sum(-1) - 0.5 * (r**2).sum(-1) / sigma**2
        loss = (log_q - log_joint).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return np.asarray(losses)
