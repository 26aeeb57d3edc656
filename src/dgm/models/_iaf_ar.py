"""The IAF step's autoregressive network, from :mod:`dgm.nn.autoregressive`, on NHWC batches.

``ar_multiconv2d(z, context, [n_h] × depth_ar, [n_z, n_z])`` of the code (spec §2.5): masked
3×3 convs in raster order, the context added after the first hidden conv, strict (zero
diagonal) output convs for ``m`` and ``s``; data-dependent initialisation to unit-variance
outputs.
"""

import jax

from dgm.nn.autoregressive import ARConvNet


def make(n_z: int, n_h: int, depth_ar: int, key) -> ARConvNet:
    """``z (n_z channels) -> (m, s)`` with ``depth_ar`` hidden layers of ``n_h`` channels."""
    return ARConvNet(n_z, (n_h,) * depth_ar, key=key)


def _chw(x):
    return x.transpose(0, 3, 1, 2)


def _hwc(x):
    return x.transpose(0, 2, 3, 1)


def apply(ar: ARConvNet, z, context, init_scale: float | None):
    """``(ar, (m, s))`` for ``z`` and ``context`` in NHWC; with ``init_scale`` the network is
    first initialised on this batch (outputs of std ``init_scale``)."""
    zc, cc = _chw(z), _chw(context)
    if init_scale is not None:
        ar = ar.init_from_data(zc, cc, init_scale)
    m, s = jax.vmap(ar)(zc, cc)
    return ar, (_hwc(m), _hwc(s))
