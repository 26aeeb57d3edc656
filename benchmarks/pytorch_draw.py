"""DRAW written straightforwardly in PyTorch: the peer of ``bench_draw.py``.

The same model as :mod:`dgm.models.draw` (paper filterbank grid, learned initial canvas and
LSTM outputs, forget bias +1, fresh noise per step, Bernoulli likelihood on σ(c_T), KL with
−½ per latent dimension per step), batched, a Python loop over the T steps, autograd for the
gradient, ``torch.optim.Adam`` (β1 0.5) with per-variable norm clipping at 5. Used for
timing only.
"""

import torch
from torch import nn


def _filterbank(params, n: int, rows: int, cols: int):
    gx_t, gy_t, log_s2, log_d, log_gamma = params.unbind(-1)
    gx = (cols + 1) / 2 * (gx_t + 1)
    gy = (rows + 1) / 2 * (gy_t + 1)
    delta = (max(rows, cols) - 1) / max(n - 1, 1) * torch.exp(log_d)
    sigma2 = torch.exp(log_s2)[:, None, None]
    offsets = torch.arange(n, dtype=params.dtype) - (n - 1) / 2

    def axis(centre, size):
        mu = centre[:, None] + offsets[None, :] * delta[:, None]
        coords = torch.arange(1, size + 1, dtype=params.dtype)
        f = torch.exp(-((coords[None, None, :] - mu[:, :, None]) ** 2) / (2 * sigma2))
        return f / f.sum(-1, keepdim=True).clamp_min(1e-8)

    return axis(gy, rows), axis(gx, cols), torch.exp(log_gamma)[:, None, None]


class TorchDRAW(nn.Module):
    def __init__(self, num_steps, z_size, enc_size, dec_size, read_n, write_n, rows=28, cols=28):
        super().__init__()
        self.T, self.Z, self.read_n, self.write_n = num_steps, z_size, read_n, write_n
        self.rows, self.cols = rows, cols
        pixels = rows * cols
        read_size = 2 * (read_n**2 if read_n else pixels)
        self.enc = nn.LSTMCell(read_size + dec_size, enc_size)
        self.dec = nn.LSTMCell(z_size, dec_size)
        self.post = nn.Linear(enc_size, 2 * z_size)
        self.read_att = nn.Linear(dec_size, 5) if read_n else None
        self.write_att = nn.Linear(dec_size, 5) if write_n else None
        self.write = nn.Linear(dec_size, write_n**2 if write_n else pixels)
        self.c0 = nn.Parameter(torch.zeros(pixels))
        self.h_enc0 = nn.Parameter(torch.zeros(enc_size))
        self.h_dec0 = nn.Parameter(torch.zeros(dec_size))
        for cell in (self.enc, self.dec):  # forget bias 1 (gate order i, f, g, o)
            with torch.no_grad():
                cell.bias_hh.zero_()
                cell.bias_ih.zero_()
                cell.bias_ih[cell.hidden_size : 2 * cell.hidden_size] = 1.0

    def _read(self, x, x_hat, h_dec):
        if not self.read_n:
            return torch.cat([x, x_hat], 1)
        f_y, f_x, gamma = _filterbank(self.read_att(h_dec), self.read_n, self.rows, self.cols)
        imgs = torch.stack([x, x_hat], 1).view(-1, 2, self.rows, self.cols)
        g = f_y[:, None] @ imgs @ f_x[:, None].transpose(-1, -2)
        return (gamma[:, None] * g).flatten(1)

    def _write(self, h_dec):
        w = self.write(h_dec)
        if not self.write_n:
            return w
        n = self.write_n
        f_y, f_x, gamma = _filterbank(self.write_att(h_dec), n, self.rows, self.cols)
        return ((f_y.transpose(1, 2) @ w.view(-1, n, n) @ f_x) / gamma).flatten(1)

    def forward(self, x):
        b = x.shape[0]
        c = self.c0.expand(b, -1)
        h_enc = self.h_enc0.expand(b, -1)
        h_dec = self.h_dec0.expand(b, -1)
        s_enc, s_dec = torch.zeros_like(h_enc), torch.zeros_like(h_dec)
        kl = 0.0
        for _ in range(self.T):
            r = self._read(x, x - torch.sigmoid(c), h_dec)
            h_enc, s_enc = self.enc(torch.cat([r, h_dec], 1), (h_enc, s_enc))
            mu, log_sigma = self.post(h_enc).chunk(2, 1)
            z = mu + torch.exp(log_sigma) * torch.randn_like(mu)
            h_dec, s_dec = self.dec(z, (h_dec, s_dec))
            c = c + self._write(h_dec)
            kl = kl + 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 2 * log_sigma - 1).sum(1)
        recon = nn.functional.binary_cross_entropy_with_logits(c, x, reduction="none").sum(1)
        return (recon + kl).mean()


def train_step_fn(model: TorchDRAW, lr=1e-3, bf16: bool = False):
    """One Adam update; ``bf16``: the forward under ``torch.autocast`` in bfloat16 (PyTorch's
    mixed precision on CPU: its products, the LSTM cells' included, in bfloat16)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))

    def step(x):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x)
        loss.backward()
        for p in model.parameters():
            torch.nn.utils.clip_grad_norm_([p], 5.0)
        opt.step()
        return float(loss.detach())

    return step


@torch.no_grad()
def sample(model: TorchDRAW, num: int):
    h_dec = model.h_dec0.expand(num, -1)
    s_dec, c = torch.zeros_like(h_dec), model.c0.expand(num, -1)
    for _ in range(model.T):
        h_dec, s_dec = model.dec(torch.randn(num, model.Z), (h_dec, s_dec))
        c = c + model._write(h_dec)
    return torch.sigmoid(c)
