"""dgm.bvh: forward kinematics against an independent reader, round trips, malformed files."""

import gc
import hashlib
import shutil
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm import cli
from dgm.bvh import (
    Bvh,
    BvhSyntaxError,
    Skeleton,
    bones,
    format_bvh,
    global_transforms,
    joint_positions,
    parse_bvh,
    read_bvh,
    write_bvh,
)
from dgm.bvh.jacobian import kinematics_jacobian

# sha256 from the PROVENANCE.md files of the shared data.
CMU_CLIPS = {
    "02_01.bvh": "c0bdbc2efaa3f5a6c7b74ee8a5baab06b86deda4d506083fb6a28a2d128f11eb",
    "05_06.bvh": "178dad5d190edc1f402166e48ad478c583805c43c0ca0f91ee36c4d50a11b48d",
    "131_01.bvh": "525a261b085d44ea302205f7bbdf824c20ca8256b9e0797aeae43183326fce27",
    "131_02.bvh": "fe7882961ae1ecaf62273424a7ac64905fd20b0596051c78f3d1488dfa66d708",
    "131_03.bvh": "f8b19d31da5d596e523c9bab7ace69756afd02c38f61e5cac3141e5b579dbb4a",
}
SKELETON = (
    "dgm/joint-angles-sin-cos-vae-decoder/skeleton.bvh",
    "5971775215bbe87d07f8a2daa7626ea75364cc213a2a07e6bf51616bbff70830",
)

# A small skeleton with unusual channels: positions after rotations on the root, a joint with
# two rotations, a joint with a position channel, a joint without channels, two End Sites.
TINY = """HIERARCHY
ROOT Root
{
  OFFSET 0.5 -1 2
  CHANNELS 6 Zrotation Xposition Xrotation Yposition Zposition Yrotation
  JOINT A
  {
    OFFSET 1 2 0.25
    CHANNELS 2 Yrotation Xrotation
    End Site
    {
      OFFSET 0 1.5 0
    }
  }
  JOINT B
  {
    OFFSET -1 0 3
    CHANNELS 4 Xrotation Zposition Zrotation Xrotation
    JOINT C
    {
      OFFSET 0 0 1
      CHANNELS 0
      End Site
      {
        OFFSET 2 0 0
      }
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.04
10 0.1 -20 0.2 0.3 30 40 -50 11 0.7 -12 13
-5 1 2 3 4 5 6 7 8 9 10 11
"""


def _files(shared_data):
    """Every shipped BVH file, checked against its sha256."""
    paths = [(shared_data / "cmu_mocap" / name, digest) for name, digest in CMU_CLIPS.items()]
    paths.append((shared_data / SKELETON[0], SKELETON[1]))
    for path, digest in paths:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
    return [p for p, _ in paths]


def _numpy_fk(text: str, frame: np.ndarray) -> dict[str, np.ndarray]:
    """An independent reference: walk the text line by line, chaining 4×4 matrices per
    joint on a stack (rotations as explicit matrices in degrees), no dgm code involved."""
    axes = {"X": 0, "Y": 1, "Z": 2}

    def rot(axis, deg):
        a = np.deg2rad(deg)
        c, s = np.cos(a), np.sin(a)
        m = {"X": [[1, 0, 0], [0, c, -s], [0, s, c]], "Y": [[c, 0, s], [0, 1, 0], [-s, 0, c]]}
        return np.array(m.get(axis, [[c, -s, 0], [s, c, 0], [0, 0, 1]]))

    stack, out, name, k = [np.eye(4)], {}, None, 0
    lines = iter(text.split("MOTION")[0].splitlines())
    for line in lines:
        words = line.split()
        if not words or words[0] in ("HIERARCHY", "{"):
            continue
        if words[0] in ("ROOT", "JOINT"):
            name = words[1]
        elif words[:2] == ["End", "Site"]:
            name = name + "EndSite"
        elif words[0] == "OFFSET":
            m = np.eye(4)
            m[:3, 3] = [float(w) for w in words[1:]]
            stack.append(stack[-1] @ m)
            if name.endswith("EndSite"):
                out[name] = stack[-1][:3, 3]
        elif words[0] == "CHANNELS":
            local = np.eye(4)
            for c in words[2:]:
                if c.endswith("position"):
                    local[axes[c[0]], 3] += frame[k]
                else:
                    local[:3, :3] = local[:3, :3] @ rot(c[0], frame[k])
                k += 1
            # the joint's frame: parent · T(offset) · T(position channels) · R
            t, r = np.eye(4), np.eye(4)
            t[:3, 3], r[:3, :3] = local[:3, 3], local[:3, :3]
            stack[-1] = stack[-1] @ t @ r
            out[name] = stack[-1][:3, 3]
        elif words[0] == "}":
            stack.pop()
    return out


