"""fj.data.image_folder: a lazily decoded class source over root/<class>/<image files>; write_image_folder."""

import json
import os
import pickle
import re
import warnings

import numpy as np
import pytest
from PIL import Image

import fsl_jax as fj
from fsl_jax._config import describe
from fsl_jax.data.folders import ImageFolder, image_folder, write_image_folder


def _pixels(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])


@pytest.fixture
def rgb(tmp_path):
    """Three classes of four random 5 x 7 RGB images, written as PNG."""
    pixels = _pixels((3, 4, 5, 7, 3))
    root = write_image_folder(tmp_path / "rgb", pixels, ["zebra", "ant", "moth"])
    return root, pixels


# ------------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_exact_pixels(tmp_path, channels):
    shape = (3, 4, 5, 7) if channels == 1 else (3, 4, 5, 7, 3)  # grey written as rank 4, non-square images
    pixels = _pixels(shape, seed=channels)
    returned = write_image_folder(tmp_path / "data", pixels, ["b", "c", "a"])
    assert returned == str(tmp_path / "data")
    source = image_folder(tmp_path / "data", size=(5, 7), channels=channels)
    assert isinstance(source, ImageFolder) and len(source) == source.num_classes == 3
    assert source.class_names == ("a", "b", "c")  # sorted folder names, not the order written
    assert source.counts.dtype == np.int64 and source.counts.tolist() == [4, 4, 4]
    assert source.feature_shape == (5, 7, channels) and source.dtype == np.uint8
    expected = pixels if channels == 3 else pixels[..., None]
    written_as = {"a": 2, "b": 0, "c": 1}
    for c, name in enumerate(source.class_names):
        for i in range(4):
            image = source.load(c, i)
            assert image.dtype == np.uint8 and image.shape == (5, 7, channels)
            np.testing.assert_array_equal(image, expected[written_as[name], i])
        many = source.load_many(c, [3, 0, 3])
        assert many.shape == (3, 5, 7, channels) and many.dtype == np.uint8
        np.testing.assert_array_equal(many, expected[written_as[name]][[3, 0, 3]])
    assert source.load_many(0, []).shape == (0, 5, 7, channels)


def test_rank5_grey_and_bmp(tmp_path):
    pixels = _pixels((2, 2, 3, 4, 1))
    write_image_folder(tmp_path / "bmp", pixels, format="bmp")
    source = image_folder(tmp_path / "bmp", size=(3, 4), channels=1)
    assert source.class_names == ("c00000", "c00001")
    assert all(f.endswith(".bmp") for files in source.files for f in files)
    np.testing.assert_array_equal(np.stack([source.load_many(c, [0, 1]) for c in range(2)]), pixels)


def test_channels_convert_between_grey_and_rgb(rgb):
    root, pixels = rgb
    grey = image_folder(root, size=(5, 7), channels=1).load(0, 0)  # class 0 is "ant", written second
    expected = np.asarray(Image.fromarray(pixels[1, 0]).convert("L"))[..., None]
    np.testing.assert_array_equal(grey, expected)
    assert grey.shape == (5, 7, 1)


def test_resize_to_requested_shape(rgb, tmp_path):
    root, _ = rgb
    tall = image_folder(root, size=(9, 4))
    assert tall.feature_shape == (9, 4, 3) and tall.load(0, 1).shape == (9, 4, 3)
    assert tall.load_many(2, [0, 1]).shape == (2, 9, 4, 3)
    square = image_folder(root, size=6, channels=1)
    assert square.feature_shape == (6, 6, 1) and square.load(2, 3).shape == (6, 6, 1)
    # bilinear resizing of a flat image keeps its colour
    flat = np.full((1, 1, 5, 7, 3), (10, 200, 90), np.uint8)
    write_image_folder(tmp_path / "flat", flat)
    np.testing.assert_array_equal(
        image_folder(tmp_path / "flat", size=(12, 3)).load(0, 0),
        np.broadcast_to(np.array([10, 200, 90], np.uint8), (12, 3, 3)),
    )


