"""Class-indexed image data sets: sklearn digits, and Omniglot / miniImageNet from a local folder.

Every loader returns a :class:`ClassDataset` whose ``data`` is one rectangular uint8 array
``[classes, per_class, height, width, channels]`` (classes with more examples are truncated to the smallest count),
ready for :class:`~fsl_jax.data.DeviceSampler` or :class:`~fsl_jax.data.HostSampler`.

Nothing is downloaded: Omniglot and miniImageNet are read from folders in their usual published layouts.
"""

import csv
import os
import pickle
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
from PIL import Image

from fsl_jax import _validate
from fsl_jax.data.folders import _IMAGE_SUFFIXES  # noqa: F401  (kept importable from here)
from fsl_jax.data.folders import ImageFolder, _decode_image, _list_folders, _list_images

_OMNIGLOT_SPLITS = ("background", "evaluation")
_MINI_IMAGENET_SPLITS = ("train", "val", "test")
_OMNIGLOT_LAYOUT = "root/images_{split}/<Alphabet>/<characterXX>/*.png"
_MINI_IMAGENET_LAYOUT = (
    "root/{split}.csv (header 'filename,label') with images in root/images/<filename>, "
    "or root/mini-imagenet-cache-{split}.pkl (keys 'image_data' and 'class_dict')"
)


class ClassDataset(NamedTuple):
    """A class-indexed image data set.

    Attributes:
      data: uint8 array ``[classes, per_class, height, width, channels]``.
      names: one name per class (``len(names) == data.shape[0]``).
      split: which split of the source this is (``"all"`` when the source has none).

    Example:
      >>> from fsl_jax.data.images import digits
      >>> ds = digits()
      >>> ds.data.shape, ds.names[:3], ds.split
      ((10, 174, 8, 8, 1), ('0', '1', '2'), 'all')
    """

    data: np.ndarray
    names: tuple[str, ...]
    split: str


def _load_image(path: Path, size: int, mode: str) -> np.ndarray:
    """Reads one image file as uint8 ``[size, size, channels]`` in PIL ``mode`` ("L" or "RGB") (the decoding of
    :func:`fsl_jax.data.image_folder`).

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` naming the file when it cannot be decoded.
    """
    return _decode_image(path, (size, size), mode)


def _stack_classes(classes: Sequence[Any]) -> np.ndarray:
    """``[classes, count, ...]`` from per-class lists or arrays of examples, each cut to the smallest count."""
    count = min(len(examples) for examples in classes)
    return np.stack([np.stack(examples[:count]) for examples in classes])


