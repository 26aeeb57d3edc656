"""The IAF ResNet VAE written straightforwardly in PyTorch: the peer of ``bench_iaf_vae.py``.

The same model as :mod:`dgm.models.iaf_vae` at the ``mnist`` preset (spec ``iaf.md`` §2):
an encoder conv (5×5, stride 2), ``depths`` levels of ResNet blocks with ``n_z`` latent
channels each, a learned top state, a sub-pixel decoder conv; every conv weight-normalised
(``w = exp(3g)·v/‖v‖`` per output channel) over the input zero-padded plus the
border-indicator channel; ELU; residual branches scaled by 0.1; log-scales clipped to ±8.
Posteriors ``down_diag``, ``down_iaf1_nl`` and ``down_iaf2_nl`` (the bidirectional ones);
the IAF step is a masked 3×3 conv net (raster order, the context added after the first hidden
conv, strict output masks for ``m`` and ``s`` stacked in one conv). Free bits per block and
channel, Bernoulli likelihood on the 28×28 interior, Adamax without bias correction,
Polyak-averaged weights, a finite-loss check per update. NCHW, autograd, fresh noise each
update. Used for timing only: no data-dependent initialisation (the first minibatch's
rescaling costs nothing per update), so it does not train to the paper's numbers; the
parameter count equals dgm's (``bench_iaf_vae.py`` asserts it).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOGSD_BOUND = 8.0


def _made(n_in: int, n_out: int, strict: bool) -> np.ndarray:
    """Output channel o sees input i iff i·n_out <= o·n_in (< when strict)."""
    i = np.arange(n_in)[None, :] * n_out
    o = np.arange(n_out)[:, None] * n_in
    return i < o if strict else i <= o


def _ar_mask(n_in: int, n_out: int, strict: bool, copies: int) -> np.ndarray:
    """(copies·n_out, n_in + 1, 3, 3): raster-order taps, the MADE rule at the centre, and
    the border channel's causal taps (no centre)."""
    causal = np.zeros((3, 3), bool)
    causal[0, :] = True
    causal[1, 0] = True
    mask = np.broadcast_to(causal, (n_out, n_in + 1, 3, 3)).copy()
    mask[:, :n_in, 1, 1] = _made(n_in, n_out, strict)
    return np.tile(mask, (copies, 1, 1, 1))


def _pad_with_indicator(x: torch.Tensor, pad: int) -> torch.Tensor:
    n, _, h, w = x.shape
    border = F.pad(x.new_zeros(n, 1, h, w), (pad,) * 4, value=1.0)
    return torch.cat([F.pad(x, (pad,) * 4), border], 1)


def _depth_to_space(x: torch.Tensor) -> torch.Tensor:
    """(N, 4C, H, W) -> (N, C, 2H, 2W); channel block 2i + j fills sub-pixel (i, j)."""
    n, c4, h, w = x.shape
    c = c4 // 4
    return x.view(n, 2, 2, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c, 2 * h, 2 * w)


class WNConv(nn.Module):
    """Weight-normalised conv with the border-indicator input channel (dgm's ``WNConv``)."""

    def __init__(self, n_in, n_out, kernel, stride=1, upsample=False, mask=None):
        super().__init__()
        n_out = n_out * (4 if upsample else 1) if mask is None else mask.shape[0]
        self.v = nn.Parameter(0.05 * torch.randn(n_out, n_in + 1, kernel, kernel))
        self.g = nn.Parameter(torch.zeros(n_out))
        self.b = nn.Parameter(torch.zeros(n_out))
        self.stride, self.upsample, self.pad = stride, upsample, (kernel - 1) // 2
        self.register_buffer("mask", None if mask is None else torch.as_tensor(mask))
        if mask is not None:
            with torch.no_grad():
                self.v.mul_(self.mask)

    def forward(self, x):
        v = self.v if self.mask is None else self.v * self.mask
        norm = v.square().sum((1, 2, 3)).clamp_min(1e-30).sqrt()
        w = v * (torch.exp(3.0 * self.g) / norm)[:, None, None, None]
        y = F.conv2d(_pad_with_indicator(x, self.pad), w, self.b, self.stride)
        return _depth_to_space(y) if self.upsample else y


class ARConvNet(nn.Module):
    """z -> (m, s): masked convs, context added after the first hidden one."""

    def __init__(self, n_z, n_h, depth_ar):
        super().__init__()
        sizes = [n_z] + [n_h] * depth_ar
        self.hidden = nn.ModuleList(
            WNConv(a, b, 3, mask=_ar_mask(a, b, False, 1))
            for a, b in zip(sizes, sizes[1:], strict=False)
        )
        self.out = WNConv(n_h, n_z, 3, mask=_ar_mask(n_h, n_z, True, 2))

    def forward(self, z, context):
        h = z
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            h = F.elu(h + context if i == 0 else h)
        return self.out(h).chunk(2, 1)


def _log_normal(z, mean, logsd):
    return -0.5 * (math.log(2 * math.pi) + 2.0 * logsd + ((z - mean) * torch.exp(-logsd)) ** 2)