def test_listing_is_sorted_case_insensitive_and_skips_other_files(tmp_path):
    folder = tmp_path / "data" / "only"
    folder.mkdir(parents=True)
    pixels = _pixels((4, 3, 3, 3))
    for name, image in zip(["b.PNG", "a.png", "c.Jpeg", "d.bmp"], pixels):
        Image.fromarray(image).save(folder / name, format="BMP" if name.endswith(".bmp") else None)
    Image.fromarray(pixels[0]).save(folder / ".hidden.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested.png").mkdir()  # a folder with an image suffix is not a file
    (tmp_path / "data" / ".cache").mkdir()  # a hidden folder is not a class
    Image.fromarray(pixels[0]).save(tmp_path / "data" / "loose.png")  # files directly in root are not classes
    source = image_folder(tmp_path / "data", size=3)
    assert source.class_names == ("only",)
    assert source.root == str(tmp_path / "data")
    assert source.files == (tuple(str(folder / n) for n in ["a.png", "b.PNG", "c.Jpeg", "d.bmp"]),)
    np.testing.assert_array_equal(source.load(0, 0), pixels[1])
    again = image_folder(tmp_path / "data", size=3)
    assert again.files == source.files and again.config == source.config


def test_construction_decodes_nothing(rgb, monkeypatch):
    root, pixels = rgb
    calls = []
    real_open = Image.open

    def counting_open(*args, **kwargs):
        calls.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    source = image_folder(root, size=(5, 7))
    assert calls == []
    _ = source.config, repr(source), len(source)
    assert calls == []
    np.testing.assert_array_equal(source.load(0, 2), pixels[1, 2])  # class "ant"
    assert calls == [source.files[0][2]]
    source.load_many(1, [0, 1])
    assert len(calls) == 3
    image_folder(root, size=(5, 7), verify=True)  # verify decodes every file at construction
    assert len(calls) == 3 + 12


def test_pickle_round_trip_loads_same_pixels(rgb):
    root, _ = rgb
    source = image_folder(root, size=(4, 4), channels=1)
    copy = pickle.loads(pickle.dumps(source))
    assert copy.class_names == source.class_names and copy.files == source.files
    assert copy.feature_shape == source.feature_shape and copy.config == source.config
    np.testing.assert_array_equal(copy.counts, source.counts)
    for c in range(3):
        np.testing.assert_array_equal(copy.load_many(c, [0, 1, 2, 3]), source.load_many(c, [0, 1, 2, 3]))


def test_config_is_json_and_fingerprints_the_listing(rgb):
    root, _ = rgb
    source = image_folder(root, size=(5, 7))
    config = source.config
    assert json.loads(json.dumps(config)) == config
    assert config["root"] == root and config["classes"] == 3 and config["files"] == 12
    assert config["size"] == [5, 7] and config["channels"] == 3
    assert re.fullmatch(r"[0-9a-f]{16}", config["listing"])
    assert describe(source) == config
    assert image_folder(root, size=(5, 7)).config == config
    assert image_folder(root, size=5).config != config
    os.rename(os.path.join(root, "moth", "00003.png"), os.path.join(root, "moth", "00009.png"))
    renamed = image_folder(root, size=(5, 7)).config
    assert renamed["files"] == 12 and renamed["listing"] != config["listing"]
    assert "ImageFolder(" in repr(source) and "classes=3" in repr(source) and "files=12" in repr(source)


def test_ragged_counts_and_episode_loader(rgb):
    root, _ = rgb
    os.remove(os.path.join(root, "zebra", "00001.png"))
    source = image_folder(root, size=(5, 7))
    assert source.counts.tolist() == [4, 4, 3]
    assert source.files[2] == tuple(os.path.join(root, "zebra", f"0000{i}.png") for i in (0, 2, 3))
    assert fj.data.image_folder is image_folder and fj.data.ImageFolder is ImageFolder
    assert fj.data.write_image_folder is write_image_folder
    loader = fj.data.EpisodeLoader(source, ways=2, shots=1, queries=1, seed=0, workers=0)
    batch = loader.sample(3, index=0)
    assert batch.support_x.shape == (3, 2, 5, 7, 3)
    every = np.stack([source.load_many(c, np.arange(n)) for c, n in enumerate(source.counts) if n == 4])
    allowed = {x.tobytes() for x in (every.reshape(-1, 5, 7, 3).astype(np.float32) / 255.0)}
    allowed |= {(x.astype(np.float32) / 255.0).tobytes() for x in source.load_many(2, [0, 1, 2])}
    assert all(x.tobytes() in allowed for x in np.asarray(batch.support_x).reshape(-1, 5, 7, 3))


