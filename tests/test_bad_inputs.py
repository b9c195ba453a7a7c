"""Property-based: generated bad inputs across the public API raise ValueError/TypeError, never an internal error.

Each property draws many invalid argument combinations; the documented error types are ValueError and TypeError
(FileNotFoundError for paths). Any other exception (an XLA error, an IndexError from deep inside, a hang) fails.
"""

import functools

import jax
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fsl_jax as fj

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
EXPECTED = (ValueError, TypeError)

bad_counts = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.none(), st.text(max_size=3),
                       st.booleans())


@FAST
@given(
    classes=st.integers(1, 6), per_class=st.integers(1, 6), extra_rank=st.integers(0, 2),
    ways=st.one_of(st.integers(-3, 10), bad_counts), shots=st.one_of(st.integers(-3, 10), bad_counts),
    queries=st.one_of(st.integers(-3, 10), bad_counts), host=st.booleans(),
)
def test_samplers_reject_bad_episodes(classes, per_class, extra_rank, ways, shots, queries, host):
    shape = (classes, per_class) + (2,) * extra_rank
    data = np.zeros(shape, np.float32)
    valid = (
        extra_rank >= 1
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (ways, shots, queries))
        and ways <= classes and shots + queries <= per_class
    )
    cls = fj.data.HostSampler if host else fj.data.DeviceSampler
    if valid:
        sampler = cls(data, ways, shots, queries)
        tasks = sampler.sample(2) if host else sampler.sample(jax.random.key(0), 2)
        assert tasks.support_x.shape[:2] == (2, ways * shots)
    else:
        with pytest.raises(EXPECTED):
            cls(data, ways, shots, queries)


shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@FAST
@given(sx=shapes, sy=shapes, qx=shapes, qy=shapes, batched=st.booleans())
def test_task_validation_never_crashes(sx, sy, qx, qy, batched):
    task = fj.Task(np.zeros(sx), np.zeros(sy, np.int32), np.zeros(qx), np.zeros(qy, np.int32))
    try:
        task.validate(batched=batched)
    except EXPECTED:
        return
    lead = 1 if batched else 0
    assert len(sx) > lead and sx[lead] > 0 and sy[: lead + 1] == sx[: lead + 1]


@FAST
@given(lr=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2), st.none(), st.text(max_size=2)),
       steps=st.one_of(st.integers(-2, 3), st.floats(), st.none(), st.booleans()),
       loss=st.one_of(st.sampled_from(["mse", "xent", "MSE", "", "l1"]), st.integers(), st.none()),
       maker=st.sampled_from([fj.maml, fj.anil, fj.meta_sgd, fj.reptile]))
def test_learner_constructors(lr, steps, loss, maker):
    ok = (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 and np.isfinite(lr)
          and isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1 and loss in ("mse", "xent"))
    if ok:
        assert isinstance(maker(fj.models.MLP(), loss, lr, steps), fj.Learner)
    else:
        with pytest.raises(EXPECTED):
            maker(fj.models.MLP(), loss, lr, steps)


LEARNER = fj.maml(fj.models.MLP(hidden=(4,)), "mse", 0.01, 1)
SOURCE = functools.partial(fj.data.sinusoid_tasks, shots=3, queries=3)


@FAST
@given(meta_batch=st.one_of(bad_counts, st.integers(1, 4)), task_chunk=st.one_of(st.none(), bad_counts, st.integers(1, 5)),
       optimizer=st.sampled_from([optax.sgd(0.1), "adam", None, 0.1]))
def test_make_meta_step_arguments(meta_batch, task_chunk, optimizer):
    good_batch = isinstance(meta_batch, int) and not isinstance(meta_batch, bool) and meta_batch >= 1
    good_chunk = task_chunk is None or (isinstance(task_chunk, int) and not isinstance(task_chunk, bool)
                                        and task_chunk >= 1 and good_batch and meta_batch % task_chunk == 0)
    good_opt = isinstance(optimizer, optax.GradientTransformation)
    if good_batch and good_chunk and good_opt:
        fj.make_meta_step(LEARNER, optimizer, sampler=SOURCE, meta_batch=meta_batch, task_chunk=task_chunk)
    else:
        with pytest.raises(EXPECTED):
            fj.make_meta_step(LEARNER, optimizer, sampler=SOURCE, meta_batch=meta_batch, task_chunk=task_chunk)


@FAST
@given(num_tasks=st.one_of(bad_counts, st.integers(1, 3)), shots=st.one_of(bad_counts, st.integers(1, 3)),
       queries=st.one_of(bad_counts, st.integers(1, 3)))
def test_sinusoid_tasks_arguments(num_tasks, shots, queries):
    good = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (num_tasks, shots, queries))
    if good:
        assert fj.data.sinusoid_tasks(jax.random.key(0), num_tasks, shots, queries).support_x.shape == (num_tasks, shots, 1)
    else:
        with pytest.raises(EXPECTED):
            fj.data.sinusoid_tasks(jax.random.key(0), num_tasks, shots, queries)


@FAST
@given(episodes=st.one_of(bad_counts, st.integers(2, 5)), batch_size=st.one_of(bad_counts, st.integers(1, 4)),
       source=st.sampled_from(["sampler", "list", None, 3]))