@pytest.fixture(scope="module")
def fk64():
    """FK over frames, compiled once per skeleton layout; the tests that use it run in
    float64 (``x64``). (It held float64 on for the rest of the module while it yielded
    inside ``enable_x64``.)"""
    return eqx.filter_jit(
        jax.vmap(lambda s, f: joint_positions(s, f, degrees=True), in_axes=(None, 0))
    )


@pytest.mark.usefixtures("x64")
def test_fk_matches_pybvh_on_every_shipped_file(shared_data, fk64):
    """Our FK equals pybvh's (an independent reader and FK) to 1e-9 on every frame."""
    pybvh = pytest.importorskip("pybvh", reason="the independent reader is in the test extra")
    for path in _files(shared_data):
        clip = read_bvh(path)
        ours = np.asarray(fk64(clip.skeleton, jnp.asarray(clip.frames)))
        ref_bvh = pybvh.read_bvh_file(path)
        ref = pybvh.frames_to_node_positions(ref_bvh, centered="world").reshape(ours.shape)
        ref_names = [n.name for n in ref_bvh.nodes]
        names = [n.replace("EndSite", "") for n in clip.skeleton.names]
        assert [n.replace("EndSite", "") for n in ref_names] == names, path.name
        assert ours.shape == (clip.num_frames, len(names), 3)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9, err_msg=path.name)


@pytest.mark.usefixtures("x64")
def test_fk_any_channel_order_matches_numpy_chain(fk64):
    """Mixed channel counts and orders (position channels anywhere) against plain NumPy."""
    clip = parse_bvh(TINY)
    ours = np.asarray(fk64(clip.skeleton, jnp.asarray(clip.frames)))
    for f, frame in enumerate(clip.frames):
        ref = _numpy_fk(TINY, frame)
        for name, xyz in ref.items():
            np.testing.assert_allclose(ours[f, clip.skeleton.index(name)], xyz, atol=1e-12)
    assert len(ref) == clip.skeleton.num_nodes
    # (chains, draws) batches, as samplers' derived quantities use: a regression test for an
    # XLA:CPU verifier error with batched dot_general of gathered operands under two vmaps
    frames = 30 * np.random.default_rng(0).normal(size=(2, 3, clip.skeleton.num_channels))
    fk = jax.vmap(jax.vmap(lambda f: joint_positions(clip.skeleton, f, degrees=True)))
    twice = np.asarray(jax.jit(fk)(jnp.asarray(frames)))
    for c, d in np.ndindex(2, 3):
        for name, xyz in _numpy_fk(TINY, frames[c, d]).items():
            np.testing.assert_allclose(twice[c, d, clip.skeleton.index(name)], xyz, atol=1e-12)


def test_round_trip_every_shipped_file(shared_data, tmp_path):
    for path in _files(shared_data) + [None]:
        clip = read_bvh(path) if path is not None else parse_bvh(TINY)
        out = tmp_path / "copy.bvh"
        write_bvh(out, clip)
        back = read_bvh(out)
        assert back.skeleton.names == clip.skeleton.names
        assert back.skeleton.parents == clip.skeleton.parents
        assert back.skeleton.channels == clip.skeleton.channels
        np.testing.assert_array_equal(back.skeleton.offsets, clip.skeleton.offsets)
        np.testing.assert_array_equal(back.frames, clip.frames)
        assert back.frame_time == clip.frame_time
        assert format_bvh(back) == out.read_text()


