"""The pose generator: the spec's pieces checked one by one, its Jacobian, the scenes."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.data import ChecksumError
from dgm.data import pose as pose_data
from dgm.models.pose import (
    FOCAL_LENGTH,
    LATENT_DIM,
    OUTPUT_JOINTS,
    SIGMA,
    PoseGenerator,
    rmse_homogeneous,
    scene_inputs,
)


@pytest.fixture(scope="module")
def parts(shared_data):
    return pose_data.load_pose_parts(shared_data)


@pytest.fixture(scope="module")
def gen(parts):
    return PoseGenerator.from_parts(parts, SIGMA["notebook"])


PAD = 2048  # every batched call is padded to this many rows: one compile per function


@pytest.fixture(scope="module")
def compiled(gen):
    """float64 functions of the generator, each compiled once for the module: ``latent``
    maps (n, 140) inputs to (positions, noise-free outputs, depths), ``generate`` maps
    (n, 216) to outputs, ``jacobian`` one (216,) input to its (76, 216) Jacobian."""

    def padded(fn):
        jitted = jax.jit(jax.vmap(fn))

        def call(u):
            u = jnp.asarray(u, jnp.float64)
            full = jnp.concatenate([u, jnp.zeros((PAD - len(u), u.shape[1]), u.dtype)])
            return jax.tree.map(lambda x: x[: len(u)], jitted(full))

        return call

    with jax.enable_x64(True):
        latent = padded(
            lambda u: (
                gen.joint_positions(u),
                gen.noise_free(u),
                gen.depths(u),
                gen.projection_ok(u),
                gen.bone_lengths(u[:13]),
                gen.joint_angles(u[13:43], u[43:137]),
            )
        )
        yield {
            "projection_ok": lambda u: latent(u)[3],
            "bone_lengths": lambda u: latent(u)[4],
            "joint_angles": lambda u: latent(u)[5],
            "positions": lambda u: latent(u)[0],
            "noise_free": lambda u: latent(u)[1],
            "depths": lambda u: latent(u)[2],
            "generate": padded(lambda u: gen(u)),
            "jacobian": jax.jit(jax.jacfwd(lambda u: gen(u))),
        }


@pytest.fixture(scope="module")
def scenes():
    return scene_inputs()


def _decoder_numpy(parts, z, n):
    """The decoder in the column-vector convention, written out separately from the model."""
    ws = [(w.T, b[:, None]) for w, b in parts.decoder]
    h = np.tanh(ws[0][0] @ z[:, None] + ws[0][1])
    for w, b in ws[1:6]:
        h = h + np.tanh(w @ h + b)
    out = (ws[6][0] @ h + ws[6][1])[:, 0]
    r = out[:94] + np.exp(out[94:] / 2) * n
    return np.arctan2(r[47:], r[:47])


def test_loaders_verify_checksums(shared_data, tmp_path, parts):
    u = parts.log_length_chol
    assert np.allclose(u, np.triu(u)) and not np.allclose(u, np.diag(np.diag(u)))
    with np.load(shared_data / pose_data.BONES / "params.npz") as f:
        np.testing.assert_allclose(u.T @ u, f["covar"], rtol=1e-10, atol=1e-14)
    assert len(parts.fixed_angles) == 16 and len(parts.decoder) == 7
    copy = tmp_path / "data"
    shutil.copytree(shared_data / "dgm", copy / "dgm")
    bvh = copy / pose_data.ANGLES / "skeleton.bvh"
    bvh.chmod(0o644)
    bvh.write_bytes(bvh.read_bytes().replace(b"5.19526", b"5.19527"))
    with pytest.raises(ChecksumError, match="skeleton.bvh"):
        pose_data.load_pose_parts(copy)
    bvh.unlink()
    with pytest.raises(FileNotFoundError, match="skeleton.bvh"):
        pose_data.load_pose_parts(copy)
    with pytest.raises(ValueError, match="`config` must be one of"):
        pose_data.pose_generator("paper", root=shared_data)
    with pytest.raises(ValueError, match="method 'chmc'/'hmc' and scene 1/2; got 'hmc', 3"):
        pose_data.thesis_rmse_curve("hmc", 3, root=shared_data)


@pytest.mark.usefixtures("x64")
def test_pieces_follow_the_spec(gen, parts, scenes, compiled):
    """Bone lengths, decoder, fixed angles, skeleton plan and cameras, each against a
    separate NumPy computation of the spec's formula."""
    u = scenes[0]
    assert (len(gen.free_channels), len(gen.fixed_channels)) == (47, 16)
    assert [gen.skeleton.names[i] for i in gen.output_nodes] == OUTPUT_JOINTS
    # bone lengths: row vector times the upper factor
    lengths = np.exp(parts.log_length_mean + u[:13] @ parts.log_length_chol)
    np.testing.assert_allclose(compiled["bone_lengths"](u[None, :140])[0], lengths, rtol=1e-13)
    # angles: atan2(second half, first half)
    theta = _decoder_numpy(parts, u[13:43], u[43:137])
    np.testing.assert_allclose(compiled["joint_angles"](u[None, :140])[0], theta, atol=1e-12)
    frame = np.asarray(jax.jit(lambda a: gen.channel_values(a))(jnp.asarray(theta)))
    labels = gen.skeleton.channel_labels
    for name, value in parts.fixed_angles.items():
        assert frame[labels.index(name)] == value
    assert np.all(frame[:3] == 0)  # the root's translation is ignored
    # FK: each output bone has its model length; homogeneous row of ones
    p = np.asarray(compiled["positions"](jnp.asarray(u[None, :140]))[0])
    assert p.shape == (4, 19) and np.all(p[3] == 1)
    idx = {n: k for k, n in enumerate(OUTPUT_JOINTS)}
    order = parts.length_order
    for a, b, bone in [
        ("Spine", "Head", "spine"),
        ("Head", "HeadEndSite", "head"),
        ("LeftArm", "LeftForeArm", "upper-arm"),
        ("RightForeArm", "RightHand", "lower-arm"),
        ("LeftHand", "LeftHandEndSite", "hand"),
        ("RightUpLeg", "RightLeg", "upper-leg"),
        ("LeftLeg", "LeftFoot", "lower-leg"),
        ("RightFoot", "RightToeBase", "back-foot"),
    ]:
        d = np.linalg.norm(p[:3, idx[a]] - p[:3, idx[b]])
        np.testing.assert_allclose(d, lengths[order[bone]], rtol=1e-12, err_msg=f"{a}-{b}")
    np.testing.assert_allclose(np.linalg.norm(p[:3, idx["Spine"]]), lengths[order["waist"]])
    drawn = {(OUTPUT_JOINTS[a], OUTPUT_JOINTS[b]) for a, b in gen.output_bones()}
    assert len(drawn) == 18 and ("Spine", "LeftArm") in drawn and ("Spine", "RightUpLeg") in drawn
    # cameras: R_y(pi), translation straight into [R | t], camera 1 at +0.5 in x
    tx, ty, tz = 0.1 * u[137], 0.1 * u[138], np.exp(1.5 + 0.5 * u[139])
    y = np.asarray(compiled["noise_free"](jnp.asarray(u[None, :140]))[0]).reshape(2, 2, 19)
    for cam, shift in enumerate([0.5, -0.5]):
        depth = -p[2] + tz
        np.testing.assert_allclose(y[cam, 0], FOCAL_LENGTH * (-p[0] + tx + shift) / depth)
        np.testing.assert_allclose(y[cam, 1], FOCAL_LENGTH * (p[1] + ty) / depth)


