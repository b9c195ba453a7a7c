"""Meta-training over many devices and many processes with ``jax.sharding``.

The device mesh has two axes: ``"tasks"`` splits the task batch (data parallel) and ``"model"`` shards parameters and
optimiser state (FSDP style) for backbones that do not fit replicated. Learners know neither: shardings are
annotations on the state and the batch, and ``jax.jit`` inserts the collectives (the all-reduce of the mean
meta-gradient; with a model axis, the all-gathers of weights and reduce-scatters of gradients).

Multi-host (TPU pod slices, multi-node GPU clusters, or several local processes for trying it) follows JAX's
multi-controller model: every process runs the same program and calls :func:`initialize` first;
:func:`task_mesh` then spans the devices of all processes. A host-side task source builds only this process's rows of
each global batch (:func:`local_rows`), assembled with ``jax.make_array_from_process_local_data``
(:func:`global_tasks`).

Simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``) share one thread pool, and a sharded
step's all-reduce blocks a thread until every device's part arrives. Keep one sharded step in flight there (call
``jax.block_until_ready`` on the state after each step, as :func:`fsl_jax.meta_train` does on a CPU mesh): with many
steps dispatched ahead, XLA:CPU can deadlock in the all-reduce and aborts the process after 40 s.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsl_jax._config import key_path
from fsl_jax.tasks import Task

TASK_AXIS = "tasks"
MODEL_AXIS = "model"

ParamRule = Callable[[str, tuple], PartitionSpec]


# ----------------------------------------------------------------------------------------------------- processes


def _count(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} or None, got {value!r}")
    return int(value)


def _detected_cluster() -> str | None:
    """The cluster JAX would detect on its own (SLURM, Open MPI, TPU VM, Kubernetes), or ``None``."""
    try:
        from jax._src import clusters

        for env in clusters.ClusterEnv._cluster_types:
            if not getattr(env, "opt_in_only_method", False) and env.is_env_present():
                return env.__name__
    except Exception:  # noqa: BLE001 - a private API: fall back to the environment variables JAX reads
        if "SLURM_JOB_ID" in os.environ and "SLURM_NTASKS" in os.environ:
            return "SlurmCluster"
        if "OMPI_MCA_orte_hnp_uri" in os.environ:
            return "OmpiCluster"
    return None


def _wait_for_coordinator(address: str, timeout_seconds: float) -> None:
    """Waits until ``address`` (host:port) accepts a TCP connection; ``ConnectionError`` naming it otherwise.

    JAX's own client aborts the whole process (no Python exception) when the coordinator stays unreachable, with a
    message that does not name it; this check fails first, with one that does.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator_address must be 'host:port', got {address!r}")
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, timeout_seconds)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"the coordinator at {address} did not answer within {timeout_seconds:g} s "
                    f"({exc.strerror or exc}); start process 0 there first, or check the address "
                    f"and the firewall"
                ) from exc
            time.sleep(0.2)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    *,
    timeout_seconds: int = 300,
    heartbeat_timeout_seconds: int = 100,
) -> bool:
    """Joins JAX's distributed runtime (``jax.distributed.initialize``); call it first in every process.

    With no arguments it lets JAX detect a cluster (TPU VM / pod slice, SLURM, Open MPI, Kubernetes) or reads
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, and on a plain single machine it does
    nothing. On CPU it selects gloo collectives. Calling it again is a no-op.

    Args:
      coordinator_address: ``host:port`` of process 0 (it listens there; the others connect).
      num_processes: how many processes take part.
      process_id: this process's number, ``0 <= process_id < num_processes``.
      local_device_ids: the local devices this process uses (default: all).
      timeout_seconds: how long to wait for the coordinator and for every process to join. A process other than 0
        that cannot reach the coordinator raises ``ConnectionError`` naming the address within this time.
      heartbeat_timeout_seconds: when a process stops answering (it died), the others stop with an error after this
        long instead of hanging in a collective.

    Returns:
      ``True`` when this process is part of a multi-process run, ``False`` when it runs alone.

    Raises:
      ValueError: inconsistent arguments (naming them), e.g. ``process_id >= num_processes``, or ``num_processes > 1``
        without a coordinator off a cluster.
      ConnectionError: the coordinator did not answer within ``timeout_seconds``.

    Example:
      >>> import fsl_jax as fj
      >>> fj.parallel.initialize()   # a plain single machine: nothing to join
      False
      >>> fj.parallel.initialize("10.0.0.1:1234", num_processes=2, process_id=2)
      Traceback (most recent call last):
      ...
      ValueError: process_id=2 must be below num_processes=2
    """
    num_processes = _count("num_processes", num_processes, 1)
    process_id = _count("process_id", process_id, 0)
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ValueError(f"process_id={process_id} must be below num_processes={num_processes}")
    for name in ("timeout_seconds", "heartbeat_timeout_seconds"):
        _count(name, locals()[name], 1)
    if jax.distributed.is_initialized():
        if num_processes is not None and num_processes != jax.process_count():
            raise ValueError(
                f"already initialised with {jax.process_count()} processes, got num_processes={num_processes}"
            )
        if process_id is not None and process_id != jax.process_index():
            raise ValueError(f"already initialised as process {jax.process_index()}, got process_id={process_id}")
        return jax.process_count() > 1
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = _count("JAX_NUM_PROCESSES", int(os.environ["JAX_NUM_PROCESSES"]), 1)
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = _count("JAX_PROCESS_ID", int(os.environ["JAX_PROCESS_ID"]), 0)
    cluster = _detected_cluster()
    if coordinator_address is None and cluster is None:
        if num_processes is not None and num_processes > 1:
            raise ValueError(
                f"num_processes={num_processes} needs coordinator_address='host:port' of process 0 "
                f"(no cluster was detected to provide it)"
            )
        return False  # a single machine, nothing to join
    if cluster is None and (num_processes is None or process_id is None):
        raise ValueError(
            f"coordinator_address={coordinator_address!r} needs num_processes and process_id "
            f"(got {num_processes} and {process_id})"
        )
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ValueError(f"process_id={process_id} must be below num_processes={num_processes}")
    if num_processes == 1:
        return False
    if coordinator_address is not None and process_id not in (None, 0):
        _wait_for_coordinator(coordinator_address, timeout_seconds)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # no effect on GPU/TPU collectives
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        local_device_ids,
        initialization_timeout=timeout_seconds,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this is process 0: the one that writes logs, plots and printed reports."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier across processes (nothing on a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(values: Sequence[int]) -> np.ndarray:
    """Every process's ``values`` (small ints), as a ``[processes, len(values)]`` array known to all processes."""
    local = np.asarray(values, np.int32)
    if jax.process_count() == 1:
        return local[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(local))


