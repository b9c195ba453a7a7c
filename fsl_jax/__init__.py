"""fsl_jax: few-shot and meta-learning in JAX.

Everything a user needs is importable from here::

    import fsl_jax as fj
    learner = fj.maml(fj.models.Conv4(num_classes=5), "xent", inner_lr=0.4, inner_steps=5)
    step = fj.make_meta_step(learner, optax.adam(1e-3))
"""

from fsl_jax import data, llm, models, parallel, plots
from fsl_jax.checkpoint import (
    latest_step, read_checkpoint_config, read_loader_state, restore_checkpoint, save_checkpoint,
)
from fsl_jax.evaluate import EvalResult, evaluate
from fsl_jax.learners import (
    Learner, anil, cvae_classifier, imaml, maml, matching_net, meta_loss, meta_sgd, mse_loss, protonet, relation_net, reptile,
    siamese, xent_loss,
)
from fsl_jax.plots import plot_accuracy_vs_shots, plot_confusion_matrix, plot_learning_curve, plot_regression_fits
from fsl_jax.report import ClassificationReport, ConfidenceInterval, classification_report, mean_ci
from fsl_jax.tasks import Task, task_at, validate_task
from fsl_jax.step import TrainState, make_meta_step
from fsl_jax.train import History, NonFiniteError, TrainingInterrupted, meta_train, run_config

__version__ = "0.1.0"

__all__ = [
    "ClassificationReport", "ConfidenceInterval", "EvalResult", "History", "Learner", "NonFiniteError", "Task", "TrainState",
    "TrainingInterrupted", "read_checkpoint_config", "read_loader_state", "run_config",
    "anil", "cvae_classifier", "imaml", "data", "matching_net", "protonet", "relation_net", "siamese", "evaluate", "latest_step", "llm", "make_meta_step", "maml", "mean_ci", "meta_loss", "meta_sgd",
    "meta_train", "models", "mse_loss", "xent_loss", "parallel", "plot_accuracy_vs_shots", "plot_confusion_matrix",
    "plot_learning_curve",
    "plot_regression_fits", "plots", "classification_report", "reptile", "restore_checkpoint", "save_checkpoint", "task_at",
    "validate_task",
]
