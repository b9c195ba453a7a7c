"""Meta-training a small GPT-2-style transformer to classify in context (no gradient steps at test time).

The model sees a few-shot episode as a token sequence: one token per labelled demonstration ``(x, y)`` (an input
projection of the continuous ``x`` plus an embedding of the label ``y``) and one token per query (its ``x`` plus a
*masked-label* embedding). GPT-2 blocks (:class:`fsl_jax.models.gpt2.GPT2Block`) process the sequence; every
query's output is read through the label embeddings (tied, as GPT-2 ties its output to ``wte``) to give logits over
the labels. Attention: demonstrations attend to each other, each query attends to the demonstrations and itself (so
all queries of an episode are scored in one pass without seeing each other), and padded demonstrations are masked.
There are no position embeddings: a demonstration set has no order.

Episodes (:func:`gaussian_episodes`) come from random class-prototype embeddings: every episode draws ``ways``
fresh Gaussian class centres in ``dim`` dimensions and noisy examples around them, and assigns the labels by a random
permutation, so nothing about a class can be memorised: the label of a query must be read from the demonstrations.
Training mixes 1 .. ``max_shots`` shots per episode (padded + masked), so one model serves every shot count.

As a :class:`~fsl_jax.Learner` (:func:`icl_learner`), ``adapt`` just packs the support set (the "adaptation" is
conditioning on context), so :func:`fsl_jax.meta_train` and :func:`fsl_jax.evaluate` drive it like any other learner.

Text in-context learning with a *pretrained* GPT-2 uses the same idea on words:
:class:`fsl_jax.llm.prompting.PromptClassifier` with ``demonstrations=k`` renders ``k`` labelled examples before the
query and scores the label words. With a local GPT-2 folder::

    lm, params, tok = fj.models.from_pretrained("path/to/gpt2")
    clf = PromptClassifier(lm, params, tok, "Article: {text}\\nTopic: {label}", {"sport": "sport", ...},
                           demonstrations=5, selection="balanced", calibrate=True, max_text_tokens=60)
    clf.fit(support_texts, support_labels).score(test_texts, test_labels)

Example:
    >>> import jax
    >>> result = meta_train_icl(jax.random.key(0), steps=5, n_embd=16, n_layer=1, n_head=2, meta_batch=4,
    ...                         log_every=5, progress=False)  # a real run: n_embd=128, n_layer=4, steps=2000
    >>> result.steps, result.episode_kwargs["max_shots"]
    (5, 5)
    >>> acc = result.icl_accuracy(result.params, ways=5, shots=3, episodes=10, key=jax.random.key(1))
    >>> 0.0 <= acc <= 1.0  # near chance (0.2) after 5 steps
    True
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fsl_jax._config import records_config
from fsl_jax.learners.base import Learner, xent_loss
from fsl_jax.models.bert import attention_bias
from fsl_jax.models.gpt2 import GPT2Block, GPT2Config
from fsl_jax.tasks import Task

__all__ = [
    "ICLResult",
    "ICLTransformer",
    "evaluate_icl",
    "gaussian_episodes",
    "icl_learner",
    "meta_train_icl",
    "nearest_class_mean_accuracy",
]

Array = Any


class ICLTransformer(nn.Module):
    """GPT-2 blocks over ``(x, y)`` demonstration tokens and masked-label query tokens (see the module docstring).

    Written for one episode (``vmap`` it over episodes).

    Attributes:
      num_labels: label vocabulary (the largest ``ways``); embedding row ``num_labels`` is the masked label.
      n_embd, n_layer, n_head: transformer size (GPT-2's names).
      dtype, param_dtype: computation and parameter dtypes.

    Call: ``apply(variables, support_x [N, d], support_y [N], support_mask [N] or None, query_x [Q, d])`` ->
    ``[Q, num_labels]`` logits.

    Example:
        >>> model = ICLTransformer(num_labels=5, n_embd=16, n_layer=1, n_head=2)
        >>> x = jax.random.normal(jax.random.key(0), (40, 16))
        >>> sx, sy, qx = x[:25], jnp.arange(25) % 5, x[25:]  # 5-way 5-shot context, 15 queries
        >>> variables = model.init(jax.random.key(1), sx, sy, None, qx)
        >>> model.apply(variables, sx, sy, None, qx).shape  # logits over the 5 labels for every query
        (15, 5)
    """

    num_labels: int
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def config(self) -> GPT2Config:
        return GPT2Config(
            vocab_size=self.num_labels + 1,
            n_positions=1,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )

    @nn.compact
    def __call__(self, support_x: Array, support_y: Array, support_mask: Array | None, query_x: Array) -> Array:
        cfg = self.config
        n, q = support_x.shape[0], query_x.shape[0]
        if support_mask is None:
            support_mask = jnp.ones((n,), bool)
        project = nn.Dense(cfg.n_embd, dtype=self.dtype, param_dtype=self.param_dtype, name="input_proj")
        # Unit-scale label embeddings, comparable to the projected inputs, so that labels are visible from the start.
        labels = nn.Embed(
            self.num_labels + 1,
            cfg.n_embd,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=nn.initializers.normal(1.0),
            name="label_embed",
        )
        support = project(support_x) + labels(support_y.astype(jnp.int32))
        query = project(query_x) + labels(jnp.full((q,), self.num_labels, jnp.int32))
        h = jnp.concatenate([support, query], axis=0)[None]  # [1, N + Q, D]
        total = n + q
        is_demo = jnp.concatenate([support_mask.astype(bool), jnp.zeros((q,), bool)])
        allowed = is_demo[None, :] | jnp.eye(total, dtype=bool)  # keys: valid demonstrations, and oneself
        bias = attention_bias(allowed[None, None], self.dtype)
        for i in range(cfg.n_layer):
            h, _ = GPT2Block(cfg, i, self.dtype, self.param_dtype, name=f"h_{i}")(h, bias, True, None)
        h = nn.LayerNorm(cfg.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_f")(h)
        logits = labels.attend(h[0, n:])[:, : self.num_labels] / jnp.sqrt(jnp.asarray(cfg.n_embd, self.dtype))
        return logits.astype(jnp.float32)


@records_config
def icl_learner(model: ICLTransformer) -> Learner:
    """The :class:`ICLTransformer` as a :class:`~fsl_jax.Learner`: ``adapt`` packs the support set, ``predict``
    runs the transformer on it plus the queries.

    Example:
        >>> learner = icl_learner(ICLTransformer(num_labels=5, n_embd=16, n_layer=1, n_head=2))
        >>> tasks = gaussian_episodes(jax.random.key(0), 4, shots=2, max_shots=5)
        >>> task = jax.tree_util.tree_map(lambda a: a[0], tasks)  # the first episode
        >>> params = learner.init(jax.random.key(1), task)
        >>> support_x, support_y, mask = learner.adapt(params, task, None)  # adapting is packing the context
        >>> support_x.shape, int(mask.sum())  # 5 slots per class, 2 of them real
        ((25, 16), 10)
        >>> learner.predict(params, (support_x, support_y, mask), task.query_x).shape
        (15, 5)
    """

    def init(key: Array, task: Task):
        return model.init(key, task.support_x, task.support_y, task.support_mask, task.query_x)

    def adapt(params, task: Task, key: Array):
        del params, key
        mask = task.support_mask if task.support_mask is not None else jnp.ones(task.support_y.shape, bool)
        return task.support_x, task.support_y, mask

    def predict(params, adapted, x: Array) -> Array:
        support_x, support_y, mask = adapted
        return model.apply(params, support_x, support_y, mask, x)

    return Learner(
        init=init, adapt=adapt, predict=predict, loss=xent_loss, kind="classification", name="icl_transformer"
    )


def gaussian_episodes(
    key: Array,
    num_tasks: int,
    *,
    ways: int = 5,
    shots: int = 5,
    queries: int = 3,
    dim: int = 16,
    noise: float = 1.2,
    max_shots: int | None = None,
    random_shots: bool = False,
) -> Task:
    """Few-shot episodes over random Gaussian class prototypes (jittable).

    Per episode: ``ways`` centres ``c ~ N(0, I_dim)``, examples ``c + noise * N(0, I_dim)``, labels assigned by a
    random permutation of ``0..ways-1``. The support set is laid out ``[ways * max_shots]`` (class-major) with
    ``support_mask`` marking the ``shots`` real examples per class (``random_shots``: a random ``1..max_shots`` per
    episode instead).

    Args:
      key: PRNG key.
      num_tasks: episodes (the leading axis).
      ways, shots, queries: classes, support and query examples per class.
      dim, noise: input dimension and within-class standard deviation.
      max_shots: support slots per class (default ``shots``).
      random_shots: draw the shot count per episode uniformly from ``1..max_shots``.

    Returns:
      A batched :class:`~fsl_jax.Task` with ``support_mask``.

    Example:
        >>> tasks = gaussian_episodes(jax.random.key(0), 4, shots=2, max_shots=5)
        >>> tasks.support_x.shape, tasks.query_x.shape, int(tasks.support_mask[0].sum())
        ((4, 25, 16), (4, 15, 16), 10)
        >>> sorted(set(tasks.support_y[0].tolist())), tasks.support_mask[0, :5].tolist()  # class-major slots
        ([0, 1, 2, 3, 4], [1.0, 1.0, 0.0, 0.0, 0.0])
    """
    max_shots = shots if max_shots is None else max_shots
    if not 1 <= shots <= max_shots:
        raise ValueError(f"shots must be in [1, max_shots={max_shots}], got {shots}")

    def one(k):
        kc, ks, kq, kp, kn = jax.random.split(k, 5)
        centres = jax.random.normal(kc, (ways, dim))
        support = centres[:, None] + noise * jax.random.normal(ks, (ways, max_shots, dim))
        query = centres[:, None] + noise * jax.random.normal(kq, (ways, queries, dim))
        perm = jax.random.permutation(kp, ways)
        k_shots = jax.random.randint(kn, (), 1, max_shots + 1) if random_shots else shots
        mask = jnp.broadcast_to(jnp.arange(max_shots)[None] < k_shots, (ways, max_shots))
        sy = jnp.broadcast_to(perm[:, None], (ways, max_shots))
        qy = jnp.broadcast_to(perm[:, None], (ways, queries))
        return Task(
            support.reshape(-1, dim),
            sy.reshape(-1).astype(jnp.int32),
            query.reshape(-1, dim),
            qy.reshape(-1).astype(jnp.int32),
            mask.reshape(-1).astype(jnp.float32),
            None,
        )

    return jax.vmap(one)(jax.random.split(key, num_tasks))


def nearest_class_mean_accuracy(tasks: Task, ways: int) -> Array:
    """Per-episode accuracy ``[tasks]`` of the ProtoNet rule on raw inputs (identity encoder): the query takes the
    label of the nearest (squared Euclidean) mean of the masked support examples of each label."""

    def one(task: Task):
        mask = task.support_mask if task.support_mask is not None else jnp.ones(task.support_y.shape)
        onehot = jax.nn.one_hot(task.support_y, ways) * mask[:, None]  # [N, ways]
        protos = (onehot.T @ task.support_x) / jnp.maximum(onehot.sum(0)[:, None], 1.0)
        d = jnp.sum((task.query_x[:, None] - protos[None]) ** 2, axis=-1)
        return jnp.mean((jnp.argmin(d, axis=1) == task.query_y).astype(jnp.float32))

    return jax.vmap(one)(tasks)


@functools.partial(jax.jit, static_argnames=("model", "ways", "shots", "batch_size", "episode_items"))
def _episode_accuracies(
    model: ICLTransformer, params: Any, key: Array, ways: int, shots: int, batch_size: int, episode_items: tuple
) -> tuple[Array, Array]:
    learner = icl_learner(model)
    tasks = gaussian_episodes(key, batch_size, ways=ways, shots=shots, **dict(episode_items))

    def one(task: Task):
        logits = learner.predict(params, learner.adapt(params, task, None), task.query_x)[:, :ways]
        return jnp.mean((jnp.argmax(logits, axis=1) == task.query_y).astype(jnp.float32))

    return jax.vmap(one)(tasks), nearest_class_mean_accuracy(tasks, ways)


def evaluate_icl(
    model: ICLTransformer,
    params: Any,
    *,
    ways: int = 5,
    shots: int = 1,
    episodes: int = 1000,
    key: Array,
    batch_size: int = 200,
    **episode_kwargs: Any,
) -> dict[str, np.ndarray]:
    """Per-episode accuracies of the in-context model and of the nearest-class-mean (ProtoNet) rule on the **same**
    episodes.

    Args:
      model, params: the trained :class:`ICLTransformer`.
      ways, shots: the episode shape (``ways <= model.num_labels``).
      episodes: number of test episodes.
      key: PRNG key of the episodes.
      batch_size: episodes per compiled call.
      **episode_kwargs: more :func:`gaussian_episodes` arguments (``dim``, ``noise``, ``queries``, ``max_shots``).

    Returns:
      ``{"icl": [episodes], "protonet": [episodes]}`` float arrays.
    """
    if ways > model.num_labels:
        raise ValueError(f"ways={ways} exceeds the model's num_labels={model.num_labels}")
    icl, proto = [], []
    for start in range(0, episodes, batch_size):
        a, b = _episode_accuracies(
            model,
            params,
            jax.random.fold_in(key, start),
            ways,
            shots,
            batch_size,
            tuple(sorted(episode_kwargs.items())),
        )
        icl.append(np.asarray(a))
        proto.append(np.asarray(b))
    return {"icl": np.concatenate(icl)[:episodes], "protonet": np.concatenate(proto)[:episodes]}


class ICLResult(NamedTuple):
    """What :func:`meta_train_icl` returns.

    Attributes:
      params: the trained variables of ``model``.
      icl_accuracy: ``(params, ways, shots, episodes, key) -> float``: mean query accuracy on fresh episodes
        of the training distribution.
      model: the :class:`ICLTransformer`.
      history: the :class:`fsl_jax.History` of training metrics.
      seconds: training wall time (compilation included).
      steps: meta-steps run.
      episode_kwargs: the episode settings (``dim``, ``noise``, ``queries``, ``max_shots``) used for training.
    """

    params: Any
    icl_accuracy: Callable[..., float]
    model: ICLTransformer
    history: Any
    seconds: float
    steps: int
    episode_kwargs: dict


def meta_train_icl(
    key: Array,
    *,
    ways: int = 5,
    max_shots: int = 5,
    queries: int = 3,
    dim: int = 16,
    noise: float = 1.2,
    n_embd: int = 128,
    n_layer: int = 4,
    n_head: int = 4,
    steps: int = 2000,
    meta_batch: int = 32,
    learning_rate: float = 1e-3,
    warmup: int = 100,
    weight_decay: float = 1e-4,
    max_seconds: float | None = None,
    log_every: int = 50,
    progress: bool = True,
) -> ICLResult:
    """Meta-trains an :class:`ICLTransformer` from scratch on :func:`gaussian_episodes` with 1..``max_shots`` shots.

    Uses :func:`fsl_jax.meta_train` (episodes sampled inside the compiled step; AdamW with linear warm-up and cosine
    decay, gradients clipped at norm 1).

    Args:
      key: PRNG key.
      ways, max_shots, queries, dim, noise: the episode distribution (see :func:`gaussian_episodes`).
      n_embd, n_layer, n_head: transformer size.
      steps: meta-steps; meta_batch: episodes per step.
      learning_rate, warmup, weight_decay: optimiser settings.
      max_seconds: stop early after this much wall time (checked every ``log_every`` steps).
      log_every: steps between metric reads.
      progress: tqdm progress bar.

    Returns:
      An :class:`ICLResult` (``result.icl_accuracy(result.params, ways, shots, episodes, key)``).
    """
    from fsl_jax.train import meta_train

    model = ICLTransformer(num_labels=ways, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
    learner = icl_learner(model)
    episode_kwargs: dict[str, Any] = dict(queries=queries, dim=dim, noise=noise, max_shots=max_shots)
    source: Callable[..., Task] = functools.partial(
        gaussian_episodes, ways=ways, shots=max_shots, random_shots=True, **episode_kwargs
    )
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(warmup, max(steps // 10, 1)), steps, learning_rate * 0.05
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))
    t0 = time.perf_counter()
    init_key, run_key = jax.random.split(key)
    # Jitted initialisation: op-by-op (eager) init of the blocks costs seconds on a CPU.
    params = jax.jit(lambda k: learner.init(k, jax.tree_util.tree_map(lambda a: a[0], source(k, 1))))(init_key)
    state, history = meta_train(
        learner,
        optimizer,
        source,
        steps=steps,
        meta_batch=meta_batch,
        key=run_key,
        params=params,
        log_every=log_every,
        progress=progress,
        desc="icl transformer",
        max_seconds=max_seconds,
    )
    seconds = time.perf_counter() - t0

    def icl_accuracy(params: Any, ways: int, shots: int, episodes: int, key: Array) -> float:
        accs = evaluate_icl(
            model,
            params,
            ways=ways,
            shots=shots,
            episodes=episodes,
            key=key,
            batch_size=min(200, episodes),
            **episode_kwargs,
        )
        return float(np.mean(accs["icl"]))

    return ICLResult(state.params, icl_accuracy, model, history, seconds, int(state.step), episode_kwargs)
