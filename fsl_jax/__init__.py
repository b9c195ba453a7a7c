"""fsl_jax: few-shot and meta-learning in JAX.

Everything a user needs is importable from here::

    import fsl_jax as fj
    learner = fj.maml(fj.models.Conv4(num_classes=5), "xent", inner_lr=0.4, inner_steps=5)
    step = fj.make_meta_step(learner, optax.adam(1e-3))

``import fsl_jax`` loads only the core (tasks, learners, the meta-step, evaluation, reports: JAX, Flax, Optax).
The rest -- :mod:`fsl_jax.data`, :mod:`fsl_jax.models`, :mod:`fsl_jax.llm`, :mod:`fsl_jax.plots` (matplotlib),
checkpoints and :func:`meta_train` (orbax) -- is imported on first use (PEP 562), so ``fj.save_checkpoint``,
``fj.plot_learning_curve`` or ``fj.llm`` work as before, and transformers, scikit-learn or torch are imported only by
the functions that need them.
"""

import importlib as _importlib
import importlib.util as _importlib_util
from typing import (
    TYPE_CHECKING as _TYPE_CHECKING,
    Any as _Any,
    Callable as _Callable,
    Iterable as _Iterable,
    Mapping as _Mapping,
)

__version__ = "0.1.0"


def _lazy(
    package: str, namespace: dict[str, _Any], submodules: _Iterable[str], attributes: _Mapping[str, _Iterable[str]]
) -> tuple[_Callable[[str], _Any], _Callable[[], list[str]]]:
    """PEP 562 ``__getattr__`` and ``__dir__`` for ``package``, importing on first access.

    ``submodules`` are reached as attributes (``fj.plots``); ``attributes`` maps a submodule to the names it
    defines (``{"plots": ["plot_learning_curve"]}``). Any other submodule of the package is also an attribute
    (``fj.train``), as it was when the package imported everything eagerly. Each value is cached in ``namespace``
    (the package's globals), so ``__getattr__`` runs once per name.
    """
    submodules = frozenset(submodules)
    owner = {name: module for module, names in attributes.items() for name in names}

    def __getattr__(name: str) -> _Any:
        if name in owner:
            value = getattr(_importlib.import_module(f"{package}.{owner[name]}"), name)
        elif name in submodules or (not name.startswith("__") and _importlib_util.find_spec(f"{package}.{name}")):
            value = _importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())) | submodules | set(owner))

    return __getattr__, __dir__


# The core, imported eagerly (JAX, Flax, Optax; the lazy helper above is defined first because fsl_jax.models and
# fsl_jax.data, reached from here, use it).
from fsl_jax.evaluate import EvalResult, evaluate  # eager: `evaluate` also names its module
from fsl_jax.learners import (
    Learner,
    anil,
    cvae_classifier,
    imaml,
    maml,
    matching_net,
    meta_loss,
    meta_sgd,
    mse_loss,
    protonet,
    relation_net,
    reptile,
    siamese,
    xent_loss,
)
from fsl_jax.report import ClassificationReport, ConfidenceInterval, classification_report, mean_ci
from fsl_jax.tasks import Task, task_at, validate_task
from fsl_jax.step import TrainState, make_meta_step

if _TYPE_CHECKING:  # what the lazy table below resolves to, for type checkers and IDEs
    from fsl_jax import data, llm, models, parallel, plots
    from fsl_jax.checkpoint import (
        latest_step,
        read_checkpoint_config,
        read_loader_state,
        restore_checkpoint,
        save_checkpoint,
    )
    from fsl_jax.plots import plot_accuracy_vs_shots, plot_confusion_matrix, plot_learning_curve, plot_regression_fits
    from fsl_jax.train import History, NonFiniteError, TrainingInterrupted, meta_train, run_config

__getattr__, __dir__ = _lazy(
    __name__,
    globals(),
    submodules=["data", "llm", "models", "parallel", "plots"],
    attributes={
        "checkpoint": [
            "latest_step",
            "read_checkpoint_config",
            "read_loader_state",
            "restore_checkpoint",
            "save_checkpoint",
        ],
        "plots": ["plot_accuracy_vs_shots", "plot_confusion_matrix", "plot_learning_curve", "plot_regression_fits"],
        "train": ["History", "NonFiniteError", "TrainingInterrupted", "meta_train", "run_config"],
    },
)

__all__ = [
    "ClassificationReport",
    "ConfidenceInterval",
    "EvalResult",
    "History",
    "Learner",
    "NonFiniteError",
    "Task",
    "TrainState",
    "TrainingInterrupted",
    "read_checkpoint_config",
    "read_loader_state",
    "run_config",
    "anil",
    "cvae_classifier",
    "imaml",
    "data",
    "matching_net",
    "protonet",
    "relation_net",
    "siamese",
    "evaluate",
    "latest_step",
    "llm",
    "make_meta_step",
    "maml",
    "mean_ci",
    "meta_loss",
    "meta_sgd",
    "meta_train",
    "models",
    "mse_loss",
    "xent_loss",
    "parallel",
    "plot_accuracy_vs_shots",
    "plot_confusion_matrix",
    "plot_learning_curve",
    "plot_regression_fits",
    "plots",
    "classification_report",
    "reptile",
    "restore_checkpoint",
    "save_checkpoint",
    "task_at",
    "validate_task",
]
