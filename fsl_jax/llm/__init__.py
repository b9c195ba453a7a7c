"""Few-shot learning with language-model backbones.

* :class:`FewShotTextClassifier`: sklearn-style few-shot text classification over a BERT encoder (frozen head,
  full fine-tuning, SetFit, ProtoNet, ANIL over the encoder).
* :class:`PromptClassifier`, :class:`Template`, :class:`Verbalizer`: zero-/k-shot in-context classification with a
  causal LM (GPT-2), label-word scoring, calibration, prompt search; :func:`generate_text`.
* :class:`LMFinetuneClassifier`: PET-style (label-word) or classification-head few-shot fine-tuning of the LM.
* :func:`meta_train_icl`: a small GPT-2 meta-trained from scratch to classify from in-context demonstrations.
* :class:`BertEncoder`, :class:`BertClassifier`: the Flax BERT modules that ``fj.protonet`` / ``fj.maml`` / ``fj.anil``
  take as their encoder or model for meta-learning over text.
* :func:`distill`: soft-target knowledge distillation; :mod:`fsl_jax.llm.augment`: EDA, embedding-neighbour
  replacement and rewrite hooks.

Each name is imported from its module on first use (PEP 562, see :mod:`fsl_jax`).
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from fsl_jax import _lazy
from fsl_jax.llm.distill import distill  # eager: `distill` is also the name of its module

if _TYPE_CHECKING:  # what the lazy table below resolves to, for type checkers and IDEs
    from fsl_jax.llm.augment import (
        Augmenter,
        EmbeddingReplacement,
        RandomDeletion,
        RandomInsertion,
        RandomSwap,
        Rewrite,
        eda,
        token_embedding_matrix,
    )
    from fsl_jax.llm.distill import agreement, distill_loss, kl_divergence
    from fsl_jax.llm.finetune import FewShotTextClassifier
    from fsl_jax.llm.icl import (  # noqa: F401 - ICLResult is importable from here, not in __all__
        ICLResult,
        ICLTransformer,
        evaluate_icl,
        gaussian_episodes,
        icl_learner,
        meta_train_icl,
    )
    from fsl_jax.llm.lm_finetune import LMFinetuneClassifier
    from fsl_jax.llm.text_models import BertClassifier, BertEncoder
    from fsl_jax.llm.prompting import (  # noqa: F401 - PromptSearchResult too
        PromptClassifier,
        PromptSearchResult,
        Template,
        Verbalizer,
        generate_text,
        sentence_embed_fn,
    )

__getattr__, __dir__ = _lazy(
    __name__,
    globals(),
    submodules=[],
    attributes={
        "augment": [
            "Augmenter",
            "EmbeddingReplacement",
            "RandomDeletion",
            "RandomInsertion",
            "RandomSwap",
            "Rewrite",
            "eda",
            "token_embedding_matrix",
        ],
        "distill": ["agreement", "distill_loss", "kl_divergence"],
        "finetune": ["FewShotTextClassifier"],
        "icl": ["ICLResult", "ICLTransformer", "evaluate_icl", "gaussian_episodes", "icl_learner", "meta_train_icl"],
        "lm_finetune": ["LMFinetuneClassifier"],
        "text_models": ["BertClassifier", "BertEncoder"],
        "prompting": [
            "PromptClassifier",
            "PromptSearchResult",
            "Template",
            "Verbalizer",
            "generate_text",
            "sentence_embed_fn",
        ],
    },
)

__all__ = [
    "Augmenter",
    "BertClassifier",
    "BertEncoder",
    "EmbeddingReplacement",
    "FewShotTextClassifier",
    "ICLTransformer",
    "LMFinetuneClassifier",
    "PromptClassifier",
    "RandomDeletion",
    "RandomInsertion",
    "RandomSwap",
    "Rewrite",
    "Template",
    "Verbalizer",
    "agreement",
    "distill",
    "distill_loss",
    "eda",
    "evaluate_icl",
    "gaussian_episodes",
    "generate_text",
    "icl_learner",
    "kl_divergence",
    "meta_train_icl",
    "sentence_embed_fn",
    "token_embedding_matrix",
]
