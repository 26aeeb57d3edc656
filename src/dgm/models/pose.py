"""The human-pose generator of Graham & Storkey: bone lengths, a joint-angle VAE decoder,
forward kinematics on a BVH skeleton, and one or two pinhole cameras.

Inputs (binocular, noisy), M = 216::

    u = [u_len (13) | u_ang_latent (30) | u_ang_noise (94) | u_cam (3) | u_obs_noise (76)]

- bone lengths ℓ = exp(μ + u_len · U), U the upper Cholesky factor of Σ (row vectors);
- angles θ = atan2(r[47:], r[:47]), r = mean + exp(½ logvar) ⊙ u_ang_noise, where
  [mean | logvar] is the decoder's output at u_ang_latent (tanh layers with residual skips);
- forward kinematics on the shipped 21-joint skeleton: rotation channels in file order take
  the 16 fixed angles by name and θ in order; each bone has direction offset/‖offset‖ and
  length ℓ[map(node)]; 19 joints are kept (the skip list), as homogeneous 4-vectors P (4×19);
- camera position t = [0.1 u_cam0, 0.1 u_cam1, exp(1.5 + 0.5 u_cam2)], rotation R_y(π),
  focal length e²; camera k is C_k = diag(f, f, 1) [R | t ± (0.5, 0, 0)] and sees
  x_k = (C_k P)[:2] / (C_k P)[2], flattened row-major (19 x then 19 y);
- y = f(u[:140]) + σ u[140:] with the noise-free map f (140 → 76) and σ = 0.001 (notebook) or
  0.01 (thesis). The monocular option keeps one camera at t (N = 38).

A joint at non-positive depth (the subject behind a camera) is a failed projection: its image
coordinates are NaN, which the samplers treat as a rejected proposal (never a drawn state).

References:
    M. M. Graham and A. J. Storkey, "Asymptotically exact inference in differentiable
    generative models", AISTATS 2017 / EJS 2017 (pose experiment; see spec §4.2).
"""

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from dgm.bvh.jacobian import kinematics_jacobian
from dgm.bvh.skeleton import Skeleton, global_transforms

SIGMA = {"notebook": 0.001, "thesis": 0.01}
NUM_LENGTHS, NUM_LATENT, NUM_ANGLES, NUM_CAMERA = 13, 30, 47, 3
LATENT_DIM = NUM_LENGTHS + NUM_LATENT + 2 * NUM_ANGLES + NUM_CAMERA  # 140
FOCAL_LENGTH = float(np.exp(2.0))
BASELINE = 0.5
SKIP = (
    "hips",
    "leftshoulder",
    "rightshoulder",
    "lefthandthumb1",
    "righthandthumb1",
    "lefthandthumb1endsite",
    "righthandthumb1endsite",
    "lefttoebaseendsite",
    "righttoebaseendsite",
)
LENGTH_OF_NODE = {
    "spine": "waist",
    "head": "spine",
    "headendsite": "head",
    "shoulder": "mid-spine",
    "arm": "half-shoulder",
    "forearm": "upper-arm",
    "hand": "lower-arm",
    "handendsite": "hand",
    "upleg": "half-hip",
    "leg": "upper-leg",
    "foot": "lower-leg",
    "toebase": "back-foot",
    "toebaseendsite": "fore-foot",
}
OUTPUT_JOINTS = (
    "Spine Head HeadEndSite LeftArm LeftForeArm LeftHand LeftHandEndSite RightArm RightForeArm "
    "RightHand RightHandEndSite LeftUpLeg LeftLeg LeftFoot LeftToeBase RightUpLeg RightLeg "
    "RightFoot RightToeBase"
).split()


# R_z(roll) R_x(pitch) R_y(yaw) at (yaw, pitch, roll) = (π, 0, 0), in float64 as computed.
_CAMERA_ROTATION = np.array(
    [[np.cos(np.pi), 0.0, np.sin(np.pi)], [0.0, 1.0, 0.0], [-np.sin(np.pi), 0.0, np.cos(np.pi)]]
)


