"""An offline, Omniglot-like benchmark: Unicode glyphs drawn from the DejaVu fonts that matplotlib ships.

Each class is one Unicode character; each example (a "drawer") renders it with a randomly chosen DejaVu face (Sans,
Serif, Mono and their bold / oblique variants), a stroke-width jitter, a random affine (rotation, scale, aspect,
shear, translation) and a mild elastic distortion, at twice the output resolution, then box-downsampled. Ink is
bright on a dark background, like the usual (inverted) Omniglot.

The class list depends only on the fonts:

* codepoints present in at least 6 of the 12 DejaVu faces, letters / digits / punctuation / symbols only;
* glyphs are placed on the em box (horizontally centred on their advance, on a fixed baseline), not on their ink,
  so position is part of the class (``.`` vs ``·``, ``▖`` vs ``▘``);
* faces where the glyph is empty, tiny (ink below 0.4 % of the canvas) or wider than the canvas are dropped;
* near-duplicates are removed: two glyphs are the same class when ``sum|a - b| / (sum a + sum b) < 0.05`` for some
  face they share and some shift of at most one pixel, on 16 x 16 clean renderings (``A``/``Α``/``А`` keep one);
* at most 150 classes per Unicode block (evenly spaced in the block), so Braille or box drawing cannot dominate.

Splits are made of whole scripts (letters) and whole Unicode blocks (symbols, digits, punctuation), about 70 / 10 /
20 % of classes for train / val / test, so test scripts are unseen in training.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import tempfile
import unicodedata
import warnings
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fsl_jax import _validate
from fsl_jax.data.images import ClassDataset

SPLITS = ("train", "val", "test", "all")
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
MIN_FACES = 6
BLOCK_CAP = 150
DEDUP_THRESHOLD = 0.05
MIN_INK_FRACTION = 0.004

_VERSION = 1  # bump when the generated arrays change
_REFERENCE = 64  # canvas of the clean renderings used to select classes
_COMPARE = 16  # resolution at which near-duplicates are compared
_EM_FRACTION = 0.9  # the font's ascender-to-descender span as a fraction of the canvas
_CATEGORIES = ("L", "N", "P", "S")
_MESH = 4  # the elastic distortion moves the corners of a _MESH x _MESH grid of bilinear cells


class _Face(NamedTuple):
    path: str
    name: str
    bold: bool


class _Catalogue(NamedTuple):
    codepoints: np.ndarray  # [classes] int, sorted
    faces: tuple[tuple[int, ...], ...]  # usable face indices per class
    splits: np.ndarray  # [classes] str: "train" / "val" / "test"


@functools.lru_cache(maxsize=1)
def _faces() -> tuple[_Face, ...]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = sorted(p for p in glob.glob(str(folder / "DejaVu*.ttf")) if "Display" not in Path(p).name)
    if not paths:
        raise FileNotFoundError(f"no DejaVu fonts found in {str(folder)!r} (they ship with matplotlib)")
    return tuple(_Face(p, Path(p).stem, "Bold" in Path(p).stem) for p in paths)


@functools.lru_cache(maxsize=64)
def _font(path: str, canvas: int) -> ImageFont.FreeTypeFont:
    # DejaVu's ascender + descender is 1.164 em; size the font so that span is _EM_FRACTION of the canvas.
    pixels = max(1, round(_EM_FRACTION * canvas / 1.164))
    return ImageFont.truetype(path, size=pixels, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=16)
def _baseline(canvas: int) -> float:
    sans = next(face for face in _faces() if face.name == "DejaVuSans")  # one baseline for every face
    ascent, descent = _font(sans.path, canvas).getmetrics()
    return (canvas - ascent - descent) / 2 + ascent


def _render(char: str, face: int, canvas: int) -> Image.Image:
    """Clean rendering on the em box: centred on the advance width, fixed baseline, ink 255 on 0."""
    image = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(image).text(
        (canvas / 2, _baseline(canvas)), char, fill=255, font=_font(_faces()[face].path, canvas), anchor="ms"
    )
    return image


def _unicode_block(codepoint: int) -> str:
    from fontTools import unicodedata as ftu

    return ftu.block(chr(codepoint))


def _split_group(codepoint: int) -> str:
    """Letters split by script, everything else (digits, punctuation, symbols) by Unicode block."""
    from fontTools import unicodedata as ftu

    script = ftu.script(chr(codepoint))
    if script in ("Zyyy", "Zinh", "Zzzz"):  # common, inherited, unknown
        return "block:" + _unicode_block(codepoint)
    return "script:" + script


def _candidates() -> tuple[list[int], list[list[int]]]:
    from matplotlib.ft2font import FT2Font

    charmaps = [set(FT2Font(face.path).get_charmap()) for face in _faces()]
    counts = Counter(c for charmap in charmaps for c in charmap)
    codepoints = sorted(
        c for c, n in counts.items() if n >= MIN_FACES and unicodedata.category(chr(c))[0] in _CATEGORIES
    )
    return codepoints, [[f for f, charmap in enumerate(charmaps) if c in charmap] for c in codepoints]


def _near_duplicates(images: np.ndarray, valid: np.ndarray, chunk: int = 200_000) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, whose distance is below the threshold for some shared face and shift.

    ``images`` is ``[glyphs, faces, s, s]`` in [0, 1]; ``valid`` is ``[glyphs, faces]``. Each stage below is a lower
    bound of the distance minimised over shifts, so pruning never loses a pair: ink sums within the ratio the
    threshold allows (``|sum a - sum b| <= sum|a - b|``); the L1 gap of the six largest entries of the sorted row and
    column ink profiles (shift-invariant); the row / column profiles' L1 distance minimised over their shifts; then the
    full comparison over the 9 shifts.
    """
    limit = DEDUP_THRESHOLD
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))  # empty border: rolling by 1 only moves ink
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    pairs: set[tuple[int, int]] = set()
    for face in range(images.shape[1]):
        index = np.flatnonzero(valid[:, face])
        a = padded[index, face]  # [n, s + 2, s + 2]
        ink = a.sum(axis=(1, 2))
        order = np.argsort(ink, kind="stable")
        index, a, ink = index[order], a[order], ink[order]
        rows, cols = a.sum(axis=2), a.sum(axis=1)  # [n, s + 2] ink profiles
        # the largest entries of the sorted profiles: shift-invariant, and their L1 gap bounds the images' L1 distance
        top = np.concatenate([np.sort(rows, axis=1)[:, -6:], np.sort(cols, axis=1)[:, -6:]], axis=1)
        half = limit * ink
        # in ink order, glyph k is compared with k + 1 .. stop[k] - 1
        stop = np.searchsorted(ink, ink * (1 + limit) / (1 - limit), side="right")
        lengths = np.maximum(stop - np.arange(len(index)) - 1, 0)
        first = np.repeat(np.arange(len(index), dtype=np.int32), lengths)
        starts = np.repeat((np.cumsum(lengths) - lengths).astype(np.int32), lengths)
        second = first + 1 + np.arange(lengths.sum(), dtype=np.int32) - starts
        for start in range(0, len(first), chunk):
            i, j = first[start : start + chunk], second[start : start + chunk]
            gap = np.abs(top[i] - top[j])
            keep = np.maximum(gap[:, :6].sum(1), gap[:, 6:].sum(1)) < half[i] + half[j]
            i, j = i[keep], j[keep]
            budget = half[i] + half[j]
            bound = np.zeros(len(i), np.float32)
            for profile in (rows, cols):
                pi, pj = profile[i], profile[j]
                best = np.minimum.reduce([np.abs(pi - np.roll(pj, d, axis=1)).sum(1) for d in (-1, 0, 1)])
                bound = np.maximum(bound, best)
            keep = bound < budget
            i, j, budget = i[keep], j[keep], budget[keep]
            if not len(i):
                continue
            ai, aj = a[i], a[j]
            best = np.minimum.reduce(
                [np.abs(ai - np.roll(aj, shift, axis=(1, 2))).sum(axis=(1, 2)) for shift in shifts]
            )
            close = best < budget
            for p, q in zip(index[i[close]].tolist(), index[j[close]].tolist()):
                pairs.add((min(p, q), max(p, q)))
    return pairs


