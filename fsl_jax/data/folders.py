"""Image folders as lazily decoded class sources: ``root/<class>/<image files>``.

:func:`image_folder` only lists the files (one sub-folder per class, sorted names); an image is decoded when
:meth:`ImageFolder.load` / :meth:`ImageFolder.load_many` asks for it, so a data set far larger than memory can feed
:class:`~fsl_jax.data.EpisodeLoader`, whose grain worker processes receive the (picklable) :class:`ImageFolder` and
decode only the images of their episodes. :func:`write_image_folder` writes arrays in that layout.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any, Sequence

import numpy as np
from PIL import Image

from fsl_jax import _validate

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_MODES = {1: "L", 3: "RGB"}
_CHOICES = ("error", "skip")
_WRITE_FORMATS = ("png", "bmp")  # lossless: the pixels read back are the pixels written
_LAYOUT = "root/<class>/<image files>"
_NAMED = 5  # how many folders / files a warning or error names before "and N more"


# ------------------------------------------------------------------------------------------------ shared helpers


def _check_hw(size: Any) -> tuple[int, int]:
    """``size`` as ``(height, width)``: an int (square) or a pair of positive ints."""
    if _validate.is_int(size) and size >= 1:
        return int(size), int(size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(_validate.is_int(s) and s >= 1 for s in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"size must be a positive int or a (height, width) pair of positive ints, got {size!r}")


def _check_channels(channels: Any) -> int:
    if not _validate.is_int(channels) or int(channels) not in _MODES:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return int(channels)


def _some(items: Sequence[str]) -> str:
    """The first few of ``items``, then how many more."""
    shown = ", ".join(items[:_NAMED])
    return shown + (f" and {len(items) - _NAMED} more" if len(items) > _NAMED else "")


def _list_images(folder: str | os.PathLike[str]) -> list[str]:
    """The image files directly in ``folder`` (by suffix, any case; hidden files ignored), sorted by name."""
    folder = os.fspath(folder)
    with os.scandir(folder) as entries:
        names = sorted(
            e.name
            for e in entries
            if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in _IMAGE_SUFFIXES and e.is_file()
        )
    return [os.path.join(folder, name) for name in names]


def _list_folders(folder: str | os.PathLike[str]) -> list[str]:
    """The names of the sub-folders of ``folder`` (hidden ones ignored), sorted."""
    with os.scandir(os.fspath(folder)) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def _decode_image(path: str | os.PathLike[str], size: tuple[int, int] | None, mode: str) -> np.ndarray:
    """Reads one image file as uint8 ``[height, width, channels]`` in PIL ``mode`` ("L" or "RGB").

    ``size`` is ``(height, width)``; the image is resized (bilinear) only when it differs, so an image already of that
    size keeps its exact pixels. ``None`` keeps the file's own size.

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` naming the file when it cannot be decoded
    (a truncated file included: the pixels are decoded here, not lazily later).
    """
    try:
        with Image.open(path) as opened:
            opened.load()  # PIL decodes lazily: make a truncated or corrupt file fail here, inside the try
            image = opened.convert(mode)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"image file {os.fspath(path)} does not exist") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image {os.fspath(path)}: {error}") from error
    if size is not None and image.size != (size[1], size[0]):  # PIL sizes are (width, height)
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


# ------------------------------------------------------------------------------------------------ the class source


class ImageFolder:
    """A class-indexed source of images decoded on demand (see :func:`image_folder`, which builds it).

    It holds only the file listing (plain attributes, so it pickles into worker processes); :meth:`load` decodes
    one image, converts it to grey or RGB and resizes it to ``feature_shape``.

    Args:
      root: the folder the files came from (used in messages and :attr:`config`).
      class_names: one name per class.
      files: one sequence of image paths per class, in example order.
      size: output ``(height, width)``, or an int for a square.
      channels: 1 (grey, PIL "L") or 3 (RGB).

    Attributes:
      root: the absolute root folder.
      class_names: ``tuple[str, ...]``, one per class.
      files: ``tuple[tuple[str, ...], ...]``, the absolute image paths of each class.
      counts: int64 array, the number of files of each class.
      num_classes: the number of classes.
      feature_shape: ``(height, width, channels)`` of a loaded image.
      dtype: ``np.uint8``.

    Example:
      >>> import shutil, tempfile, numpy as np
      >>> from fsl_jax.data.folders import image_folder, write_image_folder
      >>> root = write_image_folder(tempfile.mkdtemp(), np.zeros((2, 3, 4, 6), np.uint8), ["cat", "dog"])
      >>> source = image_folder(root, size=(4, 6), channels=1)
      >>> source.class_names, source.counts.tolist(), source.load(1, 2).shape, source.load_many(0, [2, 0]).shape
      (('cat', 'dog'), [3, 3], (4, 6, 1), (2, 4, 6, 1))
      >>> shutil.rmtree(root)
    """

    dtype = np.uint8

    def __init__(
        self,
        root: str | os.PathLike[str],
        class_names: Sequence[str],
        files: Sequence[Sequence[str]],
        size: Any,
        channels: int = 3,
    ):
        height, width = _check_hw(size)
        self.channels = _check_channels(channels)
        self.mode = _MODES[self.channels]
        if len(class_names) != len(files):
            raise ValueError(
                f"class_names and files must have one entry per class, got {len(class_names)} names "
                f"and {len(files)} file lists"
            )
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.class_names = tuple(str(name) for name in class_names)
        self.files = tuple(tuple(os.path.abspath(os.fspath(f)) for f in class_files) for class_files in files)
        self.counts = np.array([len(class_files) for class_files in self.files], np.int64)
        self.num_classes = len(self.class_names)
        self.size = (height, width)
        self.feature_shape = (height, width, self.channels)
        self._fingerprint: str | None = None  # of the file listing, computed on first use of `config`

    def _class(self, class_index: Any) -> int:
        if not _validate.is_int(class_index) or not 0 <= class_index < self.num_classes:
            raise IndexError(f"class_index must be an int in [0, {self.num_classes}), got {class_index!r}")
        return int(class_index)

    def load(self, class_index: int, example_index: int) -> np.ndarray:
        """Decodes image ``example_index`` of class ``class_index``: uint8 ``[height, width, channels]``.

        Raises ``IndexError`` naming the index out of range, ``ValueError`` naming the file when it cannot be decoded
        and ``FileNotFoundError`` naming it when it has gone since it was listed.
        """
        c = self._class(class_index)
        if not _validate.is_int(example_index) or not 0 <= example_index < self.counts[c]:
            raise IndexError(
                f"example_index must be an int in [0, {int(self.counts[c])}) for class "
                f"{self.class_names[c]!r}, got {example_index!r}"
            )
        return _decode_image(self.files[c][int(example_index)], self.size, self.mode)

    def load_many(self, class_index: int, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decodes images ``indices`` of class ``class_index``: uint8 ``[len(indices), height, width, channels]``."""
        c = self._class(class_index)
        index = np.asarray(indices)
        if index.size == 0:
            index = index.astype(np.int64)
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise IndexError(f"indices must be a 1-D sequence of ints, got {indices!r}")
        bad = index[(index < 0) | (index >= self.counts[c])]
        if bad.size:
            raise IndexError(
                f"indices must lie in [0, {int(self.counts[c])}) for class {self.class_names[c]!r}, got {int(bad[0])}"
            )
        out = np.empty((len(index), *self.feature_shape), np.uint8)
        for row, i in enumerate(index):
            out[row] = _decode_image(self.files[c][int(i)], self.size, self.mode)
        return out

    @property
    def config(self) -> dict:
        """A JSON-able description (stored with checkpoints, so that a run does not resume on other data): the root,
        the number of classes and files, the output size and channels, and a sha256 fingerprint of the file listing
        (relative paths, in class and example order)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, class_files in zip(self.class_names, self.files):
                for path in class_files:
                    relative = os.path.relpath(path, self.root).replace(os.sep, "/")
                    digest.update(f"{name}\t{relative}\n".encode("utf-8", "surrogateescape"))
            self._fingerprint = digest.hexdigest()[:16]
        return {
            "source": "image_folder",
            "root": self.root,
            "classes": self.num_classes,
            "files": int(self.counts.sum()),
            "size": list(self.size),
            "channels": self.channels,
            "listing": self._fingerprint,
        }

    def __len__(self) -> int:
        return self.num_classes

    def __repr__(self) -> str:
        return (
            f"ImageFolder({self.root!r}, classes={self.num_classes}, files={int(self.counts.sum())}, "
            f"feature_shape={self.feature_shape})"
        )


def image_folder(
    root: str | os.PathLike[str],
    size: Any,
    channels: int = 3,
    *,
    min_per_class: int = 1,
    small_classes: str = "error",
    verify: bool = False,
    bad_files: str = "error",
) -> ImageFolder:
    """A lazily decoded class source over ``root/<class>/<image files>``: one sub-folder per class.

    Class names are the sorted sub-folder names and a class's examples its image files (``.png``, ``.jpg``,
    ``.jpeg``, ``.bmp``, ``.gif``, ``.tif``, ``.tiff``, ``.webp`` in any case) sorted by name; hidden files and
    folders (``.name``) are ignored. Building it only lists the files: nothing is decoded until
    :meth:`ImageFolder.load` asks for an image, which is converted to grey or RGB and resized (bilinear) to ``size``
    when it differs.

    Args:
      root: the folder holding one sub-folder per class.
      size: output ``(height, width)``, or an int for a square.
      channels: 1 (grey) or 3 (RGB).
      min_per_class: the fewest images a class may have.
      small_classes: what to do with a class of fewer than ``min_per_class`` images (an empty folder with the
        default ``min_per_class=1``): ``"error"`` (raise) or ``"skip"`` (drop it, with one warning).
      verify: decode every file now (slow on a large data set) so that unreadable files are found up front; without
        it an unreadable file raises when it is loaded, naming the file.
      bad_files: with ``verify``, what to do with a file that cannot be decoded: ``"error"`` or ``"skip"`` (drop it,
        with a warning naming the files; ``min_per_class`` applies afterwards).

    Returns:
      an :class:`ImageFolder` (a class source for :class:`~fsl_jax.data.EpisodeLoader`).

    Raises:
      FileNotFoundError: ``root`` does not exist.
      NotADirectoryError: ``root`` is a file.
      ValueError: a bad argument (named with its value); no class folders; with ``small_classes="error"`` a class
        with fewer than ``min_per_class`` images (naming its folder and count); with ``verify`` and
        ``bad_files="error"`` an unreadable file (naming it).

    Example (two classes of three 5 x 4 RGB images, written to a temporary folder, read back exactly):
      >>> import shutil, tempfile, numpy as np
      >>> from fsl_jax.data.folders import image_folder, write_image_folder
      >>> pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 5, 4, 3), dtype=np.uint8)
      >>> root = write_image_folder(tempfile.mkdtemp(), pixels, ["ant", "bee"])
      >>> source = image_folder(root, size=(5, 4))  # lists 6 files, decodes none
      >>> source
      ImageFolder('...', classes=2, files=6, feature_shape=(5, 4, 3))
      >>> bool(np.array_equal(source.load(1, 2), pixels[1, 2]))
      True
      >>> image_folder(root, size=8, channels=1).load_many(0, [0, 1]).shape  # grey, resized to 8 x 8
      (2, 8, 8, 1)
      >>> shutil.rmtree(root)
    """
    height_width = _check_hw(size)
    channels = _check_channels(channels)
    min_per_class = _validate.integer("min_per_class", min_per_class)
    small_classes = _validate.choice("small_classes", small_classes, _CHOICES)
    if not isinstance(verify, (bool, np.bool_)):
        raise ValueError(f"verify must be True or False, got {verify!r}")
    bad_files = _validate.choice("bad_files", bad_files, _CHOICES)
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(root):
        raise FileNotFoundError(f"image folder root {root} does not exist; expected layout {_LAYOUT}")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"image folder root {root} is not a folder; expected layout {_LAYOUT}")

    names = _list_folders(root)
    if not names:
        loose = len(_list_images(root))
        hint = f" (it holds {loose} image files directly: put each class in its own sub-folder)" if loose else ""
        raise ValueError(f"no class folders in image folder root {root}{hint}; expected layout {_LAYOUT}")
    files = [_list_images(os.path.join(root, name)) for name in names]

    if verify:
        bad = []
        for class_files in files:
            for path in class_files:
                try:
                    _decode_image(path, None, _MODES[channels])
                except ValueError:
                    if bad_files == "error":
                        raise
                    bad.append(path)
        if bad:
            unreadable = set(bad)
            files = [[f for f in class_files if f not in unreadable] for class_files in files]
            warnings.warn(
                f"image_folder: skipped {len(bad)} unreadable image files (bad_files='skip'): {_some(bad)}",
                stacklevel=2,
            )

    small = [k for k, class_files in enumerate(files) if len(class_files) < min_per_class]
    if small and small_classes == "error":
        k = small[0]
        raise ValueError(
            f"class folder {os.path.join(root, names[k])} holds {len(files[k])} images, fewer than "
            f"min_per_class={min_per_class} ({len(small)} such classes); drop them with small_classes='skip'"
        )
    if small:
        folders = [os.path.join(root, names[k]) for k in small]
        warnings.warn(
            f"image_folder: skipped {len(small)} class folders with fewer than min_per_class={min_per_class} "
            f"images: {_some(folders)}",
            stacklevel=2,
        )
        dropped = set(small)
        names = [n for k, n in enumerate(names) if k not in dropped]
        files = [f for k, f in enumerate(files) if k not in dropped]
        if not names:
            raise ValueError(
                f"no class folder in image folder root {root} holds min_per_class={min_per_class} "
                f"images; all {len(small)} were skipped"
            )
    return ImageFolder(root, names, files, height_width, channels)


# ------------------------------------------------------------------------------------------------ writing


def write_image_folder(
    root: str | os.PathLike[str], data: Any, class_names: Sequence[str] | None = None, *, format: str = "png"
) -> str:
    """Writes uint8 images as ``root/<class name>/<i:05d>.<format>``, the layout :func:`image_folder` reads.

    Args:
      root: the folder to write; created when missing, refused when it exists and is not empty.
      data: uint8 array ``[classes, per_class, height, width]`` (grey) or ``[classes, per_class, height, width,
        channels]`` with ``channels`` 1 or 3.
      class_names: one folder name per class (default ``c00000``, ``c00001``, ...).
      format: ``"png"`` or ``"bmp"`` (both lossless: :func:`image_folder` reads back the same pixels).

    Returns:
      ``root`` (absolute).

    Raises:
      FileExistsError: ``root`` exists and is not an empty folder.
      ValueError: ``data`` is not uint8 of a supported shape, or ``class_names`` / ``format`` is bad.

    Example:
      >>> import os, shutil, tempfile, numpy as np
      >>> from fsl_jax.data.folders import write_image_folder
      >>> root = write_image_folder(tempfile.mkdtemp(), np.zeros((2, 1, 3, 3, 3), np.uint8))
      >>> sorted(os.listdir(root)), os.listdir(os.path.join(root, "c00001"))
      (['c00000', 'c00001'], ['00000.png'])
      >>> shutil.rmtree(root)
    """
    array = np.asarray(data)
    if array.dtype != np.uint8:
        raise ValueError(f"data must be a uint8 array, got dtype {array.dtype} with shape {array.shape}")
    if array.ndim not in (4, 5) or (array.ndim == 5 and array.shape[-1] not in (1, 3)):
        raise ValueError(
            f"data must have shape [classes, per_class, height, width] or [classes, per_class, height, "
            f"width, channels] with channels 1 or 3, got shape {array.shape}"
        )
    if array.shape[0] < 1 or array.shape[2] < 1 or array.shape[3] < 1:
        raise ValueError(f"data must hold at least one class of images at least 1 x 1, got shape {array.shape}")
    if not isinstance(format, str) or format.lower() not in _WRITE_FORMATS:
        raise ValueError(f"format must be one of {_WRITE_FORMATS}, got {format!r}")
    format = format.lower()
    if class_names is None:
        names = [f"c{k:05d}" for k in range(array.shape[0])]
    else:
        if isinstance(class_names, str):
            raise ValueError(f"class_names must be a sequence of folder names, got the str {class_names!r}")
        names = list(class_names)
        if len(names) != array.shape[0]:
            raise ValueError(
                f"class_names must have one name per class ({array.shape[0]}), got {len(names)}: {class_names!r}"
            )
        for name in names:
            if (
                not isinstance(name, str)
                or not name
                or name.startswith(".")
                or "/" in name
                or os.sep in name
                or (os.altsep and os.altsep in name)
            ):
                raise ValueError(
                    f"class_names must be non-empty folder names without path separators or a leading '.', got {name!r}"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"class_names must be distinct, got {class_names!r}")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        what = "a non-empty folder" if os.path.isdir(root) else "not a folder"
        raise FileExistsError(
            f"root {root} already exists and is {what}; write_image_folder writes only into a new or empty folder"
        )
    if array.ndim == 5 and array.shape[-1] == 1:
        array = array[..., 0]
    for name, images in zip(names, array):
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(np.ascontiguousarray(image)).save(os.path.join(folder, f"{i:05d}.{format}"))
    os.makedirs(root, exist_ok=True)
    return root