# ---------------------------------------------------------------------------------------------------------- meshes


def task_mesh(devices: Sequence[Any] | None = None, *, model: int = 1) -> Mesh:
    """A 2-D mesh ``("tasks", "model")`` over ``devices`` (default: every device of every process).

    Args:
      devices: the devices (default ``jax.devices()``, which spans all processes after :func:`initialize`).
      model: the size of the ``"model"`` axis, over which parameters and optimiser state are sharded (FSDP); 1 keeps
        them replicated. The ``"tasks"`` axis gets the remaining factor.

    Example:
      >>> import fsl_jax as fj
      >>> mesh = fj.parallel.task_mesh()
      >>> mesh.axis_names, mesh.shape["model"]
      (('tasks', 'model'), 1)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must hold at least one device, got an empty sequence")
    size = _count("model", model, 1)
    if size is None:  # _count lets None through; a mesh axis needs a size
        raise ValueError(f"model must be an int >= 1, got {model!r}")
    if len(devices) % size:
        raise ValueError(f"model={size} must divide the number of devices, {len(devices)}")
    return Mesh(np.asarray(devices).reshape(len(devices) // size, size), (TASK_AXIS, MODEL_AXIS))


def check_mesh(mesh: Any) -> Mesh:
    """``mesh`` if it is a ``Mesh`` with a ``"tasks"`` axis (and at most a ``"model"`` one), else ``ValueError``."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see fj.parallel.task_mesh), got {type(mesh).__name__}")
    if TASK_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {TASK_AXIS!r}, got axes {mesh.axis_names}")
    other = [a for a in mesh.axis_names if a not in (TASK_AXIS, MODEL_AXIS) and mesh.shape[a] > 1]
    if other:
        raise ValueError(
            f"mesh axes other than {TASK_AXIS!r} and {MODEL_AXIS!r} must have size 1, got {dict(mesh.shape)}"
        )
    return mesh


def task_devices(mesh: Mesh) -> int:
    """The size of the mesh's ``"tasks"`` axis: a task batch must be a multiple of it."""
    return int(mesh.shape[TASK_AXIS])


def model_devices(mesh: Mesh) -> int:
    """The size of the mesh's ``"model"`` axis (1 if it has none)."""
    return int(mesh.shape[MODEL_AXIS]) if MODEL_AXIS in mesh.axis_names else 1