def digits() -> ClassDataset:
    """scikit-learn's handwritten digits (8x8 grey images, 10 classes) as a class-indexed data set.

    Intensities 0..16 are scaled to 0..255; each class keeps its first 174 examples (the smallest class count), so
    the array is rectangular.

    Returns:
      ``ClassDataset`` with ``data`` uint8 ``[10, 174, 8, 8, 1]``, names ``"0"`` .. ``"9"`` and split ``"all"``.

    Example:
      >>> from fsl_jax.data.images import digits
      >>> ds = digits()
      >>> ds.data.shape, ds.data.dtype, int(ds.data.max())
      ((10, 174, 8, 8, 1), dtype('uint8'), 255)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    per_class = [images[bunch.target == label] for label in range(10)]
    count = min(len(examples) for examples in per_class)
    data = np.stack([examples[:count] for examples in per_class])[..., None]
    return ClassDataset(data, tuple(str(label) for label in range(10)), "all")


def omniglot(root: str | os.PathLike[str], split: str = "background", size: int = 28) -> ClassDataset:
    """Omniglot from a local copy in the standard layout; every character is a class.

    Expects ``root/images_background/<Alphabet>/<characterXX>/*.png`` (and ``root/images_evaluation/...``), as
    unpacked from the official ``images_background.zip`` / ``images_evaluation.zip``. ``root`` may also be the
    ``images_<split>`` folder itself. Images are converted to grey, resized to ``size x size`` and inverted so that
    ink is bright on a dark background (the PNGs are black ink on white). Characters with more drawings than the
    smallest count are truncated to it (20 in the official release).

    Args:
      root: folder holding ``images_background`` / ``images_evaluation``.
      split: ``"background"`` (964 characters, the usual meta-training set) or ``"evaluation"`` (659 characters).
      size: output height and width in pixels.

    Returns:
      ``ClassDataset`` with ``data`` uint8 ``[characters, drawings, size, size, 1]`` and names
      ``"<Alphabet>/<characterXX>"`` in sorted order.

    Raises:
      FileNotFoundError: when ``root`` or ``root/images_<split>`` does not exist.
      ValueError: when the folder holds no alphabets, a character folder holds no images, or an image is corrupt
        (the message names the file).

    On the official release, ``omniglot("~/data/omniglot")`` has ``data`` of shape ``(964, 20, 28, 28, 1)``.

    Example (a tiny copy of the layout: two alphabets, three characters of two blank drawings each):
      >>> import pathlib, tempfile
      >>> from PIL import Image
      >>> from fsl_jax.data.images import omniglot
      >>> with tempfile.TemporaryDirectory() as root:
      ...     for character in ["Greek/character01", "Greek/character02", "Latin/character01"]:
      ...         folder = pathlib.Path(root, "images_background", character)
      ...         folder.mkdir(parents=True)
      ...         for i in range(2):
      ...             Image.new("L", (105, 105), color=255).save(folder / f"{i}.png")  # white paper, no ink
      ...     ds = omniglot(root, split="background", size=28)
      >>> ds.data.shape, ds.names
      ((3, 2, 28, 28, 1), ('Greek/character01', 'Greek/character02', 'Latin/character01'))
      >>> int(ds.data.max())  # inverted: the white paper is 0
      0
    """
    split = _validate.choice("split", split, _OMNIGLOT_SPLITS)
    size = _validate.positive_int("size", size)
    root = Path(root).expanduser()
    layout = _OMNIGLOT_LAYOUT.format(split=split)
    if not root.is_dir():
        raise FileNotFoundError(f"Omniglot root {str(root)!r} is not a folder; expected layout {layout}")
    folder = root if root.name == f"images_{split}" else root / f"images_{split}"
    if not folder.is_dir():
        raise FileNotFoundError(f"Omniglot folder {str(folder)!r} does not exist; expected layout {layout}")
    # the listing and decoding of fj.data.image_folder, with <Alphabet>/<character> folders as the classes
    names = [f"{a}/{c}" for a in _list_folders(folder) for c in _list_folders(folder / a)]
    if not names:
        raise ValueError(f"no <Alphabet>/<character> folders in {str(folder)!r}; expected layout {layout}")
    files = []
    for name in names:
        files.append(_list_images(folder / name))
        if not files[-1]:
            raise ValueError(f"character folder {str(folder / name)!r} holds no images; expected layout {layout}")
    source = ImageFolder(folder, names, files, size, channels=1)
    classes = [255 - source.load_many(c, np.arange(count)) for c, count in enumerate(source.counts)]
    return ClassDataset(_stack_classes(classes), tuple(names), split)


def _mini_imagenet_csv(root: Path, csv_path: Path, size: int, layout: str) -> tuple[list[list[np.ndarray]], list[str]]:
    by_label: dict[str, list[str]] = {}
    with open(csv_path, newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or [h.strip() for h in header] != ["filename", "label"]:
            raise ValueError(f"{str(csv_path)!r} must start with the header 'filename,label', got {header!r}")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{str(csv_path)!r} line {line}: expected 'filename,label', got {row!r}")
            by_label.setdefault(row[1].strip(), []).append(row[0].strip())
    if not by_label:
        raise ValueError(f"{str(csv_path)!r} lists no images")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"miniImageNet images folder {str(images_dir)!r} does not exist; expected layout {layout}"
        )
    labels = sorted(by_label)
    count = min(len(files) for files in by_label.values())
    classes = [[_load_image(images_dir / name, size, "RGB") for name in by_label[label][:count]] for label in labels]
    return classes, labels


def _mini_imagenet_pickle(pkl_path: Path, size: int) -> tuple[list[list[np.ndarray]], list[str]]:
    try:
        with open(pkl_path, "rb") as handle:
            cache = pickle.load(handle, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as error:
        raise ValueError(f"cannot read miniImageNet pickle {str(pkl_path)!r}: {error}") from error
    if not isinstance(cache, dict) or "image_data" not in cache or "class_dict" not in cache:
        keys = sorted(cache) if isinstance(cache, dict) else type(cache).__name__
        raise ValueError(f"{str(pkl_path)!r} must hold a dict with keys 'image_data' and 'class_dict', got {keys}")
    images = np.asarray(cache["image_data"])
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{str(pkl_path)!r}: 'image_data' must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}"
        )
    class_dict = cache["class_dict"]
    if not isinstance(class_dict, dict) or not class_dict:
        raise ValueError(f"{str(pkl_path)!r}: 'class_dict' must be a non-empty dict {{wnid: [indices]}}")
    labels = sorted(class_dict)
    count = min(len(class_dict[label]) for label in labels)
    classes = []
    for label in labels:
        index = np.asarray(class_dict[label], dtype=np.int64)[:count]
        if index.size and (index.min() < 0 or index.max() >= len(images)):
            raise ValueError(f"{str(pkl_path)!r}: class {label!r} indexes outside 'image_data' ({len(images)} images)")
        examples = images[index]
        if examples.shape[1:3] != (size, size):
            examples = np.stack(
                [np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BILINEAR)) for x in examples]
            )
        classes.append(list(examples))
    return classes, [str(label) for label in labels]


def mini_imagenet(root: str | os.PathLike[str], split: str = "train", size: int = 84) -> ClassDataset:
    """miniImageNet (Ravi & Larochelle split: 64 / 16 / 20 classes of 600 images) from a local folder.

    Two published layouts are read:

    * CSV: ``root/{split}.csv`` with header ``filename,label`` and the images in ``root/images/<filename>``.
    * Pickle cache: ``root/mini-imagenet-cache-{split}.pkl`` holding ``{"image_data": uint8 [N, 84, 84, 3],
      "class_dict": {wnid: [indices]}}``. Pickles can run code when loaded: only read files you trust.

    When both are present the CSV layout is used. Classes are sorted by label; classes with more images than the
    smallest count are truncated to it.

    Args:
      root: the miniImageNet folder.
      split: ``"train"``, ``"val"`` or ``"test"``.
      size: output height and width in pixels (images are resized when they differ).

    Returns:
      ``ClassDataset`` with ``data`` uint8 RGB ``[classes, per_class, size, size, 3]`` and the labels (wnids) as names.

    Raises:
      FileNotFoundError: when ``root`` does not exist, neither layout is found, or a listed image is missing.
      ValueError: when the CSV header or pickle contents are malformed, or an image is corrupt (naming the file).

    On the published data, ``mini_imagenet("~/data/mini-imagenet", split="test")`` has ``data`` of shape
    ``(20, 600, 84, 84, 3)``.

    Example (a tiny pickle cache: two classes of three images):
      >>> import pathlib, pickle, tempfile, numpy as np
      >>> from fsl_jax.data.images import mini_imagenet
      >>> cache = {"image_data": np.zeros((6, 84, 84, 3), np.uint8),
      ...          "class_dict": {"n02": [3, 4, 5], "n01": [0, 1, 2]}}
      >>> with tempfile.TemporaryDirectory() as root:
      ...     _ = pathlib.Path(root, "mini-imagenet-cache-test.pkl").write_bytes(pickle.dumps(cache))
      ...     ds = mini_imagenet(root, split="test", size=32)  # resized from 84 x 84
      >>> ds.data.shape, ds.data.dtype, ds.names  # classes sorted by label
      ((2, 3, 32, 32, 3), dtype('uint8'), ('n01', 'n02'))
    """
    split = _validate.choice("split", split, _MINI_IMAGENET_SPLITS)
    size = _validate.positive_int("size", size)
    root = Path(root).expanduser()
    layout = _MINI_IMAGENET_LAYOUT.format(split=split)
    if not root.is_dir():
        raise FileNotFoundError(f"miniImageNet root {str(root)!r} is not a folder; expected layout {layout}")
    csv_path, pkl_path = root / f"{split}.csv", root / f"mini-imagenet-cache-{split}.pkl"
    if csv_path.is_file():
        classes, names = _mini_imagenet_csv(root, csv_path, size, layout)
    elif pkl_path.is_file():
        classes, names = _mini_imagenet_pickle(pkl_path, size)
    else:
        raise FileNotFoundError(
            f"no miniImageNet split {split!r} in {str(root)!r}: neither {csv_path.name} nor {pkl_path.name} exists; "
            f"expected layout {layout}"
        )
    return ClassDataset(_stack_classes(classes), tuple(names), split)
