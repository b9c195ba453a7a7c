"""The fitting methods of :class:`~fsl_jax.llm.finetune.FewShotTextClassifier`, one module each.

========================== ==========================================================================================
module                     what it holds
========================== ==========================================================================================
:mod:`.common`             the prediction path every method shares (compiled, cached BERT features), the
                           cross-entropy, AdamW with linear warm-up / decay, the step count from ``steps`` / ``epochs``
:mod:`.head`               ``"head"``: logistic regression on frozen sentence embeddings (also the last step of
                           ``"setfit"`` and the probe that starts ``"finetune"``)
:mod:`.finetune`           ``"finetune"``: full fine-tuning of BERT + a linear head (LP-FT), early stopping
:mod:`.setfit`             ``"setfit"``: contrastive fine-tuning on SetFit's pairs, then a ``"head"`` fit
:mod:`.auto`               ``"auto"``: a method chosen by cross-validation on the support set, within a time budget
:mod:`.episodic`           ``"protonet"`` and ``"anil"``: episodic meta-training of the encoder, then prototypes
                           or an adapted head
========================== ==========================================================================================

Each method module exposes ``DEFAULTS`` (its defaults for the classifier's arguments left at ``None``) and a
``fit_<method>(clf, texts, y)`` that sets ``clf._bert`` (tuned encoder parameters, or ``None`` for the pretrained ones)
and ``clf._head`` (the head :meth:`~fsl_jax.llm.finetune.FewShotTextClassifier.predict` applies) and records what it
did in ``clf.fit_info_``. ``texts`` are the checked support texts and ``y`` their ``int32`` class indices into
``clf.classes_``. These modules import the concrete ``fsl_jax`` submodules they need, never the package tops.
"""