def task_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (task) axis of every array over the mesh's ``"tasks"`` axis."""
    check_mesh(mesh)
    return NamedSharding(mesh, PartitionSpec(TASK_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch(total: int, mesh: Mesh, name: str = "the task batch") -> None:
    """``ValueError`` unless ``total`` tasks divide evenly over the mesh's ``"tasks"`` axis."""
    n = task_devices(mesh)
    if total % n:
        raise ValueError(
            f"{name} ({total} tasks) must divide evenly over the {n} devices of the mesh's "
            f"{TASK_AXIS!r} axis (mesh shape {dict(mesh.shape)})"
        )


def local_rows(mesh: Mesh, total: int) -> tuple[int, int]:
    """``(start, stop)``: the rows of a ``total``-task batch that this process's devices hold.

    Example:
      >>> import fsl_jax as fj
      >>> fj.parallel.local_rows(fj.parallel.task_mesh(), 8)   # one process: all of them
      (0, 8)
    """
    check_batch(total, mesh)
    indices = task_sharding(mesh).addressable_devices_indices_map((total,))
    found = set()
    for device, index in indices.items():
        if index is None:  # JAX's annotation allows it, but a task sharding gives every device a slice
            raise ValueError(f"device {device} holds no slice of the task batch")
        found.add((index[0].start or 0, total if index[0].stop is None else index[0].stop))
    spans = sorted(found)
    start, stop = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != stop - start:
        raise ValueError(
            f"this process's devices hold non-contiguous rows {spans} of the task batch; build the mesh "
            f"with fj.parallel.task_mesh() so that each process's devices are neighbours"
        )
    return start, stop


def global_tasks(local: Task, mesh: Mesh, total: int) -> Task:
    """Assembles this process's rows (``local_rows(mesh, total)``) of a task batch into global arrays.

    Every process calls it with its own rows; the result is one batch of ``total`` tasks split over the mesh.
    """
    sharding = task_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (total,) + x.shape[1:])

    return jax.tree_util.tree_map(put, local)


def shard_tasks(tasks: Task, mesh: Mesh) -> Task:
    """Places a batch of tasks (the same full batch in every process) on the mesh, split along the task axis.

    Raises:
      ValueError: when the number of tasks is not a multiple of the mesh's ``"tasks"`` axis.
    """
    total = int(np.shape(tasks.support_x)[0])
    check_batch(total, mesh, "tasks")
    if jax.process_count() > 1:
        start, stop = local_rows(mesh, total)
        return global_tasks(jax.tree_util.tree_map(lambda x: np.asarray(x)[start:stop], tasks), mesh, total)
    return jax.device_put(tasks, task_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies a pytree (parameters, a train state) to every device of the mesh (the same value in every process)."""
    return jax.device_put(jax.device_get(tree), replicated(mesh))


# ------------------------------------------------------------------------------------------- parameter sharding


def fsdp_spec(path: str, shape: tuple, model: int) -> PartitionSpec:
    """The default rule: a weight (2 or more dimensions) is split along its largest dimension that ``model``
    divides; vectors and scalars (biases, norm scales, counters) stay replicated.

    Raises:
      ValueError: naming the weight, its shape and ``model`` when no dimension is divisible.

    Example:
      >>> tuple(fsdp_spec("params/dense0/kernel", (384, 1536), 2))   # split along the 1536 columns
      (None, 'model')
      >>> tuple(fsdp_spec("params/dense0/bias", (1536,), 2))   # a vector: replicated
      ()
    """
    if model == 1 or len(shape) < 2:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], d)):
        if shape[dim] % model == 0:
            spec: list = [None] * len(shape)
            spec[dim] = MODEL_AXIS
            return PartitionSpec(*spec)
    raise ValueError(
        f"the model axis size {model} divides no dimension of weight {path} with shape {tuple(shape)}; "
        f"use a model axis size that divides one, or pass param_rule=(path, shape) -> PartitionSpec"
    )


def state_shardings(tree: Any, mesh: Mesh, rule: ParamRule | None = None) -> Any:
    """One ``NamedSharding`` per leaf of ``tree`` (parameters, optimiser state or a whole train state).

    ``rule(path, shape) -> PartitionSpec`` overrides the default :func:`fsdp_spec` (``path`` is the leaf's
    ``/``-joined key path, e.g. ``"opt_state/0/mu/params/head/kernel"``). Without a ``"model"`` axis (or size 1),
    everything is replicated.

    Example:
      >>> import jax, jax.numpy as jnp, fsl_jax as fj
      >>> mesh = fj.parallel.task_mesh()
      >>> tuple(fj.parallel.state_shardings({"w": jnp.zeros((4, 2))}, mesh)["w"].spec)   # no model axis: replicated
      ()
    """
    model = model_devices(mesh)
    if rule is not None and not callable(rule):
        raise TypeError(f"param_rule must be a callable (path, shape) -> PartitionSpec, got {type(rule).__name__}")

    def spec(keys, leaf):
        path, shape = key_path(keys), tuple(np.shape(leaf))
        if rule is not None:
            chosen = rule(path, shape)
            if not isinstance(chosen, PartitionSpec):
                raise TypeError(f"param_rule({path!r}, {shape}) must return a PartitionSpec, got {chosen!r}")
        else:
            chosen = fsdp_spec(path, shape, model)
        return NamedSharding(mesh, chosen)

    return jax.tree_util.tree_map_with_path(spec, tree)


def shard_state(tree: Any, mesh: Mesh, rule: ParamRule | None = None) -> Any:
    """Places ``tree`` (the same value in every process) on the mesh with :func:`state_shardings`."""
    return jax.device_put(jax.device_get(tree), state_shardings(tree, mesh, rule))
