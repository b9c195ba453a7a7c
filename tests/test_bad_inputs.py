"""Property-based: generated inputs across the public API. Valid ones are accepted; invalid ones raise
ValueError/TypeError (FileNotFoundError for paths) whose message names the argument (and, where the message
carries it, the value) that is wrong; never an internal error, never a hang.

Each property draws argument combinations, decides from the drawn values alone whether they are valid and, when
not, which arguments are wrong; the error must name one of those (checks may run in any order). Each example has a
deadline, and a SIGALRM guard turns an example that never returns into a failure.
"""

import datetime
import functools
import re
import signal
import threading

import jax
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fsl_jax as fj

# Per example: the slowest ones compile a small program (an evaluate or distill step, ~1 s on a busy 2-core machine).
DEADLINE = datetime.timedelta(seconds=20)
HANG_SECONDS = 120  # past this an example is stopped, not waited for
FAST = settings(max_examples=80, deadline=DEADLINE, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
EXPECTED = (ValueError, TypeError)

bad_counts = st.one_of(
    st.integers(max_value=0), st.floats(allow_nan=True), st.none(), st.text(max_size=3), st.booleans()
)


def never_hangs(fn):
    """Runs each example under a SIGALRM of HANG_SECONDS (POSIX, main thread): a hang fails instead of blocking."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)

        def stop(signum, frame):
            raise TimeoutError(f"one example of {fn.__name__} ran for more than {HANG_SECONDS} s")

        previous = signal.signal(signal.SIGALRM, stop)
        signal.alarm(HANG_SECONDS)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    return guarded


def sometimes_valid(arbitrary, valid, share=3):
    """``valid`` in about one example out of ``share``, ``arbitrary`` (mostly invalid) otherwise: arbitrary draws of
    several arguments are almost never all valid, and a property that rejects everything must not pass."""
    return st.integers(0, share - 1).flatmap(lambda i: valid if i == 0 else arbitrary)


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value, minimum=1):
    return is_int(value) and value >= minimum


def esc(value):
    """``repr(value)`` (``str`` for shapes) as a regex matching it literally."""
    return re.escape(str(value) if isinstance(value, tuple) else repr(value))


def rejects(problems, exceptions=EXPECTED):
    """``pytest.raises`` whose message must match one of the ``problems`` (regexes, one per wrong argument)."""
    assert problems, "rejects() needs at least one expected problem"
    return pytest.raises(exceptions, match="|".join(f"(?:{p})" for p in problems))


@st.composite
def valid_episodes(draw):
    classes, per_class = draw(st.integers(1, 6)), draw(st.integers(2, 6))
    shots = draw(st.integers(1, per_class - 1))
    return (
        classes,
        per_class,
        draw(st.integers(1, 2)),
        draw(st.integers(1, classes)),
        shots,
        draw(st.integers(1, per_class - shots)),
    )


episode_counts = st.one_of(st.integers(-3, 10), bad_counts)


@FAST
@given(
    episode=sometimes_valid(
        st.tuples(
            st.integers(1, 6), st.integers(1, 6), st.integers(0, 2), episode_counts, episode_counts, episode_counts
        ),
        valid_episodes(),
    ),
    host=st.booleans(),
)
@never_hangs
def test_samplers_reject_bad_episodes(episode, host):
    classes, per_class, extra_rank, ways, shots, queries = episode
    shape = (classes, per_class) + (2,) * extra_rank
    data = np.zeros(shape, np.float32)
    problems = []
    if extra_rank == 0:
        problems.append(rf"data must have shape .*got rank 2 shape {esc(shape)}")
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if not is_count(value):
            problems.append(rf"\b{name} must be an int >= 1, got {esc(value)}")
    if is_count(ways) and ways > classes:
        problems.append(rf"\bways={ways} exceeds the {classes} classes")
    if is_count(shots) and is_count(queries) and shots + queries > per_class:
        problems.append(
            rf"shots \+ queries = {shots} \+ {queries} = {shots + queries} exceeds the {per_class} "
            "examples per class"
        )
    cls = fj.data.HostSampler if host else fj.data.DeviceSampler
    if not problems:
        sampler = cls(data, ways, shots, queries)
        # DeviceSampler: shapes only (jax.eval_shape traces without compiling one program per drawn shape)
        tasks = sampler.sample(2) if host else jax.eval_shape(lambda key: sampler.sample(key, 2), jax.random.key(0))
        assert tasks.support_x.shape == (2, ways * shots) + shape[2:]
        assert tasks.query_x.shape == (2, ways * queries) + shape[2:]
    else:
        with rejects(problems):
            cls(data, ways, shots, queries)


shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@st.composite
def valid_task_shapes(draw):
    batched = draw(st.booleans())
    lead = (draw(st.integers(0, 3)),) if batched else ()
    features, targets = draw(st.lists(st.integers(0, 3), max_size=2)), draw(st.lists(st.integers(0, 3), max_size=1))
    n_s, n_q = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return (lead + (n_s, *features), lead + (n_s, *targets), lead + (n_q, *features), lead + (n_q, *targets), batched)


@FAST
@given(case=sometimes_valid(st.tuples(shapes, shapes, shapes, shapes, st.booleans()), valid_task_shapes()))
@never_hangs
def test_task_validation_never_crashes(case):
    sx, sy, qx, qy, batched = case
    task = fj.Task(np.zeros(sx), np.zeros(sy, np.int32), np.zeros(qx), np.zeros(qy, np.int32))
    lead = 1 if batched else 0
    fields = {"support_x": sx, "support_y": sy, "query_x": qx, "query_y": qy}
    problems = [
        rf"Task\.{name} must have shape .*got shape {esc(shape)}"
        for name, shape in fields.items()
        if len(shape) < lead + 1
    ]
    if not problems:  # every field has its example axis (and task axis): the rest can be compared
        if batched and len({shape[0] for shape in fields.values()}) > 1:
            problems.append("Task fields must share the leading task axis")
        for name, shape in (("support_x", sx), ("query_x", qx)):
            if shape[lead] == 0:
                problems.append(rf"Task\.{name} must hold at least one example, got shape {esc(shape)}")
        for y_name, y, x_name, x in (("support_y", sy, "support_x", sx), ("query_y", qy, "query_x", qx)):
            if y[: lead + 1] != x[: lead + 1]:
                problems.append(rf"Task\.{y_name} shape {esc(y)} does not match Task\.{x_name} shape {esc(x)}")
        if sx[lead + 1 :] != qx[lead + 1 :]:
            problems.append(
                rf"Task\.support_x features {esc(sx[lead + 1 :])} differ from Task\.query_x features "
                rf"{esc(qx[lead + 1 :])}"
            )
        if sy[lead + 1 :] != qy[lead + 1 :]:
            problems.append(
                rf"Task\.support_y target shape {esc(sy[lead + 1 :])} differs from Task\.query_y's "
                rf"{esc(qy[lead + 1 :])}"
            )
    if not problems:
        assert task.validate(batched=batched) is task
    else:
        with rejects(problems):
            task.validate(batched=batched)


@FAST
@given(
    args=sometimes_valid(
        st.tuples(
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2), st.none(), st.text(max_size=2)
            ),
            st.one_of(st.integers(-2, 3), st.floats(), st.none(), st.booleans()),
            st.one_of(st.sampled_from(["mse", "xent", "MSE", "", "l1"]), st.integers(), st.none()),
        ),
        st.tuples(
            st.one_of(st.floats(1e-6, 1e3), st.integers(1, 2)), st.integers(1, 3), st.sampled_from(["mse", "xent"])
        ),
    ),
    maker=st.sampled_from([fj.maml, fj.anil, fj.meta_sgd, fj.reptile]),
)
@never_hangs
def test_learner_constructors(args, maker):
    lr, steps, loss = args
    problems = []
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 and np.isfinite(lr)):
        problems.append(rf"inner_lr must be a positive finite number, got {esc(lr)}")
    if not is_count(steps):
        problems.append(rf"inner_steps must be a positive int, got {esc(steps)}")
    if loss not in ("mse", "xent"):  # a str names its value, another type its type
        problems.append(rf"loss must be 'mse', 'xent' or a callable.*got ({esc(loss)}|{type(loss).__name__})")
    if not problems:
        learner = maker(fj.models.MLP(), loss, lr, steps)
        assert isinstance(learner, fj.Learner)
        assert learner.kind == ("regression" if loss == "mse" else "classification")
    else:
        with rejects(problems):
            maker(fj.models.MLP(), loss, lr, steps)


LEARNER = fj.maml(fj.models.MLP(hidden=(4,)), "mse", 0.01, 1)
SOURCE = functools.partial(fj.data.sinusoid_tasks, shots=3, queries=3)


@functools.lru_cache(maxsize=None)
def learner_params():
    return LEARNER.init(jax.random.key(0), fj.task_at(SOURCE(jax.random.key(0), 1), 0))


SGD = optax.sgd(0.1)


@st.composite
def valid_step_arguments(draw):
    meta_batch = draw(st.integers(1, 6))
    chunks = [c for c in range(1, meta_batch + 1) if meta_batch % c == 0]
    return meta_batch, draw(st.one_of(st.none(), st.sampled_from(chunks))), SGD


@FAST
@given(
    args=sometimes_valid(
        st.tuples(
            st.one_of(bad_counts, st.integers(1, 4)),
            st.one_of(st.none(), bad_counts, st.integers(1, 5)),
            st.sampled_from([SGD, "adam", None, 0.1]),
        ),
        valid_step_arguments(),
    )
)
@never_hangs
def test_make_meta_step_arguments(args):
    meta_batch, task_chunk, optimizer = args
    problems = []
    if not isinstance(optimizer, optax.GradientTransformation):
        problems.append(rf"optimizer must be an optax\.GradientTransformation, got {type(optimizer).__name__}")
    if not is_count(meta_batch):
        problems.append(rf"meta_batch must be a positive int, got {esc(meta_batch)}")
    if task_chunk is not None and not is_count(task_chunk):
        problems.append(rf"task_chunk must be a positive int, got {esc(task_chunk)}")
    if is_count(meta_batch) and is_count(task_chunk) and meta_batch % task_chunk:
        problems.append(rf"task_chunk={task_chunk} must divide meta_batch={meta_batch}")
    if not problems:
        step = fj.make_meta_step(LEARNER, optimizer, sampler=SOURCE, meta_batch=meta_batch, task_chunk=task_chunk)
        assert callable(step)
    else:
        with rejects(problems):
            fj.make_meta_step(LEARNER, optimizer, sampler=SOURCE, meta_batch=meta_batch, task_chunk=task_chunk)


@FAST
@given(
    args=sometimes_valid(
        st.tuples(*[st.one_of(bad_counts, st.integers(1, 3))] * 3), st.tuples(*[st.integers(1, 3)] * 3)
    )
)
@never_hangs
def test_sinusoid_tasks_arguments(args):
    num_tasks, shots, queries = args
    problems = [
        rf"\b{name} must be a positive int, got {esc(value)}"
        for name, value in (("num_tasks", num_tasks), ("shots", shots), ("queries", queries))
        if not is_count(value)
    ]
    if not problems:
        tasks = jax.eval_shape(lambda key: fj.data.sinusoid_tasks(key, num_tasks, shots, queries), jax.random.key(0))
        assert tasks.support_x.shape == (num_tasks, shots, 1) and tasks.query_y.shape == (num_tasks, queries, 1)
    else:
        with rejects(problems):
            fj.data.sinusoid_tasks(jax.random.key(0), num_tasks, shots, queries)


@FAST
@given(
    episodes=st.one_of(bad_counts, st.integers(2, 5)),
    batch_size=st.one_of(bad_counts, st.integers(1, 4)),
    source=st.sampled_from(["sampler", "list", None, 3]),
)
@never_hangs
def test_evaluate_arguments(episodes, batch_size, source):  # valid in ~1 example out of 16: each compiles an evaluation
    src = SOURCE if source == "sampler" else ([1, 2] if source == "list" else source)
    problems = []
    if not is_count(episodes, 2):
        problems.append(rf"episodes must be an int >= 2 .*got {esc(episodes)}")
    if not is_count(batch_size):
        problems.append(rf"batch_size must be a positive int, got {esc(batch_size)}")
    if source != "sampler":
        problems.append(rf"source must be a sampler, .*got {type(src).__name__}")
    if not problems:
        result = fj.evaluate(
            LEARNER, learner_params(), src, episodes=episodes, key=jax.random.key(1), batch_size=batch_size
        )
        assert len(result.values) == episodes
    else:
        with rejects(problems):
            fj.evaluate(LEARNER, learner_params(), src, episodes=episodes, key=jax.random.key(1), batch_size=batch_size)


# ----------------------------------------------------------------------------------------------- text and prompting

# Pieces that keep their meaning when concatenated: literals (with escaped braces) and whole slots; "{x}" is a slot
# without a value, "{}" and "{0}" positional slots. A stray "{" or "}" at the end is the only malformed piece.
template_pieces = st.sampled_from(
    ["{text}", "{label}", "{topic}", "{x}", "{}", "{0}", "Review: ", "\n", "x", "{{", "}}"]
)


@st.composite
def valid_templates(draw):
    pieces = draw(st.lists(st.sampled_from(["Review: ", "\n", "x", "{{", "}}", "{text}", "{topic}"]), max_size=4))
    pieces.insert(draw(st.integers(0, len(pieces))), "{text}")
    if draw(st.booleans()):  # the label after the text: the prompt (everything before {label}) holds the text
        pieces.insert(draw(st.integers(pieces.index("{text}") + 1, len(pieces))), "{label}")
    return pieces, "", "news" if "{topic}" in pieces else draw(st.one_of(st.none(), st.just("news")))


@FAST
@given(
    case=sometimes_valid(
        st.tuples(
            st.lists(template_pieces, max_size=6),
            st.sampled_from(["", "", "{", "}"]),
            st.one_of(st.none(), st.just("news")),
        ),
        valid_templates(),
    )
)
@never_hangs
def test_template_patterns(case):
    pieces, stray, topic = case
    pattern = "".join(pieces) + stray
    fields = {} if topic is None else {"topic": topic}
    missing = sorted({p[1:-1] for p in pieces if p in ("{x}", "{topic}")} - set(fields))
    reasons = []
    if stray:
        reasons.append("is not a valid format pattern")
    else:
        if "{text}" not in pieces:
            reasons.append(r"has no \{text\} slot")
        if pieces.count("{label}") > 1:
            reasons.append(r"has more than one \{label\} slot")
        if "{label}" in pieces and "{text}" in pieces and pieces.index("{label}") < pieces.index("{text}"):
            reasons.append(r"puts \{label\} before \{text\}")
        if "{}" in pieces or "{0}" in pieces:
            reasons.append(r"has a positional slot")
        if missing:
            reasons.append(rf"has slots {re.escape(str(missing))} without values")
    if not reasons:
        template = fj.llm.Template(pattern, **fields)
        rendered = template.render("QQQ", "yes")
        assert "QQQ" in rendered and "yes" in rendered
        if "{label}" in pieces:
            assert rendered == pattern.format(text="QQQ", label="yes", **fields)
        assert "QQQ" in template.prompt("QQQ")  # the query prompt (the pattern up to {label}) holds the text
    else:
        with rejects([f"template {esc(pattern)} {reason}" for reason in reasons], ValueError):
            fj.llm.Template(pattern, **fields)


label_keys = st.one_of(st.text(max_size=3), st.integers(0, 3))
word = st.text(min_size=1, max_size=4).filter(str.strip)


@FAST
@given(
    mapping=sometimes_valid(
        st.one_of(
            st.dictionaries(
                label_keys, st.one_of(st.text(max_size=4), st.lists(st.text(max_size=4), max_size=3)), max_size=3
            ),
            st.none(),
            st.lists(st.text(max_size=2), max_size=2),
            st.integers(),
        ),
        st.dictionaries(label_keys, st.one_of(word, st.lists(word, min_size=1, max_size=3)), min_size=1, max_size=3),
    )
)
@never_hangs
def test_verbalizer_mappings(mapping):
    problems = []
    if not isinstance(mapping, dict) or not mapping:
        problems.append(rf"verbalizer must be a non-empty \{{label: \[words\]\}} mapping, got {esc(mapping)}")
    else:
        for label, value in mapping.items():
            words = [value] if isinstance(value, str) else list(value)
            if not words:
                problems.append(rf"verbalizer label {esc(label)} has no label words")
            problems += [
                rf"verbalizer label {esc(label)} has an empty or non-string label word {esc(w)}"
                for w in words
                if not w.strip()
            ]
    if not problems:
        verbalizer = fj.llm.Verbalizer(mapping)
        assert verbalizer.labels == tuple(mapping)
        assert verbalizer.words == {k: (v,) if isinstance(v, str) else tuple(v) for k, v in mapping.items()}
    else:
        with rejects(problems, ValueError):
            fj.llm.Verbalizer(mapping)


texts_strategy = st.one_of(
    st.lists(st.one_of(st.text(min_size=1, max_size=5), st.integers(), st.none()), max_size=4),
    st.none(),
    st.text(max_size=4),
    st.integers(),
)
labels_strategy = st.one_of(
    st.lists(st.one_of(st.sampled_from(["a", "b"]), st.integers(0, 1), st.just([1])), max_size=5),
    st.none(),
    st.integers(),
)


@FAST
@given(texts=texts_strategy, labels=labels_strategy)
@never_hangs
def test_text_classifier_fit_rejects_bad_support_sets(texts, labels):
    problems = []
    if isinstance(texts, str):
        problems.append(rf"texts must be a sequence of strings, got a single str {esc(texts[:40])}")
    elif not isinstance(texts, list):
        problems.append(rf"texts must be a sequence of strings, got {type(texts).__name__}")
    elif not texts:
        problems.append("texts is empty")
    else:
        problems += [
            rf"texts\[{i}\] must be a str, got {type(t).__name__} {esc(t)}"
            for i, t in enumerate(texts)
            if not isinstance(t, str)
        ]
    if not isinstance(labels, list):
        problems.append(rf"labels must be a sequence of labels, got {type(labels).__name__}")
    elif isinstance(texts, list) and len(labels) != len(texts):
        problems.append(rf"len\(labels\)={len(labels)} does not match len\(texts\)={len(texts)}")
    else:
        unhashable = [rf"labels\[{i}\]={esc(y)} is not hashable" for i, y in enumerate(labels) if isinstance(y, list)]
        problems += unhashable
        if labels and not unhashable and len(set(labels)) < 2:
            problems.append(rf"labels has a single class {esc(labels[0])}")
    if not problems:
        return  # a valid support set would start a real fit; the bad ones are what this property is about
    clf = fj.llm.FewShotTextClassifier("all-MiniLM-L6-v2", "head")
    with rejects(problems):
        clf.fit(texts, labels)


@FAST
@given(
    args=sometimes_valid(
        st.tuples(
            st.one_of(st.sampled_from(["head", "finetune", "setfit", "protonet", "anil", "knn", ""]), st.none()),
            st.one_of(st.integers(-2, 300), bad_counts),
            st.one_of(st.integers(-1, 8), bad_counts),
            st.sampled_from(["all-MiniLM-L6-v2", "/nonexistent/bert"]),
        ),
        st.tuples(
            st.sampled_from(fj.llm.finetune.METHODS),
            st.integers(2, 300),
            st.integers(1, 8),
            st.just("all-MiniLM-L6-v2"),
        ),
    )
)
@never_hangs
def test_text_classifier_constructor(args):
    method, max_length, batch_size, backbone = args
    problems = []
    if method not in fj.llm.finetune.METHODS:
        problems.append(rf"method must be one of .*got {esc(method)}")
    if backbone != "all-MiniLM-L6-v2":
        problems.append(rf"backbone={esc(backbone)}")
    if not is_count(max_length, 2):
        problems.append(rf"max_length must be an int >= 2, got {esc(max_length)}")
    if not is_count(batch_size):
        problems.append(rf"batch_size must be an int >= 1, got {esc(batch_size)}")
    if not problems:
        clf = fj.llm.FewShotTextClassifier(backbone, method, max_length=max_length, batch_size=batch_size)
        assert (clf.method, clf.max_length, clf.batch_size, clf.is_fitted) == (method, max_length, batch_size, False)
    else:
        with rejects(problems, EXPECTED + (FileNotFoundError,)):
            fj.llm.FewShotTextClassifier(backbone, method, max_length=max_length, batch_size=batch_size)


@FAST
@given(
    temperature=st.one_of(st.floats(allow_nan=True, allow_infinity=False), st.integers(-1, 3), st.none()),
    alpha=st.one_of(st.floats(-1, 2), st.just(float("nan")), st.none()),
    steps=st.one_of(st.integers(-1, 2), bad_counts),
    shape=st.sampled_from([(), (0, 2), (4, 2), (4,), (4, 5)]),
    only_inputs=st.booleans(),
)
@never_hangs
def test_distill_arguments(temperature, alpha, steps, shape, only_inputs):
    if only_inputs:  # every other argument valid: the inputs' shape alone decides
        temperature, alpha, steps = 2.0, 0.5, 1
    student = fj.models.MLP(hidden=(), out=3)
    params = student.init(jax.random.key(0), np.zeros((1, 2), np.float32))
    inputs = np.ones(shape, np.float32)
    teacher = lambda x: np.ones((x.shape[0], 3), np.float32)
    problems = []
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        problems.append(rf"temperature must be > 0, got {esc(temperature)}")
    if not (isinstance(alpha, float) and 0 <= alpha <= 1):
        problems.append(rf"alpha must be in \[0, 1\], got {esc(alpha)}")
    if not is_count(steps):
        problems.append(rf"\bsteps must be a positive int, got {esc(steps)}")
    if shape == ():
        problems.append(r"inputs must be arrays with a leading example axis, got shapes \[\(\)\]")
    elif shape[0] == 0:
        problems.append("inputs is empty")
    elif shape != (4, 2):  # the student's first layer takes 2 features
        problems.append(rf"student cannot be applied to inputs of shapes {re.escape(str([shape]))}")
    if not problems:
        trained = fj.llm.distill(teacher, student, params, inputs, steps=steps, temperature=temperature, alpha=alpha)
        assert jax.tree_util.tree_structure(trained) == jax.tree_util.tree_structure(params)
    else:
        with rejects(problems):
            fj.llm.distill(teacher, student, params, inputs, steps=steps, temperature=temperature, alpha=alpha)


def test_inputs_that_used_to_slip_through(tmp_path):
    """An empty backbone name or a folder that is not a model, booleans as distillation numbers, and a template whose
    label comes before the text (its prompt would never contain the text) are rejected, naming what is wrong."""
    with pytest.raises(FileNotFoundError, match="model folder or name is empty"):
        fj.llm.FewShotTextClassifier("", "head")
    with pytest.raises(FileNotFoundError, match="has no config.json: not a Hugging Face model folder"):
        fj.llm.FewShotTextClassifier(str(tmp_path), "head")
    student = fj.models.MLP(hidden=(), out=3)
    params = student.init(jax.random.key(0), np.zeros((1, 2), np.float32))
    teacher = lambda x: np.ones((x.shape[0], 3), np.float32)
    with pytest.raises(ValueError, match="temperature must be > 0, got True"):
        fj.llm.distill(teacher, student, params, np.ones((4, 2), np.float32), steps=1, temperature=True)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got True"):
        fj.llm.distill(teacher, student, params, np.ones((4, 2), np.float32), steps=1, alpha=True)
    with pytest.raises(ValueError, match=r"puts \{label\} before \{text\}"):
        fj.llm.Template("{label} {text}")
    assert fj.llm.Template("{text} {label}").prompt("x") == "x"