def _build_catalogue() -> _Catalogue:
    codepoints, has_face = _candidates()
    n_faces = len(_faces())
    canvas, factor = _REFERENCE, _REFERENCE // _COMPARE
    small = np.zeros((len(codepoints), n_faces, _COMPARE, _COMPARE), np.float32)
    valid = np.zeros((len(codepoints), n_faces), bool)
    for g, (codepoint, faces) in enumerate(zip(codepoints, has_face)):
        clean = np.stack([np.asarray(_render(chr(codepoint), f, canvas)) for f in faces])  # [faces, canvas, canvas]
        ink = clean.sum(axis=(1, 2), dtype=np.int64)
        edges = clean[:, 0].any(1) | clean[:, -1].any(1) | clean[:, :, 0].any(1) | clean[:, :, -1].any(1)
        valid[g, faces] = (ink >= MIN_INK_FRACTION * canvas * canvas * 255) & ~edges  # not tiny, not clipped
        small[g, faces] = clean.reshape(-1, _COMPARE, factor, _COMPARE, factor).mean(axis=(2, 4)) / 255.0
    index = np.flatnonzero(valid.sum(axis=1) >= MIN_FACES)
    dropped: set[int] = set()
    for i, j in sorted(_near_duplicates(small[index], valid[index]), key=lambda pair: (pair[1], pair[0])):
        if i not in dropped:  # j is a near-duplicate of a lower codepoint that stays
            dropped.add(j)
    kept = [int(g) for k, g in enumerate(index) if k not in dropped]
    blocks: dict[str, list[int]] = {}
    for g in kept:
        blocks.setdefault(_unicode_block(codepoints[g]), []).append(g)
    selected: list[int] = []
    for members in blocks.values():
        if len(members) > BLOCK_CAP:  # evenly spaced over the block
            members = [members[k] for k in np.round(np.linspace(0, len(members) - 1, BLOCK_CAP)).astype(int)]
        selected.extend(members)
    selected.sort()
    chosen = np.array([codepoints[g] for g in selected], dtype=np.int64)
    chosen_faces = tuple(tuple(int(f) for f in np.flatnonzero(valid[g])) for g in selected)
    # whole groups per split: largest group first, each to the split furthest below its target
    groups: dict[str, list[int]] = {}
    for k, codepoint in enumerate(chosen):
        groups.setdefault(_split_group(int(codepoint)), []).append(k)
    targets = {name: fraction * len(chosen) for name, fraction in SPLIT_FRACTIONS.items()}
    filled = dict.fromkeys(SPLIT_FRACTIONS, 0)
    splits = [""] * len(chosen)
    for group in sorted(groups, key=lambda name: (-len(groups[name]), name)):
        name = max(SPLIT_FRACTIONS, key=lambda split: targets[split] - filled[split])
        for k in groups[group]:
            splits[k] = name
        filled[name] += len(groups[group])
    return _Catalogue(chosen, chosen_faces, np.array(splits))