# ------------------------------------------------------------------------------------------------ small classes


def test_empty_class_folder_is_an_error_naming_it(rgb):
    root, _ = rgb
    os.mkdir(os.path.join(root, "empty"))
    with pytest.raises(ValueError, match=re.escape(os.path.join(root, "empty")) + r" holds 0 images.*min_per_class=1"):
        image_folder(root, size=4)


def test_small_classes_error_and_skip(rgb):
    root, _ = rgb
    for i in (1, 2, 3):
        os.remove(os.path.join(root, "moth", f"0000{i}.png"))
    with pytest.raises(ValueError, match=re.escape(os.path.join(root, "moth")) + r" holds 1 images.*min_per_class=2"):
        image_folder(root, size=4, min_per_class=2)
    with pytest.warns(
        UserWarning, match=r"skipped 1 class folders.*min_per_class=2.*" + re.escape(os.path.join(root, "moth"))
    ):
        source = image_folder(root, size=4, min_per_class=2, small_classes="skip")
    assert source.class_names == ("ant", "zebra") and source.counts.tolist() == [4, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to skip: no warning
        assert image_folder(root, size=4, small_classes="skip").num_classes == 3
    with pytest.warns(UserWarning, match="skipped 3 class folders"), pytest.raises(ValueError, match=re.escape(root)):
        image_folder(root, size=4, min_per_class=5, small_classes="skip")


# ------------------------------------------------------------------------------------------------ bad files


def test_truncated_file_raises_at_load_naming_it(rgb):
    root, _ = rgb
    bad = os.path.join(root, "ant", "00002.png")
    _truncate(bad)
    source = image_folder(root, size=(5, 7))  # listing only: no error yet
    assert source.load(0, 1).shape == (5, 7, 3)
    with pytest.raises(ValueError, match="cannot decode image " + re.escape(bad)) as info:
        source.load(0, 2)
    assert info.value.__cause__ is not None
    with pytest.raises(ValueError, match=re.escape(bad)):
        source.load_many(0, [0, 2])
    with open(os.path.join(root, "moth", "00000.png"), "wb") as handle:
        handle.write(b"\x89PNG not really")
    with pytest.raises(ValueError, match=re.escape(os.path.join(root, "moth", "00000.png"))):
        source.load(1, 0)
    os.remove(os.path.join(root, "moth", "00001.png"))
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(root, "moth", "00001.png"))):
        source.load(1, 1)


def test_verify_finds_bad_files_up_front(rgb):
    root, _ = rgb
    bad = os.path.join(root, "zebra", "00000.png")
    _truncate(bad)
    with pytest.raises(ValueError, match=re.escape(bad)):
        image_folder(root, size=4, verify=True)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image files.*" + re.escape(bad)):
        source = image_folder(root, size=4, verify=True, bad_files="skip")
    assert source.counts.tolist() == [4, 4, 3] and bad not in source.files[2]
    assert source.load_many(2, [0, 1, 2]).shape == (3, 4, 4, 3)
    # min_per_class applies after the bad files are dropped
    with pytest.warns(UserWarning) as record:
        dropped = image_folder(root, size=4, verify=True, bad_files="skip", min_per_class=4, small_classes="skip")
    messages = [str(w.message) for w in record]
    assert any("unreadable" in m for m in messages) and any("skipped 1 class folders" in m for m in messages)
    assert dropped.class_names == ("ant", "moth")


# ------------------------------------------------------------------------------------------------ argument errors


