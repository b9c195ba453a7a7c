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
"""

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
from fsl_jax.llm.distill import agreement, distill, distill_loss, kl_divergence
from fsl_jax.llm.finetune import FewShotTextClassifier
from fsl_jax.llm.icl import ICLResult, ICLTransformer, evaluate_icl, gaussian_episodes, icl_learner, meta_train_icl
from fsl_jax.llm.lm_finetune import LMFinetuneClassifier
from fsl_jax.llm.text_models import BertClassifier, BertEncoder
from fsl_jax.llm.prompting import (
    PromptClassifier,
    PromptSearchResult,
    Template,
    Verbalizer,
    generate_text,
    sentence_embed_fn,
)

__all__ = [
    "Augmenter", "BertClassifier", "BertEncoder", "EmbeddingReplacement", "FewShotTextClassifier", "ICLTransformer", "LMFinetuneClassifier",
    "PromptClassifier", "RandomDeletion", "RandomInsertion", "RandomSwap", "Rewrite", "Template",
    "Verbalizer", "agreement", "distill", "distill_loss", "eda", "evaluate_icl", "gaussian_episodes", "generate_text",
    "icl_learner", "kl_divergence", "meta_train_icl", "sentence_embed_fn", "token_embedding_matrix",
]