def test_evaluate_arguments(episodes, batch_size, source):
    params = LEARNER.init(jax.random.key(0), fj.task_at(SOURCE(jax.random.key(0), 1), 0))
    src = SOURCE if source == "sampler" else ([1, 2] if source == "list" else source)
    good = (source == "sampler" and isinstance(episodes, int) and not isinstance(episodes, bool) and episodes >= 2
            and isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1)
    if good:
        result = fj.evaluate(LEARNER, params, src, episodes=episodes, key=jax.random.key(1), batch_size=batch_size)
        assert len(result.values) == episodes
    else:
        with pytest.raises(EXPECTED):
            fj.evaluate(LEARNER, params, src, episodes=episodes, key=jax.random.key(1), batch_size=batch_size)


# ----------------------------------------------------------------------------------------------- text and prompting

slot_pieces = st.sampled_from(["{text}", "{label}", "{}", "{0}", "{topic}", "{", "}", "{{", "}}", "Review: ", "\n", "x"])


@FAST
@given(pieces=st.lists(slot_pieces, max_size=6), topic=st.one_of(st.none(), st.just("news")))
def test_template_patterns(pieces, topic):
    pattern = "".join(pieces)
    fields = {} if topic is None else {"topic": topic}
    try:
        template = fj.llm.Template(pattern, **fields)
    except EXPECTED:
        return
    # Whatever was accepted renders, and the text lands in the prompt.
    assert "QQQ" in template.render("QQQ", "yes")
    assert "QQQ" in template.prompt("QQQ")


@FAST
@given(mapping=st.one_of(
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 3)),
                    st.one_of(st.text(max_size=4), st.lists(st.text(max_size=4), max_size=3)), max_size=3),
    st.none(), st.lists(st.text(max_size=2), max_size=2), st.integers()))
def test_verbalizer_mappings(mapping):
    try:
        verbalizer = fj.llm.Verbalizer(mapping)
    except EXPECTED:
        return
    assert len(verbalizer.labels) == len(mapping) >= 1
    assert all(verbalizer.words[label] and all(verbalizer.words[label]) for label in verbalizer.labels)


texts_strategy = st.one_of(st.lists(st.one_of(st.text(min_size=1, max_size=5), st.integers(), st.none()), max_size=4),
                           st.none(), st.text(max_size=4), st.integers())
labels_strategy = st.one_of(st.lists(st.one_of(st.sampled_from(["a", "b"]), st.integers(0, 1), st.just([1])),
                                     max_size=5), st.none(), st.integers())


@FAST
@given(texts=texts_strategy, labels=labels_strategy)
def test_text_classifier_fit_rejects_bad_support_sets(texts, labels):
    valid = (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)
             and isinstance(labels, list) and len(labels) == len(texts)
             and all(not isinstance(label, list) for label in labels) and len(set(labels)) >= 2)
    if valid:
        return  # a valid support set would start a real fit; the bad ones are what this property is about
    clf = fj.llm.FewShotTextClassifier("all-MiniLM-L6-v2", "head")
    with pytest.raises(EXPECTED):
        clf.fit(texts, labels)


@FAST
@given(method=st.one_of(st.sampled_from(["head", "finetune", "setfit", "protonet", "anil", "knn", ""]), st.none()),
       max_length=st.one_of(st.integers(-2, 300), bad_counts), batch_size=st.one_of(st.integers(-1, 8), bad_counts),
       backbone=st.sampled_from(["all-MiniLM-L6-v2", "/nonexistent/bert", ""]))
def test_text_classifier_constructor(method, max_length, batch_size, backbone):
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    valid = (method in ("head", "finetune", "setfit", "protonet", "anil") and is_int(max_length) and max_length >= 2
             and is_int(batch_size) and batch_size >= 1 and backbone == "all-MiniLM-L6-v2")
    if valid:
        clf = fj.llm.FewShotTextClassifier(backbone, method, max_length=max_length, batch_size=batch_size)
        assert clf.method == method and not clf.is_fitted
    else:
        with pytest.raises(EXPECTED + (FileNotFoundError,)):
            fj.llm.FewShotTextClassifier(backbone, method, max_length=max_length, batch_size=batch_size)


@FAST
@given(temperature=st.one_of(st.floats(allow_nan=True, allow_infinity=False), st.integers(-1, 3), st.none()),
       alpha=st.one_of(st.floats(-1, 2), st.just(float("nan")), st.none()), steps=st.one_of(st.integers(-1, 2), bad_counts),
       shape=st.sampled_from([(), (0, 2), (4, 2), (4,), (4, 5)]), only_inputs=st.booleans())
def test_distill_arguments(temperature, alpha, steps, shape, only_inputs):
    if only_inputs:  # every other argument valid: the inputs' shape alone decides
        temperature, alpha, steps = 2.0, 0.5, 1
    student = fj.models.MLP(hidden=(), out=3)
    params = student.init(jax.random.key(0), np.zeros((1, 2), np.float32))
    inputs = np.ones(shape, np.float32)
    teacher = lambda x: np.ones((x.shape[0], 3), np.float32)  # noqa: E731
    valid = (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0
             and isinstance(alpha, float) and 0 <= alpha <= 1 and isinstance(steps, int)
             and not isinstance(steps, bool) and steps >= 1 and shape == (4, 2))
    if valid:
        fj.llm.distill(teacher, student, params, inputs, steps=steps, temperature=temperature, alpha=alpha)
    else:
        with pytest.raises(EXPECTED):
            fj.llm.distill(teacher, student, params, inputs, steps=steps, temperature=temperature, alpha=alpha)