@pytest.mark.usefixtures("x64")
def test_writer_keeps_each_joints_values_when_nodes_are_not_depth_first(fk64):
    """A Skeleton built in code needs only parents before children: C (a child of A) may
    follow B. The file lists C before B, so its frame values must move with it (the writer
    wrote the columns in node order: B read C's values and C read B's)."""
    nodes = [
        ("R", -1, (0, 0, 0), ("Xposition", "Zrotation")),
        ("A", 0, (1, 0, 0), ("Zrotation",)),
        ("B", 0, (0, 1, 0), ("Xrotation", "Yposition")),
        ("C", 1, (0, 0, 1), ("Yrotation",)),
        ("CEndSite", 3, (0, 1, 1), None),
    ]
    clip = Bvh(Skeleton.from_nodes(nodes), np.array([[1.0, 20, 30, 40, 5, 60]]), 0.1)
    back = parse_bvh(format_bvh(clip))
    assert back.skeleton.names == ("R", "A", "C", "CEndSite", "B")
    ours, theirs = (np.asarray(fk64(b.skeleton, jnp.asarray(b.frames)))[0] for b in (clip, back))
    for name in clip.skeleton.names:
        i, j = clip.skeleton.index(name), back.skeleton.index(name)
        a, b = clip.skeleton.channel_starts[i], back.skeleton.channel_starts[j]
        k = len(clip.skeleton.channels[i] or ())
        np.testing.assert_array_equal(back.frames[0, b : b + k], clip.frames[0, a : a + k])
        np.testing.assert_allclose(theirs[j], ours[i], rtol=0, atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_fk_is_differentiable_jittable_and_takes_lengths():
    clip = parse_bvh(TINY)
    sk, frame = clip.skeleton, jnp.asarray(clip.frames[0]) / 50
    norms = jnp.asarray(np.linalg.norm(sk.offsets, axis=1))

    def loss(values, lengths):
        return jnp.sum(joint_positions(sk, values, lengths) ** 2)

    @jax.jit
    def everything(values, lengths):
        return (
            joint_positions(sk, values, norms),
            joint_positions(sk, values),
            global_transforms(sk, values)[:, 3],
            jax.grad(loss, argnums=(0, 1))(values, lengths),
        )

    with_len, without, last_rows, (g_vals, g_len) = everything(frame, 2 * norms)
    np.testing.assert_allclose(with_len, without, atol=1e-12)
    np.testing.assert_array_equal(last_rows, np.tile([0.0, 0, 0, 1], (sk.num_nodes, 1)))
    loss = jax.jit(loss)
    h = 1e-6
    for i, direction in enumerate(np.eye(sk.num_channels)[:6]):
        d = jnp.asarray(direction)
        fd = (loss(frame + h * d, 2 * norms) - loss(frame - h * d, 2 * norms)) / (2 * h)
        np.testing.assert_allclose(g_vals[i], fd, rtol=1e-6)
    fd = (loss(frame, 2 * norms + h) - loss(frame, 2 * norms - h)) / (2 * h)
    np.testing.assert_allclose(jnp.sum(g_len), fd, rtol=1e-6)

    fk = jax.jit(eqx.debug.assert_max_traces(joint_positions, max_traces=1))
    for k in range(2):
        fk(sk, jnp.asarray(clip.frames[k]))


@pytest.mark.usefixtures("x64")
def test_offset_gradient_is_finite_with_lengths_and_a_zero_offset():
    """A zero offset (the CMU roots' ``OFFSET 0 0 0``) stays zero under ``lengths``; the
    gradient with respect to the offsets is finite there (it was NaN, through sqrt at 0,
    and one optimiser step on it made every position NaN)."""
    clip = parse_bvh(_edit("OFFSET 0.5 -1 2", "OFFSET 0 0 0"))
    frame = jnp.asarray(clip.frames[0])
    lengths = jnp.linspace(0.5, 2.0, clip.skeleton.num_nodes)

    def loss(sk):
        return jnp.sum(joint_positions(sk, frame, lengths, degrees=True) ** 2)

    def jac_loss(sk):
        kin = kinematics_jacobian(sk, frame, lengths, degrees=True)
        return jnp.sum(kin.d_lengths**2) + jnp.sum(kin.transforms**2)

    for f in (loss, jac_loss):
        grad = np.asarray(eqx.filter_grad(f)(clip.skeleton).offsets)
        assert np.isfinite(grad).all(), f.__name__
        assert np.abs(grad[1:]).max() > 0


def _check_fk_jacobian(sk, degrees: bool, rng) -> None:
    frame = jnp.asarray((40.0 if degrees else 0.7) * rng.normal(size=sk.num_channels))
    norms = np.linalg.norm(sk.offsets, axis=1)
    lengths = jnp.asarray(norms * rng.uniform(0.5, 1.5, sk.num_nodes))
    kin = kinematics_jacobian(sk, frame, lengths, degrees=degrees)
    fk = lambda f, n: joint_positions(sk, f, n, degrees=degrees)  # noqa: E731
    ref = jax.jacfwd(fk, argnums=(0, 1))(frame, lengths)
    np.testing.assert_allclose(kin.d_channels, ref[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(kin.d_lengths, ref[1], rtol=0, atol=1e-12)
    assert np.abs(np.asarray(ref[0])).max() > 0.5  # not a comparison of zeros
    no_len = kinematics_jacobian(sk, frame, degrees=degrees)
    np.testing.assert_array_equal(no_len.d_lengths, np.zeros_like(ref[1]))


@pytest.mark.slow
@pytest.mark.usefixtures("x64")
def test_closed_form_fk_jacobian_equals_autodiff(shared_data):
    """kinematics_jacobian equals jacfwd of joint_positions: TINY (position channels
    anywhere, degrees) and the pose skeleton (radians), with bone lengths."""
    rng = np.random.default_rng(3)
    _check_fk_jacobian(parse_bvh(TINY).skeleton, True, rng)
    pose_skeleton = shared_data / "dgm/joint-angles-sin-cos-vae-decoder/skeleton.bvh"
    _check_fk_jacobian(read_bvh(pose_skeleton).skeleton, False, rng)


def test_fk_rejects_wrong_shapes():
    sk = parse_bvh(TINY).skeleton
    with pytest.raises(ValueError, match=r"`channel_values` must .* shape \(12,\).*\(2, 12\)"):
        joint_positions(sk, jnp.zeros((2, 12)))
    with pytest.raises(ValueError, match=r"`channel_values` must be a float array"):
        joint_positions(sk, jnp.zeros(12, dtype=jnp.int32))
    with pytest.raises(ValueError, match=r"`lengths` must .* shape \(6,\).*\(5,\)"):
        joint_positions(sk, jnp.zeros(12), jnp.ones(5))


def _edit(old: str, new: str, count: int = 1) -> str:
    assert old in TINY
    return TINY.replace(old, new, count)


@pytest.mark.parametrize(
    "text, line, match",
    [
        (_edit("JOINT A", "JOINTT A"), 6, "expected JOINT, End Site or '}' in Root; got 'JOINTT'"),
        (_edit("HIERARCHY", "HIERARCHIE"), 1, "expected 'HIERARCHY'"),
        (_edit("OFFSET 1 2 0.25", "OFFSET 1 two 0.25"), 8, "OFFSET y of A .*got 'two'"),
        (_edit("CHANNELS 2 Yrot", "CHANNELS 3 Yrot"), 10, "channel 3 of 3 of A.*got 'End'"),
        (_edit("CHANNELS 2 Yrot", "CHANNELS 1 Yrot"), 9, "A has more channels than .* \\(1\\)"),
        (_edit("CHANNELS 2 Yrotation", "CHANNELS 2 Wrotation"), 9, "channel 1 of 2 of A"),
        (_edit("CHANNELS 2 Yrot", "CHANNELS two Yrot"), 9, "channel count of A"),
        (_edit(" -12 13\n", " -12\n"), 33, "frame 1 has 11 values; expected 12"),
        (_edit(" -12 13\n", " -12 13 14\n"), 33, "frame 1 has 13 values; expected 12"),
        (_edit("9 10 11\n", "9 10 11\n1 2 3 4 5 6 7 8 9 10 11 12\n"), 35, "'Frames: 2' but .* 3"),
        (_edit("-5 1 2", "-5 x 2"), 34, "expected a number in frame 2; got 'x'"),
        (_edit("Frames: 2", "Frames: many"), 31, "expected the frame count"),
        (_edit("Frame Time: 0.04", "Frame Tim: 0.04"), 32, "expected 'Frame Time:'"),
        (TINY[: TINY.index("-5 1 2")], 33, "'Frames: 2' but the file has 1 frame lines"),
        (TINY[: TINY.index("JOINT B")], 14, "no MOTION line; the file is truncated"),
        ("\n  garbage\n", 2, "expected 'HIERARCHY'; got 'garbage'"),  # no MOTION either
        (
            TINY[: TINY.index("MOTION")] + "}\n" + TINY[TINY.index("MOTION") :],
            30,
            "after the root.*got '}'",
        ),
        (
            TINY.replace("MOTION", "MOTION\n}").split("MOTION")[0] + "MOTION",
            30,
            "ended early; expected 'Frames:'",
        ),
        (TINY[: TINY.index("Frames:")], 30, "ended early; expected 'Frames:'"),
        (TINY[: TINY.index("Frame Time")] + "\n\n", 31, "ended early; expected 'Frame Time:'"),
        (_edit("Frames: 2", "Frames: \u00b2"), 31, "expected the frame count"),
        (_edit("CHANNELS 2 Yrot", "CHANNELS \u00b2 Yrot"), 9, "channel count of A"),
    ],
    ids=lambda v: None if isinstance(v, str) and "\n" not in v and len(v) < 60 else "",
)
def test_malformed_files_name_the_line(text, line, match):
    """Each defect: bad keywords, channel counts, motion values, truncation."""
    with pytest.raises(BvhSyntaxError, match=rf"^bad\.bvh:{line}: .*{match}"):
        parse_bvh(text, source="bad.bvh")


@pytest.mark.parametrize(
    "old, new",
    [
        ("MOTION\n", "MOTION\n\n"),  # blank lines in the MOTION header, as between frames
        ("Frame Time:", "\nFrame Time:"),
        ("Frame Time:", "Frame\tTime:"),  # any space between the words, as pybvh reads it
        ("Frame Time:", "Frame  Time:"),
        ("HIERARCHY", "\ufeffHIERARCHY"),  # a UTF-8 byte-order mark, as Windows tools write
    ],
    ids=repr,
)
def test_motion_header_variants_other_readers_accept(old, new):
    clip, ref = parse_bvh(_edit(old, new).replace("\n", "\r\n")), parse_bvh(TINY)
    assert clip.skeleton.names == ref.skeleton.names
    np.testing.assert_array_equal(clip.frames, ref.frames)
    assert clip.frame_time == ref.frame_time


def test_read_bvh_skips_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.bvh"
    path.write_text(TINY, encoding="utf-8-sig")
    np.testing.assert_array_equal(read_bvh(path).frames, parse_bvh(TINY).frames)


def test_render_cli_writes_a_gif_and_rejects_mp4_without_ffmpeg(tmp_path, monkeypatch, capsys):
    pytest.importorskip("PIL")
    src = tmp_path / "tiny.bvh"
    src.write_text(TINY.replace("\n", "\r\n"))  # CRLF, as in the CMU files
    out = tmp_path / "clip.gif"
    assert cli.main(["bvh", "render", str(src), "--out", str(out), "--stride", "1"]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.n_frames == 2
    assert capsys.readouterr().out.startswith("2 of the 2 frames")
    assert cli.main(["bvh", "render", str(src), "--out", str(out), "--stride", "2"]) == 0
    assert capsys.readouterr().out.startswith("1 of the 2 frames")  # what was drawn
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cli.main(["bvh", "render", str(src), "--out", str(tmp_path / "c.mp4")]) == 1
    assert "needs ffmpeg" in capsys.readouterr().err
    bad = tmp_path / "bad.bvh"
    bad.write_text(TINY.replace("Frames: 2", "Frames: 3"))
    assert cli.main(["bvh", "render", str(bad), "--out", str(out)]) == 1
    assert f"{bad}:34: 'Frames: 3' but the file has 2" in capsys.readouterr().err
    assert not list(Path(tmp_path).glob(".clip*"))  # no temporary files left behind


def test_render_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    """Each failure exits 1 with one line on stderr: a zero Frame Time (was a
    ZeroDivisionError traceback), an output path that cannot be created (added matplotlib's
    two-line "Animation was deleted without rendering" warning). A negative --max-frames
    (silently dropped the last frames) is refused while parsing (tests/test_cli.py)."""
    pytest.importorskip("PIL")
    src = tmp_path / "tiny.bvh"
    src.write_text(TINY)
    still = tmp_path / "still.bvh"
    still.write_text(_edit("Frame Time: 0.04", "Frame Time: 0"))
    cases = [
        ([str(still), "--out", str(tmp_path / "a.gif")], "Frame Time must be a positive"),
        ([str(src), "--out", str(src / "c.gif")], str(src)),
    ]
    for argv, match in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cli.main(["bvh", "render", *argv]) == 1
            gc.collect()
        err = capsys.readouterr().err
        assert err.startswith("dgm: error: ") and err.count("\n") == 1, err
        assert match in err
        assert not [str(w.message) for w in caught]
    assert not list(tmp_path.glob("*.gif"))


def test_pose_figure_draws_every_bone():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dgm.bvh.render import pose_figure

    clip = parse_bvh(TINY)
    xyz = np.asarray(joint_positions(clip.skeleton, jnp.asarray(clip.frames[0]), degrees=True))
    fig = pose_figure(xyz, bones(clip.skeleton), title="tiny")
    assert len(fig.axes) == 3
    assert len(fig.axes[1].collections[0].get_segments()) == clip.skeleton.num_nodes - 1
    plt.close(fig)


def test_float32_after_float64_on_the_same_skeleton(shared_data):
    """The cached index plan serves both of JAX's modes: a float64 run, then a float32 one
    of the same skeleton, each through its own function as a user writes them (the plan's
    int64 indices once failed JAX's index normalisation in the second)."""
    clip = read_bvh(shared_data / "cmu_mocap" / "131_03.bvh")
    with jax.numpy_dtype_promotion("standard"):  # the users' setting (the suite's is strict)
        with jax.enable_x64(True):
            fk64 = jax.jit(jax.vmap(lambda s, f: joint_positions(s, f), in_axes=(None, 0)))
            xyz64 = fk64(clip.skeleton, clip.frames)
        fk32 = jax.jit(jax.vmap(lambda s, f: joint_positions(s, f), in_axes=(None, 0)))
        xyz32 = fk32(clip.skeleton, clip.frames)
    assert xyz64.dtype == jnp.float64 and xyz32.dtype == jnp.float32
    np.testing.assert_allclose(xyz32, xyz64, rtol=1e-4, atol=1e-3)


@pytest.mark.usefixtures("x64")
def test_closed_form_fk_jacobian_per_degree_equals_autodiff_on_a_small_skeleton():
    """The default set's check of ``kinematics_jacobian(degrees=True)`` (BVH files' unit; the
    pose model's radians are checked in tests/models/test_pose.py): TINY against jacfwd of
    joint_positions, with bone lengths. The slow test adds the full pose skeleton. Planted
    bug this caught outside the slow set: the rotation columns not scaled per degree."""
    _check_fk_jacobian(parse_bvh(TINY).skeleton, True, np.random.default_rng(3))