class PoseParts(NamedTuple):
    """The shipped pieces the generator is built from (NumPy / plain Python)."""

    skeleton: Skeleton
    fixed_angles: dict[str, float]
    log_length_mean: np.ndarray  # (13,)
    log_length_chol: np.ndarray  # (13, 13) upper: Uᵀ U = Σ
    length_order: dict[str, int]
    decoder: tuple[tuple[np.ndarray, np.ndarray], ...]  # (W_l, b_l), l = 0..6, h @ W + b


def _length_name(node: str) -> str | None:
    """The bone-length name of a (lower-case) node, by the map of spec §4.2."""
    for side in ("left", "right"):
        if node.startswith(side):
            return LENGTH_OF_NODE.get(node[len(side) :])
    return LENGTH_OF_NODE.get(node) if node in ("spine", "head", "headendsite") else None


def _channel_plan(skeleton: Skeleton, fixed: dict[str, float]):
    """Frame indices of the free angles, and of the fixed ones with their values."""
    free, fixed_idx, fixed_val = [], [], []
    used = set()
    for k, (label, chan) in enumerate(
        zip(skeleton.channel_labels, _channels(skeleton), strict=True)
    ):
        if chan.endswith("position"):
            continue
        if label in fixed:
            fixed_idx.append(k)
            fixed_val.append(float(fixed[label]))
            used.add(label)
        else:
            free.append(k)
    missing = sorted(set(fixed) - used)
    if missing:
        raise ValueError(f"fixed angles {missing} name no rotation channel of the skeleton")
    if len(free) != NUM_ANGLES:
        raise ValueError(
            f"the skeleton has {len(free)} free rotation channels (after the {len(used)} fixed "
            f"ones); the angle model gives {NUM_ANGLES}: the skeleton does not match the model"
        )
    return tuple(free), tuple(fixed_idx), tuple(fixed_val)


def _channels(skeleton: Skeleton) -> list[str]:
    return [c for chans in skeleton.channels if chans is not None for c in chans]


def _length_plan(skeleton: Skeleton, order: dict[str, int]):
    """Per node: index into the 13 lengths, or -1 to keep the raw offset; output nodes."""
    index, outputs = [], []
    for i, name in enumerate(skeleton.names):
        low = name.lower()
        length = _length_name(low)
        keep = low not in SKIP
        if keep:
            outputs.append(i)
        if keep and length is None and np.linalg.norm(skeleton.offsets[i]) > 0:
            raise ValueError(f"skeleton node {name!r} has a bone but no length in the model")
        index.append(order[length] if length is not None else -1)
    names = [skeleton.names[i] for i in outputs]
    if names != OUTPUT_JOINTS:
        raise ValueError(f"the skeleton's output joints are {names}; expected {OUTPUT_JOINTS}")
    return tuple(index), tuple(outputs)