@functools.lru_cache(maxsize=1)
def _fingerprint() -> str:
    """Everything the generated arrays depend on besides the arguments."""
    import fontTools
    import matplotlib
    import PIL

    parts = {
        "version": _VERSION,
        "pil": PIL.__version__,
        "matplotlib": matplotlib.__version__,
        "fonttools": fontTools.version,
        "unicode": unicodedata.unidata_version,
        "fonts": [(face.name, os.path.getsize(face.path)) for face in _faces()],
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("FSL_JAX_CACHE") or Path.home() / ".cache" / "fsl_jax"
    return Path(cache_dir).expanduser()


def _atomic_write(path: Path, write: Any) -> None:
    """Writes through a temporary file in the same folder, so readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                write(stream)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    except OSError as error:
        warnings.warn(f"could not write the glyph cache {str(path)!r}: {error}", stacklevel=3)


_CATALOGUES: dict[str, _Catalogue] = {}


def _read_catalogue(path: Path) -> _Catalogue | None:
    try:
        stored = json.loads(path.read_text())
        catalogue = _Catalogue(
            np.array(stored["codepoints"], dtype=np.int64),
            tuple(tuple(int(f) for f in faces) for faces in stored["faces"]),
            np.array(stored["splits"], dtype=str),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    consistent = len(catalogue.codepoints) == len(catalogue.faces) == len(catalogue.splits)
    return catalogue if consistent and set(catalogue.splits.tolist()) <= set(SPLIT_FRACTIONS) else None


def _catalogue(cache_dir: str | os.PathLike[str] | None = None) -> _Catalogue:
    """The benchmark's classes: depend on the fonts only, not on size, seed or split. Cached in memory and on disk."""
    key = _fingerprint()
    path = _cache_root(cache_dir) / f"glyphs-classes-{key}.json"
    catalogue = _CATALOGUES.get(key)
    if catalogue is None:
        catalogue = _read_catalogue(path)
    if catalogue is None:
        catalogue = _build_catalogue()
    if not path.is_file():
        record = {
            "codepoints": catalogue.codepoints.tolist(),
            "faces": [list(faces) for faces in catalogue.faces],
            "splits": catalogue.splits.tolist(),
        }
        _atomic_write(path, lambda stream: stream.write(json.dumps(record).encode()))
    _CATALOGUES[key] = catalogue
    return catalogue


def _morph(image: np.ndarray, radius: int, direction: int) -> np.ndarray:
    """Grey dilation (``direction > 0``) or erosion (``< 0``) by a square of side ``2 * radius + 1``, separably."""
    op = np.maximum if direction > 0 else np.minimum
    out = image
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        length = out.shape[axis]
        out = functools.reduce(op, (padded.take(range(d, d + length), axis=axis) for d in range(2 * radius + 1)))
    return out


class _Drawers(NamedTuple):
    """Random drawers of one class: source image per example, plus the output -> source warp."""

    sources: list[np.ndarray]  # the distinct (face, stroke width) renderings this class uses, uint8 [R, R]
    source: np.ndarray  # [n] index into sources
    inverse: np.ndarray  # [n, 2, 2] inverse of the affine, (x, y) order
    shift: np.ndarray  # [n, 2] translation in pixels
    wobble: np.ndarray  # [n, _MESH + 1, _MESH + 1, 2] source displacement at the mesh corners, pixels


def _drawers(codepoint: int, faces: tuple[int, ...], canvas: int, per_class: int, seed: int) -> _Drawers:
    """Draws the random parameters of one class. Its stream depends only on ``seed`` and the codepoint, so a class
    has the same examples whatever the split or ``max_classes``."""
    rng = np.random.default_rng([seed, codepoint])
    n = per_class
    face = np.asarray(faces)[rng.integers(len(faces), size=n)]
    stroke = rng.integers(-1, 2, size=n)  # thinner, same, bolder
    stroke[(stroke < 0) & ~np.array([_faces()[f].bold for f in face])] = 0  # thin bold faces only: strokes never vanish
    angle = np.deg2rad(rng.uniform(-12.0, 12.0, size=n))
    scale = np.exp(rng.uniform(np.log(0.85), np.log(1.1), size=n))
    aspect = np.exp(rng.normal(0.0, 0.06, size=n))
    shear = rng.uniform(-0.15, 0.15, size=n)
    shift = rng.uniform(-0.05, 0.05, size=(n, 2)) * canvas
    wobble = rng.normal(0.0, 0.02 * canvas, size=(n, _MESH + 1, _MESH + 1, 2))
    cos, sin, zero, one = np.cos(angle), np.sin(angle), np.zeros(n), np.ones(n)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    skew = np.stack([np.stack([one, shear], -1), np.stack([zero, one], -1)], -2)
    stretch = np.stack([np.stack([scale * aspect, zero], -1), np.stack([zero, scale / aspect], -1)], -2)
    inverse = np.linalg.inv(rotate @ skew @ stretch)

    radius = max(1, round(canvas / 56))  # stroke jitter: +-1 px at 56 px
    variants: dict[tuple[int, int], int] = {}
    sources: list[np.ndarray] = []
    clean: dict[int, np.ndarray] = {}
    index = np.empty(n, np.int64)
    for k, (f, s) in enumerate(zip(face.tolist(), stroke.tolist())):
        if (f, s) not in variants:
            if f not in clean:
                clean[f] = np.asarray(_render(chr(codepoint), f, canvas))
            image = _morph(clean[f], radius, s) if s else clean[f]
            if s < 0 and image.sum(dtype=np.int64) < 0.5 * clean[f].sum(dtype=np.int64):
                image = clean[f]  # hairlines (outlined symbols) would vanish: keep them as drawn
            variants[f, s] = len(sources)
            sources.append(image)
        index[k] = variants[f, s]
    return _Drawers(sources, index, inverse, shift, wobble)


def _draw(drawers: _Drawers, canvas: int) -> np.ndarray:
    """Renders one class's drawers: the mesh warp at ``canvas`` px (bilinear), box-downsampled by 2, uint8."""
    edges = np.linspace(0, canvas, _MESH + 1).round().astype(int).tolist()
    corners = np.stack(np.meshgrid(edges, edges, indexing="xy"), axis=-1) - canvas / 2  # [mesh+1, mesh+1, (x, y)]
    # output mesh corner -> source point: inverse affine about the centre, then the elastic wobble
    moved = corners - drawers.shift[:, None, None, :]
    points = (np.einsum("nij,nyxj->nyxi", drawers.inverse, moved) + canvas / 2 + drawers.wobble).tolist()
    cells = [(x, y, (edges[x], edges[y], edges[x + 1], edges[y + 1])) for y in range(_MESH) for x in range(_MESH)]
    sources = [Image.fromarray(source) for source in drawers.sources]
    size = canvas // 2
    out = np.empty((len(points), size, size), np.uint8)
    for k, p in enumerate(points):
        # each output cell samples the source quad spanned by its moved corners (UL, LL, LR, UR)
        mesh = [(box, (*p[y][x], *p[y + 1][x], *p[y + 1][x + 1], *p[y][x + 1])) for x, y, box in cells]
        image = sources[drawers.source[k]].transform(
            (canvas, canvas), Image.Transform.MESH, mesh, resample=Image.Resampling.BILINEAR, fillcolor=0
        )
        out[k] = np.asarray(image.reduce(2))
    return out


def _class_name(codepoint: int) -> str:
    name = unicodedata.name(chr(codepoint), "")
    return f"U+{codepoint:04X} {name}" if name else f"U+{codepoint:04X}"


def _load_cached(path: Path, classes: int, shape: tuple[int, int, int]) -> ClassDataset | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            data, names, split = stored["data"], tuple(str(n) for n in stored["names"]), str(stored["split"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if data.dtype != np.uint8 or data.shape[1:] != (*shape, 1) or len(names) != len(data) or len(data) < classes:
        return None
    return ClassDataset(data[:classes], names[:classes], split)


def glyphs(
    split: str = "train",
    size: int = 28,
    per_class: int = 20,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    max_classes: int | None = None,
) -> ClassDataset:
    """The offline glyph benchmark: Unicode characters from DejaVu fonts as Omniglot-like classes.

    Every class is one character; every example is the character drawn with a random DejaVu face, stroke width,
    affine transform and elastic distortion (see the module docstring for how classes are chosen and split). The
    result is deterministic in ``seed`` (byte-identical arrays) and cached as ``.npz`` under ``cache_dir``, keyed by
    all arguments and the font / library versions. The full set (2,330 classes, 28 px, 20 per class, 37 MB) takes
    about 15 s to generate on two CPU cores and well under a second to read back; a progress bar appears when
    generation takes longer than two seconds.

    Args:
      split: ``"train"`` (~70 % of classes), ``"val"`` (~10 %), ``"test"`` (~20 %) or ``"all"``. Splits hold whole
        scripts / Unicode blocks, so test scripts are never seen in training.
      size: output height and width in pixels (>= 8). Glyphs are rendered at twice this and box-downsampled.
      per_class: drawings per class (>= 1).
      seed: non-negative random seed; each class's drawings depend only on it and the character.
      cache_dir: cache folder; defaults to ``$FSL_JAX_CACHE`` or ``~/.cache/fsl_jax``.
      max_classes: keep only the first ``max_classes`` classes of the split (in codepoint order), for fast tests.

    Returns:
      ``ClassDataset`` with ``data`` uint8 ``[classes, per_class, size, size, 1]`` (ink bright on dark) and names
      like ``"U+0041 LATIN CAPITAL LETTER A"``.

    Example:
      >>> from fsl_jax.data.glyphs import glyphs
      >>> ds = glyphs("test", size=28, per_class=20, max_classes=5)
      >>> ds.data.shape, ds.data.dtype, ds.split
      ((5, 20, 28, 28, 1), dtype('uint8'), 'test')
      >>> ds.names[0]
      'U+00A1 INVERTED EXCLAMATION MARK'
    """
    split = _validate.choice("split", split, SPLITS)
    size = _validate.integer("size", size, 8)
    per_class = _validate.integer("per_class", per_class, 1)
    seed = _validate.integer("seed", seed, 0)
    if max_classes is not None:
        max_classes = _validate.integer("max_classes", max_classes, 1)
    catalogue = _catalogue(cache_dir)
    chosen = np.arange(len(catalogue.codepoints)) if split == "all" else np.flatnonzero(catalogue.splits == split)
    chosen = chosen[:max_classes]
    root, key = _cache_root(cache_dir), _fingerprint()
    stem = f"glyphs-{split}-{size}px-{per_class}each-seed{seed}"
    path = root / f"{stem}-{max_classes or 'all'}-{key}.npz"
    for candidate in (path, root / f"{stem}-all-{key}.npz"):  # a cached full split also serves max_classes
        cached = _load_cached(candidate, len(chosen), (per_class, size, size))
        if cached is not None:
            return cached

    from fsl_jax._progress import progress

    data = np.empty((len(chosen), per_class, size, size, 1), np.uint8)
    canvas = 2 * size
    with progress(total=len(chosen), desc=f"glyphs {split} {size}px", unit="class", delay=2.0, leave=False) as bar:
        for k, g in enumerate(chosen):
            drawers = _drawers(int(catalogue.codepoints[g]), catalogue.faces[g], canvas, per_class, seed)
            data[k, ..., 0] = _draw(drawers, canvas)
            bar.update()
    names = tuple(_class_name(int(catalogue.codepoints[g])) for g in chosen)

    def write(stream: Any) -> None:
        np.savez(stream, data=data, names=np.array(names), split=np.array(split))

    _atomic_write(path, write)
    return ClassDataset(data, names, split)
