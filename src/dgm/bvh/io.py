"""Reading and writing Biovision Hierarchy (BVH) motion files.

A BVH file has two parts. ``HIERARCHY`` is a tree of ``ROOT``/``JOINT`` blocks, each with an
``OFFSET x y z`` from its parent and a ``CHANNELS n name…`` list (any order and count;
``Xposition``, ``Yposition``, ``Zposition``, ``Xrotation``, ``Yrotation``, ``Zrotation``), and
``End Site`` leaves with an offset only. ``MOTION`` gives ``Frames: N``, ``Frame Time: dt`` and
then N lines, each holding one value per channel in depth-first, file order (rotations in
degrees). :func:`parse_bvh` turns the text into a :class:`Bvh`: a
:class:`~dgm.bvh.skeleton.Skeleton` plus a ``(frames, channels)`` array; :func:`format_bvh`
writes one back (``parse_bvh(format_bvh(b))`` equals ``b`` exactly: floats are written with
Python's shortest round-trip ``repr``). An End Site is named ``<Parent>EndSite``.

A malformed file raises :class:`BvhSyntaxError` (a ``ValueError``) naming the line and what
was expected there.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgm.bvh.skeleton import CHANNEL_NAMES, Skeleton

END_SITE_SUFFIX = "EndSite"


class BvhSyntaxError(ValueError):
    """A malformed BVH file; the message starts with ``<source>:<line>:``."""


@dataclass(frozen=True, eq=False)
class Bvh:
    """A parsed BVH file.

    Attributes:
        skeleton: the joint tree (names, parents, offsets, channels).
        frames: ``(num_frames, num_channels)`` float64 motion values, in file units
            (rotations in degrees).
        frame_time: seconds per frame.
    """

    skeleton: Skeleton
    frames: np.ndarray
    frame_time: float

    def __post_init__(self):
        frames = np.asarray(self.frames, dtype=np.float64)
        if frames.ndim != 2 or frames.shape[1] != self.skeleton.num_channels:
            raise ValueError(
                f"`frames` must have shape (num_frames, {self.skeleton.num_channels}) for this "
                f"skeleton; got {frames.shape}"
            )
        object.__setattr__(self, "frames", frames)

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]


class _Tokens:
    """The hierarchy's whitespace-separated tokens, each with its 1-based line number."""

    def __init__(self, lines: list[str], source: str):
        self.items = [(tok, i + 1) for i, line in enumerate(lines) for tok in line.split()]
        self.pos = 0
        self.source = source
        self.last_line = _last_line(lines)

    def error(self, line: int, msg: str) -> BvhSyntaxError:
        return BvhSyntaxError(f"{self.source}:{line}: {msg}")

    def next(self, expected: str) -> tuple[str, int]:
        if self.pos >= len(self.items):
            raise self.error(self.last_line, f"file ended early; expected {expected}")
        item = self.items[self.pos]
        self.pos += 1
        return item

    def expect(self, word: str) -> int:
        tok, line = self.next(repr(word))
        if tok != word:
            raise self.error(line, f"expected {word!r}; got {tok!r}")
        return line

    def number(self, what: str) -> float:
        tok, line = self.next(what)
        try:
            return float(tok)
        except ValueError:
            raise self.error(line, f"expected {what} (a number); got {tok!r}") from None

    def count(self, what: str) -> int:
        tok, line = self.next(what)
        if not (tok.isascii() and tok.isdigit()):  # not '²', which int() refuses
            raise self.error(line, f"expected {what} (a non-negative integer); got {tok!r}")
        return int(tok)


