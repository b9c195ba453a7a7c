"""Episode sources: samplers, sinusoid tasks and offline image data sets."""

from fsl_jax.data.sampler import DeviceSampler, HostSampler
from fsl_jax.data.sinusoid import sinusoid_params, sinusoid_tasks

__all__ = ["DeviceSampler", "HostSampler", "sinusoid_params", "sinusoid_tasks"]