class Block(nn.Module):
    def __init__(self, n_h, n_z, posterior, depth_ar, resample):
        super().__init__()
        side, kind = posterior.split("_", 1)
        if side != "down":
            raise ValueError(f"only the down_* posteriors are written; got {posterior!r}")
        self.nl, self.location_only = kind != "diag", kind == "iaf1_nl"
        self.n_h, self.n_z, self.resample = n_h, n_z, resample
        ctx = n_h if self.nl else 0
        self.up_conv1 = WNConv(n_h, n_h + 2 * n_z + ctx, 3, stride=2 if resample else 1)
        self.up_conv2 = WNConv(n_h, n_h, 3)
        self.down_conv1 = WNConv(n_h, n_h + 4 * n_z + ctx, 3)
        self.down_conv2 = WNConv(n_h + n_z, n_h, 3, upsample=resample)
        self.ar = ARConvNet(n_z, n_h, depth_ar) if self.nl else None

    def up(self, h):
        n_h, n_z = self.n_h, self.n_z
        t = self.up_conv1(F.elu(h))
        rec = (t[:, n_h : n_h + n_z], t[:, n_h + n_z : n_h + 2 * n_z].clamp(-8, 8),
               t[:, n_h + 2 * n_z :])  # fmt: skip
        out = (F.avg_pool2d(h, 2) if self.resample else h) + 0.1 * self.up_conv2(F.elu(t[:, :n_h]))
        return out, rec

    def down(self, h, rec):
        n_h, n_z = self.n_h, self.n_z
        t = self.down_conv1(F.elu(h))
        pm, ps = t[:, n_h : n_h + n_z], t[:, n_h + n_z : n_h + 2 * n_z].clamp(-8, 8)
        rm, rs = t[:, n_h + 2 * n_z : n_h + 3 * n_z], t[:, n_h + 3 * n_z : n_h + 4 * n_z]
        qm, qs, up_ctx = rec
        mean, logsd = qm + rm, (qs + rs).clamp(-8, 8)
        z = mean + torch.exp(logsd) * torch.randn_like(mean)
        logq = _log_normal(z, mean, logsd)
        if self.ar is not None:
            m, s = self.ar(z, up_ctx + t[:, n_h + 4 * n_z :])
            if self.location_only:
                z = z - 0.1 * m
            else:
                s = (0.1 * s).clamp(-8, 8)
                z = (z - 0.1 * m) * torch.exp(-s)
                logq = logq + s
        kl = logq - _log_normal(z, pm, ps)
        up = F.interpolate(h, scale_factor=2, mode="nearest") if self.resample else h
        return up + 0.1 * self.down_conv2(F.elu(torch.cat([t[:, :n_h], z], 1))), kl


class TorchIAFVAE(nn.Module):
    """The ``mnist`` preset by default: n_h 64, n_z 32, depths [2, 2], 32×32 binary images."""

    def __init__(self, n_h=64, n_z=32, depths=(2, 2), posterior="down_iaf2_nl", depth_ar=1):
        super().__init__()
        self.x_enc = WNConv(1, n_h, 5, stride=2)
        self.x_dec = WNConv(n_h, 1, 5, upsample=True)
        self.h_top = nn.Parameter(torch.zeros(n_h))
        self.logsd_x = nn.Parameter(torch.zeros(()))  # unused by Bernoulli, as in dgm
        self.blocks = nn.ModuleList(
            Block(n_h, n_z, posterior, depth_ar, resample=i > 0 and j == 0)
            for i, d in enumerate(depths)
            for j in range(d)
        )
        self.top = 32 // 2 ** len(depths)

    def loss(self, x, kl_min: float):
        """Free-bits cost, nats per image (``x`` (N, 1, 32, 32) in {0, 1}, 2-pixel padding)."""
        h = self.x_enc(x - 0.5)
        recs = []
        for block in self.blocks:
            h, rec = block.up(h)
            recs.append(rec)
        h = self.h_top[None, :, None, None].expand(x.shape[0], -1, self.top, self.top)
        kls = []
        for block, rec in zip(reversed(self.blocks), reversed(recs), strict=True):
            h, kl = block.down(h, rec)
            kls.append(kl)
        out = 0.1 * self.x_dec(F.elu(h))
        p = torch.sigmoid(out).clamp(1e-7, 1 - 1e-7)
        lp = x * torch.log(p) + (1 - x) * torch.log1p(-p)
        log_px = lp[:, :, 2:30, 2:30].sum((1, 2, 3))
        per_channel = torch.cat([kl.sum((2, 3)).mean(0) for kl in kls])
        return -log_px.mean() + torch.clamp(per_channel, min=kl_min).sum()


def train_step_fn(model, alpha=0.002, b1=0.9, b2=0.999, polyak=0.999, kl_min=0.25):
    """One update: free-bits loss, backward, Adamax without bias correction, Polyak average,
    a finite-loss check (as dgm's ``NaNGuardTrainer``)."""
    params = [p for p in model.parameters()]
    m = [torch.zeros_like(p) for p in params]
    u = [torch.full_like(p, 1e-8) for p in params]
    avg = [p.detach().clone() for p in params]

    def step(x):
        loss = model.loss(x, kl_min)
        grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"the loss is {loss.item()}")
        with torch.no_grad():
            torch._foreach_mul_(m, b1)
            torch._foreach_add_(m, grads, alpha=1 - b1)
            torch._foreach_mul_(u, b2)
            torch._foreach_maximum_(u, torch._foreach_add(torch._foreach_abs(grads), 1e-8))
            torch._foreach_addcdiv_(params, m, u, value=-alpha)
            torch._foreach_lerp_(avg, params, 1 - polyak)
        return loss

    return step


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