@pytest.mark.usefixtures("x64")
def test_jacobian_matches_finite_differences(gen, scenes, compiled):
    u = jnp.asarray(scenes[1])
    jac = np.asarray(compiled["jacobian"](u))
    assert jac.shape == (76, 216)
    np.testing.assert_array_equal(jac[:, LATENT_DIM:], gen.sigma * np.eye(76))
    directions = np.random.default_rng(0).normal(size=(4, 216))
    directions[0, LATENT_DIM:] = 0
    h = 1e-6
    batch = jnp.asarray(np.concatenate([u[None] + h * directions, u[None] - h * directions]))
    plus, minus = np.split(np.asarray(compiled["generate"](batch)), 2)
    fd = (plus - minus) / (2 * h)
    np.testing.assert_allclose(fd, directions @ jac.T, rtol=1e-6, atol=1e-8)


@pytest.mark.usefixtures("x64")
def test_closed_form_jacobian_equals_autodiff_and_differentiates(gen, scenes, compiled):
    """noise_free_jacobian equals the autodiff Jacobian at the scenes and another point."""
    closed = jax.jit(lambda u: gen.noise_free_jacobian(u))
    points = np.concatenate([scenes, 0.5 * scenes[:1, ::-1]])
    for u in points:
        jac = np.asarray(closed(jnp.asarray(u[:LATENT_DIM])))
        ref = np.asarray(compiled["jacobian"](jnp.asarray(u)))[:, :LATENT_DIM]
        assert jac.shape == (76, LATENT_DIM)
        np.testing.assert_allclose(jac, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.usefixtures("x64")
def test_closed_form_jacobian_vjp_matches_finite_differences(gen, scenes):
    """The VJP of noise_free_jacobian (what ∇ ½ log det takes) equals finite differences
    of ⟨Q, J(u)⟩."""
    closed = jax.jit(lambda u: gen.noise_free_jacobian(u))
    rng = np.random.default_rng(1)
    cot = jnp.asarray(rng.normal(size=(76, LATENT_DIM)))
    u = jnp.asarray(scenes[2, :LATENT_DIM])
    vjp = jax.jit(lambda u: jax.vjp(lambda v: gen.noise_free_jacobian(v), u)[1](cot)[0])(u)
    inner = lambda v: jnp.sum(cot * closed(v))  # noqa: E731
    h = 1e-6
    for direction in jnp.asarray(rng.normal(size=(2, LATENT_DIM))):
        fd = (inner(u + h * direction) - inner(u - h * direction)) / (2 * h)
        np.testing.assert_allclose(jnp.dot(vjp, direction), fd, rtol=1e-6)


@pytest.mark.usefixtures("x64")
def test_scenes_regenerated_and_consistent_with_thesis(shared_data, gen, scenes, compiled):
    """The notebook's three scenes: deterministic, in front of both cameras, noise added
    as σ·n, and the thesis's RMSE at t = 0 (mean over 5 chains started from prior draws,
    scenes 1 and 2) inside the central 99% of the same statistic for our scenes' truths.

    The last check is coarse (a wrong length scale or camera convention fails it; small
    errors do not): the spec gives no exact reference values for the pose scenes.
    """
    assert scenes.shape == (3, 216)
    np.testing.assert_array_equal(scenes, scene_inputs())
    u = jnp.asarray(scenes)
    y = np.asarray(compiled["generate"](u))
    clean = np.asarray(compiled["noise_free"](u[:, :LATENT_DIM]))
    np.testing.assert_allclose(y - clean, SIGMA["notebook"] * scenes[:, LATENT_DIM:], atol=1e-15)
    assert np.all(np.asarray(compiled["depths"](u[:, :LATENT_DIM])) > 1.0)
    truth = np.asarray(compiled["positions"](u[:, :LATENT_DIM]))
    prior = jax.random.normal(jax.random.key(0), (PAD, LATENT_DIM), jnp.float64)[:2000]
    draws = compiled["positions"](prior)
    for scene in (1, 2):
        rmse = np.asarray(rmse_homogeneous(draws, jnp.asarray(truth[scene - 1])))
        five = rmse.reshape(-1, 5).mean(axis=1)
        lo, hi = np.percentile(five, [0.5, 99.5])
        for method in ("chmc", "hmc"):
            r0 = pose_data.thesis_rmse_curve(method, scene, root=shared_data)[0, 1]
            assert lo < r0 < hi, (scene, method, r0, lo, hi)


@pytest.mark.usefixtures("x64")
def test_camera_behind_subject_is_a_failed_projection(gen, scenes, compiled):
    u = np.array(scenes[:1, :LATENT_DIM])
    u[0, -1] = -20.0  # camera depth exp(1.5 - 10): the subject is around and behind it
    depths = np.asarray(compiled["depths"](jnp.asarray(u)))[0]
    assert np.any(depths <= 0) and np.any(depths > 0)
    y = np.asarray(compiled["noise_free"](jnp.asarray(u))[0]).reshape(2, 2, 19)
    bad = np.broadcast_to((depths <= 0)[:, None, :], y.shape)
    assert np.all(np.isnan(y[bad])) and np.all(np.isfinite(y[~bad]))
    ok = compiled["projection_ok"](np.concatenate([u, scenes[:1, :LATENT_DIM]]))
    np.testing.assert_array_equal(ok, [False, True])
    full = np.concatenate([u[0], scenes[0, LATENT_DIM:]])  # all 216 inputs: the same answer
    assert not gen.projection_ok(full) and gen.projection_ok(scenes[0])
    np.testing.assert_allclose(gen.depths(full), depths, rtol=1e-12)


@pytest.mark.usefixtures("x64")
def test_monocular_camera_is_the_binocular_one_shifted(parts, scenes, compiled):
    mono = PoseGenerator.from_parts(parts, SIGMA["thesis"], binocular=False)
    assert (mono.output_dim, mono.input_dim) == (38, 178)
    u = np.array(scenes[0, :LATENT_DIM])
    shifted = u.copy()
    shifted[137] += 5.0  # t_x + 0.5 = 0.1 (u0 + 5): the +0.5 camera of the binocular pair
    y_mono = np.asarray(jax.jit(lambda v: mono.noise_free(v))(jnp.asarray(shifted)))
    y_bi = np.asarray(compiled["noise_free"](jnp.asarray(u[None]))[0])
    np.testing.assert_allclose(y_mono, y_bi[:38], rtol=1e-12)


def test_bad_inputs_name_the_argument(parts, gen):
    with pytest.raises(ValueError, match=r"`u` must be a float array of shape \(216,\).*\(140,\)"):
        gen(jnp.zeros(140))
    with pytest.raises(ValueError, match=r"`u` must .* shape \(140,\).*\(3, 140\)"):
        gen.joint_positions(jnp.zeros((3, 140)))
    with pytest.raises(ValueError, match=r"`u` must be a float array.*int32"):
        gen.noise_free(jnp.zeros(140, jnp.int32))
    with pytest.raises(ValueError, match="`sigma` must be positive; got 0.0"):
        PoseGenerator.from_parts(parts, 0.0)
    fewer = {k: v for k, v in parts.fixed_angles.items() if k != "rightleg_z"}
    with pytest.raises(ValueError, match="48 free rotation channels .* does not match"):
        PoseGenerator.from_parts(parts._replace(fixed_angles=fewer))
    extra = {**parts.fixed_angles, "lefttail_x": 0.0}
    with pytest.raises(ValueError, match=r"fixed angles \['lefttail_x'\] name no rotation"):
        PoseGenerator.from_parts(parts._replace(fixed_angles=extra))
    sk = parts.skeleton
    renamed = type(sk)(
        tuple("Neck" if n == "Head" else n for n in sk.names), sk.parents, sk.channels, sk.offsets
    )
    with pytest.raises(ValueError, match="node 'Neck' has a bone but no length"):
        PoseGenerator.from_parts(parts._replace(skeleton=renamed))