def _parse_node(toks: _Tokens, name: str, parent: int, nodes: list) -> None:
    """One ROOT/JOINT block after its name, appended (depth-first) to ``nodes``."""
    index = len(nodes)
    toks.expect("{")
    toks.expect("OFFSET")
    offset = tuple(toks.number(f"OFFSET {axis} of {name}") for axis in "xyz")
    toks.expect("CHANNELS")
    num = toks.count(f"the channel count of {name}")
    channels = []
    for k in range(num):
        tok, tok_line = toks.next(f"channel {k + 1} of {num} of {name}")
        if tok not in CHANNEL_NAMES:
            hint = " (fewer channels than CHANNELS declares?)" if tok in _KEYWORDS else ""
            raise toks.error(
                tok_line,
                f"expected channel {k + 1} of {num} of {name}, one of {list(CHANNEL_NAMES)}; "
                f"got {tok!r}{hint}",
            )
        channels.append(tok)
    nodes.append((name, parent, offset, tuple(channels)))
    while True:
        tok, line = toks.next(f"JOINT, End Site or '}}' closing {name}")
        if tok == "}":
            return
        if tok == "JOINT":
            child, _ = toks.next("a joint name")
            _parse_node(toks, child, index, nodes)
        elif tok == "End":
            toks.expect("Site")
            toks.expect("{")
            toks.expect("OFFSET")
            end = tuple(toks.number(f"OFFSET {a} of {name}'s End Site") for a in "xyz")
            toks.expect("}")
            nodes.append((name + END_SITE_SUFFIX, index, end, None))
        elif tok in CHANNEL_NAMES or _is_number(tok):
            raise toks.error(
                line, f"{name} has more channels than its CHANNELS count ({num}); got {tok!r}"
            )
        else:
            raise toks.error(line, f"expected JOINT, End Site or '}}' in {name}; got {tok!r}")


_KEYWORDS = ("JOINT", "End", "}", "{", "OFFSET", "CHANNELS", "ROOT", "MOTION")


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _parse_hierarchy(lines: list[str], source: str) -> Skeleton:
    toks = _Tokens(lines, source)
    toks.expect("HIERARCHY")
    toks.expect("ROOT")
    name, _ = toks.next("the root joint's name")
    nodes: list = []
    _parse_node(toks, name, -1, nodes)
    if toks.pos < len(toks.items):
        tok, line = toks.items[toks.pos]
        raise toks.error(line, f"expected MOTION after the root joint's block; got {tok!r}")
    return Skeleton.from_nodes(nodes)


def _header_value(lines: list[str], index: int, label: str, source: str) -> tuple[str, int]:
    """The text after ``label`` on the first non-blank line from ``lines[index]`` on, and that
    line's index. The label's words may be separated by any whitespace (``Frame\tTime:``)."""
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines):
        raise BvhSyntaxError(f"{source}:{_last_line(lines)}: file ended early; expected {label!r}")
    line = lines[index].strip()
    match = re.match(r"\s+".join(map(re.escape, label.split())), line)
    if match is None:
        raise BvhSyntaxError(f"{source}:{index + 1}: expected {label!r}; got {line!r}")
    return line[match.end() :].strip(), index


def _parse_motion(lines: list[str], start: int, num_channels: int, source: str):
    """Frames and frame time from ``lines[start:]`` (``start`` indexes the MOTION line)."""
    raw, index = _header_value(lines, start + 1, "Frames:", source)
    if not (raw.isascii() and raw.isdigit()):
        raise BvhSyntaxError(
            f"{source}:{index + 1}: expected the frame count after 'Frames:'; got {raw!r}"
        )
    num_frames = int(raw)
    raw, index = _header_value(lines, index + 1, "Frame Time:", source)
    try:
        frame_time = float(raw)
    except ValueError:
        raise BvhSyntaxError(
            f"{source}:{index + 1}: expected the frame time (seconds) after 'Frame Time:'; "
            f"got {raw!r}"
        ) from None
    start = index + 1  # the first frame line (blank lines are skipped)
    rows = [(i + 1, line) for i, line in enumerate(lines[start:], start) if line.strip()]
    if len(rows) != num_frames:
        line = rows[num_frames][0] if len(rows) > num_frames else _last_line(lines)
        raise BvhSyntaxError(
            f"{source}:{line}: 'Frames: {num_frames}' but the file has {len(rows)} frame lines"
        )
    frames = np.empty((num_frames, num_channels))
    for k, (line_no, line) in enumerate(rows):
        values = line.split()
        if len(values) != num_channels:
            raise BvhSyntaxError(
                f"{source}:{line_no}: frame {k + 1} has {len(values)} values; expected "
                f"{num_channels} (one per channel in HIERARCHY)"
            )
        try:
            frames[k] = np.array(values, dtype=np.float64)
        except ValueError:
            bad = next(v for v in values if not _is_number(v))
            raise BvhSyntaxError(
                f"{source}:{line_no}: expected a number in frame {k + 1}; got {bad!r}"
            ) from None
    return frames, frame_time


