"""Episode sources: samplers, sinusoid tasks, offline image data sets and text data sets (:mod:`fsl_jax.data.text`)."""

from fsl_jax.data import text

from fsl_jax.data.folders import ImageFolder, image_folder, write_image_folder
from fsl_jax.data.glyphs import glyphs
from fsl_jax.data.images import ClassDataset, digits, mini_imagenet, omniglot
from fsl_jax.data.episodes import ArraySource, EpisodeSpec
from fsl_jax.data.padding import pad_task
from fsl_jax.data.pipeline import EpisodeIterator, EpisodeLoader
from fsl_jax.data.sampler import DeviceSampler, HostSampler
from fsl_jax.data.sinusoid import sinusoid_params, sinusoid_tasks

__all__ = [
    "ArraySource", "ClassDataset", "DeviceSampler", "EpisodeIterator", "EpisodeLoader", "EpisodeSpec", "HostSampler",
    "ImageFolder", "digits", "glyphs", "image_folder", "mini_imagenet", "omniglot", "pad_task", "sinusoid_params",
    "sinusoid_tasks", "text", "write_image_folder",
]
