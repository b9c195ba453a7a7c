"""Offline image data sources: sklearn digits, the glyph benchmark, Omniglot / miniImageNet folder loaders."""

import importlib
import pickle
import re

import numpy as np
import pytest
from fontTools import unicodedata as ftu
from PIL import Image

from fsl_jax.data.glyphs import glyphs
from fsl_jax.data.images import ClassDataset, digits, mini_imagenet, omniglot

# the package may export the function `glyphs`, which shadows the submodule as an attribute
glyphs_module = importlib.import_module("fsl_jax.data.glyphs")

# --------------------------------------------------------------------------------------------------------- digits


def test_digits_shape_dtype_and_classes():
    ds = digits()
    assert isinstance(ds, ClassDataset)
    assert ds.data.shape == (10, 174, 8, 8, 1) and ds.data.dtype == np.uint8
    assert ds.names == tuple(str(d) for d in range(10)) and ds.split == "all"
    assert ds.data.min() == 0 and ds.data.max() == 255
    # a "1" has less ink than an "8"; and the classes really differ
    ink = ds.data.reshape(10, -1).mean(axis=1)
    assert ink[1] < ink[8]
    assert not np.array_equal(ds.data[0, 0], ds.data[1, 0])


# --------------------------------------------------------------------------------------------------------- glyphs


@pytest.fixture(scope="module")
def glyph_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("glyph_cache")


@pytest.fixture(scope="module")
def all_glyphs(glyph_cache):
    return glyphs("all", size=16, per_class=2, cache_dir=glyph_cache)


def _codepoint(name: str) -> int:
    return int(name.split()[0][2:], 16)


def test_glyphs_shape_names_and_polarity(all_glyphs):
    data, names = all_glyphs.data, all_glyphs.names
    assert data.dtype == np.uint8 and data.shape[1:] == (2, 16, 16, 1)
    assert 1500 < len(data) < 3500 and len(names) == len(data) and all_glyphs.split == "all"
    assert names[0] == "U+0021 EXCLAMATION MARK"  # the first codepoint kept, in codepoint order
    assert all(re.fullmatch(r"U\+[0-9A-F]{4,6}( [A-Z0-9 \-]+)?", n) for n in names)
    assert [_codepoint(n) for n in names] == sorted(_codepoint(n) for n in names)
    # ink bright on dark: mostly background; no drawing lost its ink (hairlines are never thinned away)
    assert data.mean() < 60
    peak = data.reshape(len(data), 2, -1).max(axis=2)
    assert (peak >= 40).all() and (peak > 128).mean() > 0.99


def test_glyphs_no_duplicate_classes(all_glyphs):
    data, names = all_glyphs.data, all_glyphs.names
    assert len(set(names)) == len(names)
    flat = data.reshape(len(data), -1)
    assert len({row.tobytes() for row in flat}) == len(flat)  # no two classes share a drawing
    # homoglyphs: Latin A, Greek Alpha, Cyrillic A are one class; so are Latin o and Greek omicron
    present = {_codepoint(n) for n in names}
    assert len(present & {0x41, 0x391, 0x410}) == 1
    assert len(present & {0x6F, 0x3BF}) == 1
    assert 0x2800 not in present  # the empty Braille pattern has no ink


def test_glyphs_keep_position_on_the_em_box(all_glyphs):
    by_codepoint = {_codepoint(n): k for k, n in enumerate(all_glyphs.names)}
    rows = np.arange(16, dtype=np.float64)

    def mean_row(codepoint):
        images = all_glyphs.data[by_codepoint[codepoint], ..., 0].astype(np.float64)
        return (images.sum(axis=2) @ rows / images.sum(axis=(1, 2))).mean()

    assert mean_row(0x2E) > mean_row(0xB7) + 2  # full stop sits on the baseline, middle dot above it
    assert mean_row(0x2596) > mean_row(0x2598) + 4  # lower-left vs upper-left quadrant


def test_glyph_splits_disjoint_whole_blocks(all_glyphs, glyph_cache):
    splits = {s: glyphs(s, size=16, per_class=2, cache_dir=glyph_cache) for s in ("train", "val", "test")}
    names = {s: set(ds.names) for s, ds in splits.items()}
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    assert names["train"] | names["val"] | names["test"] == set(all_glyphs.names)
    total = len(all_glyphs.names)
    assert 0.6 < len(names["train"]) / total < 0.8
    assert 0.05 < len(names["val"]) / total < 0.15
    assert 0.15 < len(names["test"]) / total < 0.25
    # a script (letters) or a Unicode block (everything else) never straddles two splits
    owner = {}
    for split, ds in splits.items():
        assert ds.split == split
        for name in ds.names:
            char = chr(_codepoint(name))
            script = ftu.script(char)
            group = ftu.block(char) if script in ("Zyyy", "Zinh", "Zzzz") else script
            assert owner.setdefault(group, split) == split, (name, group)
    # the drawings of a class do not depend on the split it is requested through
    k = all_glyphs.names.index(splits["val"].names[3])
    np.testing.assert_array_equal(all_glyphs.data[k], splits["val"].data[3])