def test_root_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        image_folder(missing, size=4)
    a_file = tmp_path / "file.png"
    Image.new("L", (3, 3)).save(a_file)
    with pytest.raises(NotADirectoryError, match=re.escape(str(a_file))):
        image_folder(a_file, size=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders.*" + re.escape(str(tmp_path / "empty"))):
        image_folder(tmp_path / "empty", size=4)
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("L", (3, 3)).save(loose / "a.png")
    with pytest.raises(ValueError, match="no class folders.*" + re.escape(str(loose)) + r".*holds 1 image files"):
        image_folder(loose, size=4)
    (loose / "only").mkdir()  # a class folder with 0 images
    with pytest.raises(ValueError, match=re.escape(str(loose / "only")) + r" holds 0 images"):
        image_folder(loose, size=4)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(size=0), r"size.*got 0"),
        (dict(size=2.5), r"size.*got 2\.5"),
        (dict(size=True), r"size.*got True"),
        (dict(size=(4,)), r"size.*got \(4,\)"),
        (dict(size=(4, 0)), r"size.*got \(4, 0\)"),
        (dict(size=4, channels=2), r"channels.*got 2"),
        (dict(size=4, channels="3"), r"channels.*got '3'"),
        (dict(size=4, min_per_class=0), r"min_per_class.*got 0"),
        (dict(size=4, small_classes="drop"), r"small_classes.*got 'drop'"),
        (dict(size=4, bad_files="ignore"), r"bad_files.*got 'ignore'"),
        (dict(size=4, verify="yes"), r"verify.*got 'yes'"),
    ],
)
def test_argument_errors_name_the_argument_and_value(rgb, kwargs, pattern):
    root, _ = rgb
    with pytest.raises(ValueError, match=pattern):
        image_folder(root, **kwargs)


def test_index_errors(rgb):
    root, _ = rgb
    source = image_folder(root, size=4)
    with pytest.raises(IndexError, match=r"class_index.*\[0, 3\).*got 3"):
        source.load(3, 0)
    with pytest.raises(IndexError, match=r"example_index.*\[0, 4\).*got -1"):
        source.load(0, -1)
    with pytest.raises(IndexError, match=r"indices.*\[0, 4\).*got 4"):
        source.load_many(1, [0, 4])
    with pytest.raises(IndexError, match=r"indices.*1-D"):
        source.load_many(1, [[0]])


def test_write_image_folder_errors(tmp_path):
    good = np.zeros((2, 1, 3, 3), np.uint8)
    with pytest.raises(ValueError, match=r"data must be a uint8.*float32.*\(2, 1, 3, 3\)"):
        write_image_folder(tmp_path / "a", good.astype(np.float32))
    with pytest.raises(ValueError, match=r"data must have shape.*\(2, 3, 3\)"):
        write_image_folder(tmp_path / "a", good[:, 0])
    with pytest.raises(ValueError, match=r"data must have shape.*\(2, 1, 3, 3, 2\)"):
        write_image_folder(tmp_path / "a", np.zeros((2, 1, 3, 3, 2), np.uint8))
    with pytest.raises(ValueError, match=r"class_names.*one name per class \(2\).*got 1"):
        write_image_folder(tmp_path / "a", good, ["x"])
    with pytest.raises(ValueError, match=r"class_names.*'a/b'"):
        write_image_folder(tmp_path / "a", good, ["x", "a/b"])
    with pytest.raises(ValueError, match=r"class_names.*distinct"):
        write_image_folder(tmp_path / "a", good, ["x", "x"])
    with pytest.raises(ValueError, match=r"format.*'jpeg'"):
        write_image_folder(tmp_path / "a", good, format="jpeg")
    assert not (tmp_path / "a").exists()  # nothing written by a refused call
    write_image_folder(tmp_path / "a", good)
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "a"))):
        write_image_folder(tmp_path / "a", good)
    (tmp_path / "b").write_text("a file")
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "b"))):
        write_image_folder(tmp_path / "b", good)
    (tmp_path / "empty").mkdir()
    assert write_image_folder(tmp_path / "empty", good) == str(tmp_path / "empty")