def _last_line(lines: list[str]) -> int:
    """The 1-based number of the last line that is not blank (1 for an empty text)."""
    return next((i + 1 for i in range(len(lines) - 1, -1, -1) if lines[i].strip()), 1)


def parse_bvh(text: str, source: str = "<string>") -> Bvh:
    """Parse BVH text (LF or CRLF line ends; a leading UTF-8 byte-order mark is skipped).

    Args:
        text: the file's contents.
        source: the name used in error messages.

    Raises:
        BvhSyntaxError: a malformed file; the message names the line and what was expected.
    """
    text = text.removeprefix("\ufeff")  # Windows tools' UTF-8 byte-order mark
    lines = [line.rstrip("\r") for line in text.split("\n")]
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].split()[0] != "HIERARCHY":  # not a BVH file at all
        got = lines[first].split()[0]
        raise BvhSyntaxError(f"{source}:{first + 1}: expected 'HIERARCHY'; got {got!r}")
    motion = next((i for i, line in enumerate(lines) if line.strip() == "MOTION"), None)
    if motion is None:
        raise BvhSyntaxError(f"{source}:{_last_line(lines)}: no MOTION line; the file is truncated")
    skeleton = _parse_hierarchy(lines[:motion], source)
    frames, frame_time = _parse_motion(lines, motion, skeleton.num_channels, source)
    return Bvh(skeleton, frames, frame_time)


def read_bvh(path: str | os.PathLike) -> Bvh:
    """Parse a BVH file (see :func:`parse_bvh`)."""
    path = Path(path)
    return parse_bvh(path.read_text(encoding="utf-8", errors="strict"), source=str(path))


def _num(x: float) -> str:
    return repr(float(x))


def format_bvh(bvh: Bvh) -> str:
    """BVH text for ``bvh`` (LF line ends, tab indents), exact under :func:`parse_bvh`."""
    sk = bvh.skeleton
    out = ["HIERARCHY"]
    children: dict[int, list[int]] = {i: [] for i in range(sk.num_nodes)}
    for i, p in enumerate(sk.parents):
        if p >= 0:
            children[p].append(i)

    order: list[int] = []  # nodes as written: depth-first, which node order need not be

    def emit(i: int, depth: int) -> None:
        order.append(i)
        pad = "\t" * depth
        offset = " ".join(_num(v) for v in sk.offsets[i])
        if sk.channels[i] is None:
            out.extend([f"{pad}End Site", f"{pad}{{", f"{pad}\tOFFSET {offset}", f"{pad}}}"])
            return
        keyword = "ROOT" if sk.parents[i] < 0 else "JOINT"
        chans = " ".join(sk.channels[i])
        out.extend([f"{pad}{keyword} {sk.names[i]}", f"{pad}{{", f"{pad}\tOFFSET {offset}"])
        out.append(f"{pad}\tCHANNELS {len(sk.channels[i])}" + (f" {chans}" if chans else ""))
        for c in children[i]:
            emit(c, depth + 1)
        out.append(f"{pad}}}")

    emit(0, 0)
    starts = sk.channel_starts
    columns = [starts[i] + k for i in order for k in range(len(sk.channels[i] or ()))]
    out += ["MOTION", f"Frames: {bvh.num_frames}", f"Frame Time: {_num(bvh.frame_time)}"]
    out += [" ".join(map(repr, row)) for row in bvh.frames[:, columns].tolist()]
    return "\n".join(out) + "\n"


def write_bvh(path: str | os.PathLike, bvh: Bvh) -> None:
    """Write ``bvh`` to ``path`` atomically (see :func:`format_bvh`)."""
    from dgm.runs import write_text

    write_text(path, format_bvh(bvh))