class PoseGenerator(eqx.Module):
    """y = f(u[:140]) + σ u[140:]: 3-D pose → one or two camera images (see the module doc).

    Build it with :meth:`from_parts` (or ``dgm.data.pose.pose_generator``).
    """

    skeleton: Skeleton
    log_length_mean: Float[ArrayLike, " 13"]
    log_length_chol: Float[ArrayLike, "13 13"]
    decoder: tuple
    fixed_values: Float[ArrayLike, " fixed"]
    free_channels: tuple[int, ...] = eqx.field(static=True)
    fixed_channels: tuple[int, ...] = eqx.field(static=True)
    length_index: tuple[int, ...] = eqx.field(static=True)
    output_nodes: tuple[int, ...] = eqx.field(static=True)
    sigma: float = eqx.field(static=True)
    binocular: bool = eqx.field(static=True)

    @classmethod
    def from_parts(
        cls, parts: PoseParts, sigma: float = SIGMA["notebook"], binocular: bool = True
    ) -> "PoseGenerator":
        """Check the parts fit together and build the generator.

        Raises:
            ValueError: a skeleton whose joints or channels do not match the angle and
                length models, or a non-positive ``sigma``.
        """
        if not sigma > 0:
            raise ValueError(f"`sigma` must be positive; got {sigma!r}")
        free, fixed_idx, fixed_val = _channel_plan(parts.skeleton, parts.fixed_angles)
        length_index, outputs = _length_plan(parts.skeleton, parts.length_order)
        out_dim = parts.decoder[-1][0].shape[1]
        if out_dim != 4 * NUM_ANGLES or parts.decoder[0][0].shape[0] != NUM_LATENT:
            raise ValueError(
                f"decoder maps {parts.decoder[0][0].shape[0]} → {out_dim}; expected 30 → 188"
            )
        return cls(
            skeleton=parts.skeleton,
            log_length_mean=np.asarray(parts.log_length_mean, np.float64),
            log_length_chol=np.asarray(parts.log_length_chol, np.float64),
            decoder=tuple((np.asarray(w), np.asarray(b)) for w, b in parts.decoder),
            fixed_values=np.asarray(fixed_val, np.float64),
            free_channels=free,
            fixed_channels=fixed_idx,
            length_index=length_index,
            output_nodes=outputs,
            sigma=float(sigma),
            binocular=bool(binocular),
        )

    # sizes
    @property
    def latent_dim(self) -> int:
        """Inputs of the noise-free map f: 140."""
        return LATENT_DIM

    @property
    def output_dim(self) -> int:
        return (4 if self.binocular else 2) * len(self.output_nodes)

    @property
    def input_dim(self) -> int:
        """Inputs of the noisy generator: 140 + output_dim (216 binocular)."""
        return LATENT_DIM + self.output_dim

    def output_bones(self) -> np.ndarray:
        """``(bones, 2)`` (parent, child) pairs of columns of P for drawing: each output joint
        joins its nearest output ancestor; joints with none (the legs, below the skipped
        Hips) join the first such joint (the Spine)."""
        column = {node: k for k, node in enumerate(self.output_nodes)}
        pairs, roots = [], []
        for k, node in enumerate(self.output_nodes):
            p = self.skeleton.parents[node]
            while p >= 0 and p not in column:
                p = self.skeleton.parents[p]
            if p >= 0:
                pairs.append((column[p], k))
            elif roots:
                pairs.append((roots[0], k))
            else:
                roots.append(k)
        return np.asarray(pairs, dtype=int)

    # pieces
    def bone_lengths(self, u_len: Float[Array, " 13"]) -> Float[Array, " 13"]:
        """ℓ = exp(μ + u_len · U)."""
        dtype = u_len.dtype
        return jnp.exp(_as(self.log_length_mean, dtype) + u_len @ _as(self.log_length_chol, dtype))

    def decoder_output(self, u_latent: Float[Array, " 30"]) -> tuple[Array, Array]:
        """The decoder's (mean, log-variance) of r, each (94,)."""
        layers = [(_as(w, u_latent.dtype), _as(b, u_latent.dtype)) for w, b in self.decoder]
        (w0, b0), *hidden, (w_out, b_out) = layers
        h = jnp.tanh(u_latent @ w0 + b0)
        for w, b in hidden:
            h = jnp.tanh(h @ w + b) + h
        out = h @ w_out + b_out
        return out[: 2 * NUM_ANGLES], out[2 * NUM_ANGLES :]

    def joint_angles(
        self, u_latent: Float[Array, " 30"], u_noise: Float[Array, " 94"]
    ) -> Float[Array, " 47"]:
        """θ = atan2(r[47:], r[:47]) with r = mean + exp(½ logvar) ⊙ u_noise."""
        mean, log_var = self.decoder_output(u_latent)
        r = mean + jnp.exp(0.5 * log_var) * u_noise
        return jnp.arctan2(r[NUM_ANGLES:], r[:NUM_ANGLES])

    def channel_values(self, angles: Float[Array, " 47"]) -> Float[Array, " channels"]:
        """The skeleton's frame: free angles, fixed angles, and 0 for the root's position."""
        frame = jnp.zeros(self.skeleton.num_channels, angles.dtype)
        frame = frame.at[np.asarray(self.free_channels)].set(angles)
        return frame.at[np.asarray(self.fixed_channels)].set(_as(self.fixed_values, angles.dtype))

    def node_lengths(self, lengths: Float[Array, " 13"]) -> Float[Array, " nodes"]:
        """Per node: ℓ[map(node)], or the raw offset length of an unmapped node."""
        index = np.asarray(self.length_index)
        raw = np.linalg.norm(np.asarray(self.skeleton.offsets), axis=1)
        picked = lengths[np.maximum(index, 0)]
        return jnp.where(index >= 0, picked, jnp.asarray(raw, lengths.dtype))

    def joint_positions(self, u: ArrayLike) -> Float[Array, "4 19"]:
        """The 19 output joints as homogeneous columns P (4×19), from the 140 latent inputs."""
        u = self._check(u, self.latent_dim, "u")
        u_len, u_lat, u_ang, _ = jnp.split(u, np.cumsum([13, 30, 94]))
        return self.pose(self.bone_lengths(u_len), self.joint_angles(u_lat, u_ang))

    def pose(
        self, lengths: Float[Array, " 13"], angles: Float[Array, " 47"]
    ) -> Float[Array, "4 19"]:
        """Forward kinematics: P (4×19) from the 13 bone lengths and 47 free angles."""
        node_lengths = self.node_lengths(lengths)
        transforms = global_transforms(self.skeleton, self.channel_values(angles), node_lengths)
        return transforms[np.asarray(self.output_nodes), :, 3].T

    def camera_translation(self, u_cam: Float[Array, " 3"]) -> Float[Array, " 3"]:
        """t = [0.1 u₀, 0.1 u₁, exp(1.5 + 0.5 u₂)]."""
        return jnp.stack([0.1 * u_cam[0], 0.1 * u_cam[1], jnp.exp(1.5 + 0.5 * u_cam[2])])

    def camera_matrices(self, t: Float[Array, " 3"]) -> Float[Array, "cams 3 4"]:
        """C_k = diag(f, f, 1) [R_y(π) | t_k], t_k = t ± (0.5, 0, 0) (binocular) or t."""
        shifts = [[BASELINE, 0, 0], [-BASELINE, 0, 0]] if self.binocular else [[0, 0, 0]]
        scale = np.array([FOCAL_LENGTH, FOCAL_LENGTH, 1.0])
        rot = jnp.asarray(scale[:, None] * _CAMERA_ROTATION, t.dtype)
        cols = (t[None, :] + jnp.asarray(shifts, t.dtype)) * jnp.asarray(scale[None, :], t.dtype)
        rots = jnp.broadcast_to(rot, (len(shifts), 3, 3))
        return jnp.concatenate([rots, cols[:, :, None]], axis=2)

    def depths(self, u: ArrayLike) -> Float[Array, "cams 19"]:
        """Each joint's depth in each camera; a projection needs all of them positive.
        ``u``: the 140 latent inputs, or all 216 inputs (the noise ones do not matter)."""
        arr = jnp.asarray(u)
        size = self.input_dim if arr.shape == (self.input_dim,) else self.latent_dim
        u = self._check(arr, size, "u")[: self.latent_dim]
        cams = self.camera_matrices(self.camera_translation(u[-NUM_CAMERA:]))
        return (cams @ self.joint_positions(u))[:, 2]

    def projection_ok(self, u: ArrayLike) -> Bool[Array, ""]:
        """Whether every joint is in front of every camera (u: the 140 latent inputs, or
        all 216)."""
        return jnp.all(self.depths(u) > 0)

    def noise_free(self, u: ArrayLike) -> Float[Array, " obs"]:
        """f(u): the noise-free image coordinates from the 140 latent inputs; NaN where a
        joint is at non-positive depth (a failed projection)."""
        u = self._check(u, self.latent_dim, "u")
        return self.image(self.joint_positions(u), self.camera_translation(u[-NUM_CAMERA:]))

    def image(self, positions: Float[Array, "4 19"], t: Float[Array, " 3"]) -> Float[Array, " obs"]:
        """The cameras' image coordinates of P at camera position t (NaN behind a camera)."""
        proj = self.camera_matrices(t) @ positions  # (cams, 3, 19)
        depth = proj[:, 2:3]
        ok = depth > 0
        xy = proj[:, :2] / jnp.where(ok, depth, 1.0)
        return jnp.where(ok, xy, jnp.nan).reshape(-1)

    def noise_free_jacobian(self, u: ArrayLike) -> Float[Array, "obs 140"]:
        """∂f/∂u (obs × 140) in closed form: the chain rule through the pieces, with the
        forward-kinematics block from :func:`dgm.bvh.jacobian.kinematics_jacobian`.

        Equal to ``jax.jacrev(self.noise_free)`` (to rounding; rows of joints behind a
        camera are 0, as there) at about a tenth of its cost, and differentiable. Each
        block is formed at its own size: the decoder's 188 × 30 by forward products
        through its layers, θ's dependence on the 94 angle-noise inputs as two diagonals,
        the lengths' as diag(ℓ) Uᵀ and the camera's as a diagonal.
        """
        u = self._check(u, self.latent_dim, "u")
        u_len, u_lat, u_ang, u_cam = jnp.split(u, np.cumsum([13, 30, 94]))
        lengths = self.bone_lengths(u_len)
        d_len = lengths[:, None] * _as(self.log_length_chol, u.dtype).T  # ∂ℓ_j/∂u_i
        # the decoder's output and its Jacobian (188 × 30), layer by layer
        (w0, b0), *hidden, (w_out, b_out) = [
            (_as(w, u.dtype), _as(b, u.dtype)) for w, b in self.decoder
        ]
        h = jnp.tanh(u_lat @ w0 + b0)
        d_h = (1 - h**2)[:, None] * w0.T
        for w, b in hidden:
            t = jnp.tanh(h @ w + b)
            h, d_h = t + h, (1 - t**2)[:, None] * (w.T @ d_h) + d_h
        out = h @ w_out + b_out
        k = 2 * NUM_ANGLES
        sd = jnp.exp(0.5 * out[k:])
        r = out[:k] + sd * u_ang
        cos, sin = r[:NUM_ANGLES], r[NUM_ANGLES:]
        norm2 = cos**2 + sin**2
        d_cos, d_sin = -sin / norm2, cos / norm2  # θ = atan2(sin, cos)
        angles = jnp.arctan2(sin, cos)
        # ∂θ/∂h (50 × 47) folded into the output layer's weights before the product with
        # ∂h/∂u_lat: 47 × 50 × 30 multiply-adds instead of 188 × 50 × 30 for ∂out/∂u_lat
        w_r = w_out[:, :k] + w_out[:, k:] * (0.5 * sd * u_ang)[None, :]  # ∂r/∂h
        w_theta = w_r[:, :NUM_ANGLES] * d_cos[None, :] + w_r[:, NUM_ANGLES:] * d_sin[None, :]
        d_theta_lat = w_theta.T @ d_h
        # forward kinematics and its Jacobian at the output joints
        kin = kinematics_jacobian(
            self.skeleton, self.channel_values(angles), self.node_lengths(lengths)
        )
        nodes = np.asarray(self.output_nodes)
        d_p_theta = kin.d_channels[nodes][:, :, np.asarray(self.free_channels)]  # (19, 3, 47)
        d_p_len = kin.d_lengths[nodes] @ _as(self._length_map(), u.dtype)  # (19, 3, 13)
        d_p = jnp.concatenate(
            [
                d_p_len @ d_len,
                d_p_theta @ d_theta_lat,
                d_p_theta * (d_cos * sd[:NUM_ANGLES])[None, None, :],
                d_p_theta * (d_sin * sd[NUM_ANGLES:])[None, None, :],
            ],
            axis=2,
        )  # (19, 3, 137): ∂P/∂(u_len, u_lat, u_ang)
        positions = kin.transforms[nodes, :, 3].T
        t = self.camera_translation(u_cam)
        tenth = jnp.asarray(0.1, u.dtype)
        d_t = jnp.stack([tenth, tenth, 0.5 * t[2]])
        cams = self.camera_matrices(t)  # (cams, 3, 4)
        proj = cams @ positions  # (cams, 3, 19)
        depth = proj[:, 2]
        ok = depth > 0
        inv = 1 / jnp.where(ok, depth, 1.0)
        # ∂(x, y)/∂q for q = C P: [[1/q₂, 0, −q₀/q₂²], [0, 1/q₂, −q₁/q₂²]], (cams, 2, 19, 3)
        zero = jnp.zeros_like(inv)
        d_xy = (
            jnp.stack(
                [
                    jnp.stack([inv, zero, -proj[:, 0] * inv**2], axis=-1),
                    jnp.stack([zero, inv, -proj[:, 1] * inv**2], axis=-1),
                ],
                axis=1,
            )
            * ok.astype(u.dtype)[:, None, :, None]
        )
        d_img_p = d_xy @ cams[:, None, :, :3]  # ∂(x, y)/∂p through C's rotation block
        # ∂q/∂t = diag(f, f, 1) and t depends on u_cam coordinate-wise
        scale = np.array([FOCAL_LENGTH, FOCAL_LENGTH, 1.0])
        d_cam = d_xy * (jnp.asarray(scale, u.dtype) * d_t)[None, None, None, :]
        d_inputs = jnp.einsum("cajd,jdx->cajx", d_img_p, d_p)
        return jnp.concatenate([d_inputs, d_cam], axis=3).reshape(self.output_dim, LATENT_DIM)

    def _length_map(self) -> np.ndarray:
        """(nodes, 13): 1 where node n's length is ℓ_b."""
        index = np.asarray(self.length_index)
        return (index[:, None] == np.arange(NUM_LENGTHS)[None, :]).astype(np.float64)

    def __call__(self, u: ArrayLike) -> Float[Array, " obs"]:
        """The noisy generator y = f(u[:140]) + σ u[140:]."""
        u = self._check(u, self.input_dim, "u")
        return self.noise_free(u[: self.latent_dim]) + self.sigma * u[self.latent_dim :]

    @staticmethod
    def _check(u, size: int, name: str):
        arr = jnp.asarray(u)
        if arr.shape != (size,) or not jnp.issubdtype(arr.dtype, jnp.floating):
            raise ValueError(
                f"`{name}` must be a float array of shape ({size},) (one input vector; vmap "
                f"over many); got {arr.dtype} {arr.shape}"
            )
        return arr


def _as(x, dtype) -> Array:
    """A stored (float64 NumPy) parameter in the dtype of the computation."""
    return jnp.asarray(x, dtype)


def scene_inputs(seed: int = 1234, num_scenes: int = 3, input_dim: int = 216) -> np.ndarray:
    """The notebook's scenes: ``RandomState(seed).normal(size=(num_scenes, input_dim))``."""
    return np.random.RandomState(seed).normal(size=(num_scenes, input_dim))


def rmse_homogeneous(
    positions: Float[Array, "... 4 19"], truth: Float[Array, "4 19"]
) -> Float[Array, "..."]:
    """The original metric: RMSE over all 76 homogeneous entries (the 1s included)."""
    diff = positions - jnp.broadcast_to(truth, positions.shape)
    return jnp.sqrt(jnp.mean(diff**2, axis=(-2, -1)))