def test_glyphs_deterministic_per_seed(tmp_path):
    kwargs = dict(split="val", size=20, per_class=5, max_classes=6)
    a = glyphs(seed=0, cache_dir=tmp_path / "a", **kwargs)
    b = glyphs(seed=0, cache_dir=tmp_path / "b", **kwargs)  # regenerated, not read from a's cache
    c = glyphs(seed=1, cache_dir=tmp_path / "a", **kwargs)
    assert a.data.shape == (6, 5, 20, 20, 1)
    np.testing.assert_array_equal(a.data, b.data)
    assert a.names == b.names == c.names
    assert not np.array_equal(a.data, c.data)
    # drawers of one class differ from each other
    assert len({x.tobytes() for x in a.data[0]}) == 5


def test_glyphs_cache_round_trip(tmp_path, monkeypatch):
    first = glyphs("test", size=12, per_class=3, seed=2, cache_dir=tmp_path, max_classes=8)
    files = sorted(p.name for p in tmp_path.glob("*.npz"))
    assert len(files) == 1 and "test" in files[0] and "12px" in files[0] and "seed2" in files[0]
    assert list(tmp_path.glob("glyphs-classes-*.json"))  # the class list is cached too

    def no_drawing(*args, **kwargs):
        raise AssertionError("generated instead of reading the cache")

    monkeypatch.setattr(glyphs_module, "_drawers", no_drawing)
    second = glyphs("test", size=12, per_class=3, seed=2, cache_dir=tmp_path, max_classes=8)
    np.testing.assert_array_equal(first.data, second.data)
    assert first.names == second.names and second.split == "test"
    monkeypatch.undo()
    # a corrupt cache file is regenerated, not trusted
    (tmp_path / files[0]).write_bytes(b"not a zip file")
    third = glyphs("test", size=12, per_class=3, seed=2, cache_dir=tmp_path, max_classes=8)
    np.testing.assert_array_equal(first.data, third.data)


def test_glyphs_max_classes_reads_the_full_split_cache(all_glyphs, glyph_cache, monkeypatch):
    monkeypatch.setattr(glyphs_module, "_drawers", None)  # any generation would fail
    head = glyphs("all", size=16, per_class=2, cache_dir=glyph_cache, max_classes=7)
    np.testing.assert_array_equal(head.data, all_glyphs.data[:7])
    assert head.names == all_glyphs.names[:7]


def test_glyphs_default_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_JAX_CACHE", str(tmp_path))
    glyphs("val", size=8, per_class=1, max_classes=2)
    assert len(list(tmp_path.glob("glyphs-val-8px-*.npz"))) == 1


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(split="validation"), r"split.*'validation'"),
        (dict(size=7), r"size.*7"),
        (dict(size=28.0), r"size.*28\.0"),
        (dict(per_class=0), r"per_class.*0"),
        (dict(seed=-1), r"seed.*-1"),
        (dict(max_classes=0), r"max_classes.*0"),
    ],
)
def test_glyphs_argument_validation(kwargs, pattern, tmp_path):
    with pytest.raises(ValueError, match=pattern):
        glyphs(cache_dir=tmp_path, **kwargs)


# --------------------------------------------------------------------------------------------------------- omniglot


def _drawing(size, corner):
    """Black ink (a 4x4 square at ``corner``) on white, as in the Omniglot PNGs."""
    image = np.full((size, size), 255, np.uint8)
    y, x = corner
    image[y : y + 4, x : x + 4] = 0
    return image


@pytest.fixture
def omniglot_root(tmp_path):
    corners = {("Alpha", "character01"): (0, 0), ("Alpha", "character02"): (0, 16), ("Beta", "character01"): (16, 0)}
    for (alphabet, character), corner in corners.items():
        folder = tmp_path / "images_background" / alphabet / character
        folder.mkdir(parents=True)
        count = 4 if character == "character02" else 3  # one class has an extra drawing: truncated
        for k in range(count):
            Image.fromarray(_drawing(20, corner)).save(folder / f"{k:02d}.png")
    return tmp_path


def test_omniglot_loads_inverted_classes(omniglot_root):
    ds = omniglot(omniglot_root, split="background", size=10)
    assert ds.data.shape == (3, 3, 10, 10, 1) and ds.data.dtype == np.uint8
    assert ds.names == ("Alpha/character01", "Alpha/character02", "Beta/character01")
    assert ds.split == "background"
    images = ds.data[..., 0]
    # ink became bright, paper dark; each class keeps its own position (top-left, top-right, bottom-left)
    assert (images[0, :, 0, 0] > 200).all() and (images[1, :, 0, 9] > 200).all() and (images[2, :, 9, 0] > 200).all()
    assert (images[:, :, 5, 5] < 30).all()
    # the images_<split> folder itself is accepted as root
    same = omniglot(omniglot_root / "images_background", split="background", size=10)
    np.testing.assert_array_equal(same.data, ds.data)


def test_omniglot_wrong_layout(omniglot_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images_evaluation.*<Alphabet>/<characterXX>/\*\.png"):
        omniglot(omniglot_root, split="evaluation")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        omniglot(tmp_path / "nowhere")
    (tmp_path / "flat" / "images_background").mkdir(parents=True)
    Image.fromarray(_drawing(20, (0, 0))).save(tmp_path / "flat" / "images_background" / "a.png")
    with pytest.raises(ValueError, match=r"expected layout root/images_background/<Alphabet>/<characterXX>"):
        omniglot(tmp_path / "flat")
    with pytest.raises(ValueError, match=r"split.*'train'"):
        omniglot(omniglot_root, split="train")
    with pytest.raises(ValueError, match=r"size.*0"):
        omniglot(omniglot_root, size=0)


def test_omniglot_corrupt_image_names_the_file(omniglot_root):
    bad = omniglot_root / "images_background" / "Beta" / "character01" / "01.png"
    bad.write_bytes(b"\x89PNG garbage, not an image")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        omniglot(omniglot_root, size=10)


# --------------------------------------------------------------------------------------------------------- miniImageNet

_COLOURS = {"n01": (220, 20, 20), "n02": (20, 220, 20)}


@pytest.fixture
def csv_root(tmp_path):
    (tmp_path / "images").mkdir()
    rows = ["filename,label"]
    for label, count in (("n02", 4), ("n01", 3)):  # listed out of order, one class longer
        for k in range(count):
            name = f"{label}_{k}.jpg"
            Image.new("RGB", (12, 12), _COLOURS[label]).save(tmp_path / "images" / name)
            rows.append(f"{name},{label}")
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_mini_imagenet_csv_layout(csv_root):
    ds = mini_imagenet(csv_root, split="test", size=8)
    assert ds.data.shape == (2, 3, 8, 8, 3) and ds.data.dtype == np.uint8
    assert ds.names == ("n01", "n02") and ds.split == "test"
    mean = ds.data.reshape(2, -1, 3).mean(axis=1)
    assert mean[0, 0] > 180 and mean[0, 1] < 60  # n01 is red
    assert mean[1, 1] > 180 and mean[1, 0] < 60  # n02 is green


def test_mini_imagenet_pickle_layout(tmp_path):
    rng = np.random.default_rng(0)
    image_data = rng.integers(0, 256, size=(7, 84, 84, 3), dtype=np.uint8)
    cache = {"image_data": image_data, "class_dict": {"n2": [1, 3, 5, 6], "n1": [0, 2, 4]}}
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as handle:
        pickle.dump(cache, handle)
    ds = mini_imagenet(tmp_path, split="val")
    assert ds.data.shape == (2, 3, 84, 84, 3) and ds.names == ("n1", "n2") and ds.split == "val"
    np.testing.assert_array_equal(ds.data[0], image_data[[0, 2, 4]])
    np.testing.assert_array_equal(ds.data[1], image_data[[1, 3, 5]])
    small = mini_imagenet(tmp_path, split="val", size=42)
    assert small.data.shape == (2, 3, 42, 42, 3)
    np.testing.assert_allclose(small.data.mean(), image_data.mean(), atol=3)


def test_mini_imagenet_wrong_layout(csv_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train\.csv.*mini-imagenet-cache-train\.pkl"):
        mini_imagenet(csv_root, split="train")
    with pytest.raises(ValueError, match=r"split.*'testing'"):
        mini_imagenet(csv_root, split="testing")
    (csv_root / "test.csv").write_text("path,class\nn01_0.jpg,n01\n")
    with pytest.raises(ValueError, match=r"header 'filename,label'"):
        mini_imagenet(csv_root, split="test")
    bad_pickle = tmp_path / "pickled"
    bad_pickle.mkdir()
    with open(bad_pickle / "mini-imagenet-cache-val.pkl", "wb") as handle:
        pickle.dump({"images": np.zeros((1, 84, 84, 3), np.uint8)}, handle)
    with pytest.raises(ValueError, match=r"'image_data' and 'class_dict'"):
        mini_imagenet(bad_pickle, split="val")


def test_mini_imagenet_corrupt_or_missing_image_names_the_file(csv_root):
    bad = csv_root / "images" / "n01_1.jpg"
    bad.write_bytes(b"garbage bytes")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        mini_imagenet(csv_root, split="test", size=8)
    bad.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(bad))):
        mini_imagenet(csv_root, split="test", size=8)
