"""T3 diagnostic (Li et al., ICLR 2025, arXiv 2410.06166): is temporal order
readable from a Video LLM's representations, and does the model use it?

For the same held-out questions it compares three accuracies:

  probe   a linear probe (probes/linear.py) on the representations, at every
          stage: the vision encoder's output, the projector's output (the
          LLM's input at the video positions) and every LLM layer; read at the
          video positions (each frame's tokens averaged, the frames
          concatenated in frame order: [n_frames * d]) and at the last position;
  video   the model's own answer with the video;
  text    the model's answer given the per-frame captions instead of the video.

Tasks are the synthetic T3 tasks (tasks/synthetic.py `T3_TASKS`): order of 2
and of 3 events, attribute change (brightness, size), temporal referring and
temporal grounding. As in the paper, probes are trained on one distribution
and tested on another: another object (default: squares -> circles, like the
paper's car -> cat) and/or another background (the paper's black -> white:
--test-background white).

Video positions come before the question, so in a causal LLM they cannot
depend on it. Where the question varies within a task (referring: which
segment; when: which colour) the video-position probe is therefore fitted per
question, as the paper does (its referring_begin / _middle / _end probes);
the reported accuracy is over all test questions of the task. At the last
position the question has been read, and one probe per task is fitted.

Control tasks (Hewitt & Liang, 2019): every probe is fitted again, with the
same C, to labels that are a random but fixed function of the sample's input
type (`input_type`: the question and which colour is on which side, not when),
drawn from the task's label distribution. Selectivity = probe accuracy -
control accuracy: how much of the accuracy the probe owes to reading the
temporal property rather than to memorising what the clips show. A control
label can be memorised only for a type seen in training, and not every test
type is (at 96 samples, 67 of 96 referring and 57 of 96 'when' test questions
have a recurring type): over all test questions the control accuracy is
capped and selectivity inflated. Both accuracies of the selectivity are
therefore scored on the recurring test questions only (their count is
stored and shown), and its spread over the probe seeds is reported: tasks
with few types (brightness, size change: 8) swing widely between seeds.

    python -m analyses.t3 --model organism --samples 96

One file per run (--out), on the run engine (analyses/run.py): per sample,
the features at every stage and, for test samples, the model's answers in
both forms; the run resumes per sample, refuses a file of another
configuration (naming what differs) and, with --overwrite, replaces it only
once the new run is complete. The probes are a later stage on those stored
arrays, with their settings (--C, --cv, --probe, --probe-seeds, --probe-tol)
recorded beside their results: other probe settings on the same file need
--overwrite and redo only the probes, not the forward passes.
notebooks/t3.ipynb redraws the figures (analyses/t3_figures.py) from the file.

    from analyses import t3
    res = t3.run(lm, tasks.t3.t3_dataset(["order"], 96), "cache/t3.h5")   # -> T3Result
    res = t3.load_results("cache/t3.h5")
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from tasks.synthetic import BACKGROUNDS, SHAPES, T3_TASKS, caption_prompt
from tasks.t3 import input_type, t3_dataset
from probes.control import recurring
from probes.groups import PROBE_SEEDS, PROBES, accuracy_over, control_correct, probe_correct, probe_factory
from tasks.types import Sample

# the results object and its reader live beside the run (re-exported: analyses.t3.load_results)
from analyses.t3_results import (_COUNTS, _DERIVED, _PER_SEED, _STORED, T3Result,  # noqa: F401
                                 load_results)

VISION, PROJECTOR = "vision.hook_out", "projector.hook_out"
FRAMES, LAST = "frame_mean", "last"  # the two position sets, as in tracing/capture.py
def _sample_meta(s: Sample):
    from tracing.store import SampleMeta

    return SampleMeta(s.id, s.task, int(s.answer), -1,
                      {"split": s.meta["split"], "question": s.question, "options": s.options,
                       "background": s.meta["background"], "shape": s.meta["shape"]})


# ---------------------------------------------------------------- capture

def t3_hooks(lm) -> list[str]:
    """Canonical hooks of every stage: encoder, projector, each LLM layer's output."""
    from tracing.hooks import expand

    return expand(lm, [VISION, PROJECTOR, "resid_post"])


def key(hook: str, positions: str) -> str:
    """Name of one (hook, positions) view in the cache, e.g. 'blocks.3.hook_resid_post@last'."""
    return f"{hook}@{positions}"


def sample_features(lm, sample: Sample, hooks: list[str]) -> dict[str, np.ndarray]:
    """One forward pass -> {key(hook, 'frame_mean'): [n_frames, d] for every hook,
    key(hook, 'last'): [d] for LLM-side hooks}. Vision-side hooks have no last
    position (their rows are encoder features, not LLM positions)."""
    from tracing.inputs import build_sample_inputs

    return _features(lm, *build_sample_inputs(lm, sample), hooks)


def _features(lm, inputs: dict, layout, hooks: list[str]) -> dict[str, np.ndarray]:
    from tracing.capture import capture, select
    from tracing.hooks import resolve

    acts = capture(lm, inputs, layout, hooks, None)  # everything once; both views from it
    out = {}
    for name, x in acts.items():
        p = resolve(lm, name)
        out[key(name, FRAMES)] = select(x, layout, FRAMES, p).float().cpu().numpy()
        if not (p.vision_side or p.video_rows):
            out[key(name, LAST)] = select(x, layout, LAST, p).float().cpu().numpy()
    return out


FORMS = ("video", "text")  # the model's answer with the video, and with the captions in its place


def declare(lm, samples: list[Sample], config: dict | None = None, float16: bool = False):
    """T3 as an engine declaration: one unit per sample, its features at every
    stage (``_features``) and, for a test sample, the model's own answer in
    both forms: ``<form>_probs`` [K] and ``<form>_pred`` [1] (empty for a
    training sample). Everything the probes and the accuracies need; the
    probes are a later stage on the stored arrays (``probe_results``)."""
    from analyses.run import Declaration
    from tracing.inputs import build_sample_inputs
    from tracing.scoring import score

    hooks = t3_hooks(lm)

    def compute(i):
        s = samples[i]
        inputs, layout = build_sample_inputs(lm, s)
        arrays = _features(lm, inputs, layout, hooks)
        test = s.meta["split"] == "test"
        for form in FORMS:
            if test:
                item = (inputs, layout) if form == "video" else build_sample_inputs(lm, s, context=caption_prompt(s))
                sc = score(lm, [item], 1)
                arrays[f"{form}_probs"], arrays[f"{form}_pred"] = sc.probs[0], np.asarray(sc.pred[:1])
            else:
                arrays[f"{form}_probs"], arrays[f"{form}_pred"] = np.zeros(0), np.zeros(0, dtype=np.int64)
        return arrays, layout.to_dict(), {}

    # A test sample with the most options first: it fixes the stored shapes.
    tests = [i for i, s in enumerate(samples) if s.meta["split"] == "test"] or [0]
    first = max(tests, key=lambda i: len(samples[i].options))
    cfg = {**(config or {}), "hooks": hooks, "positions": [FRAMES, LAST]}
    return Declaration("t3", cfg, [_sample_meta(s) for s in samples], compute, float16=float16, order=[first],
                       describe="T3 features and answers", predicted="video_pred")


# ---------------------------------------------------------------- probing

def frame_view(X: np.ndarray, view: str = "concat", seed: int = 0) -> np.ndarray:
    """Per-frame features X [N, n_frames, d] -> probe features [N, D].

    concat:       frames concatenated in frame order, D = n_frames * d (what T3 probes);
    mean:         mean over frames, D = d (blind to frame order by construction);
    random_frame: one frame per sample, drawn with `seed`, D = d (the probe is
                  not told which frame it got);
    frame:<i>:    frame i of every sample, D = d.
    """
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"frame_view: expected [N, n_frames, d], got shape {X.shape}")
    if view == "concat":
        return X.reshape(X.shape[0], -1)
    if view == "mean":
        return X.mean(1)
    if view == "random_frame":
        idx = np.random.default_rng(seed).integers(X.shape[1], size=X.shape[0])
        return X[np.arange(X.shape[0]), idx]
    if view.startswith("frame:"):
        return X[:, int(view.split(":", 1)[1])]
    raise ValueError(f"unknown frame view {view!r}; use concat, mean, random_frame or frame:<i>")


def stage_names(n_layers: int) -> list[str]:
    return ["vision", "projector", *[f"layer {l}" for l in range(n_layers)]]


def run_probes(reader, n_layers: int, factory=None, seeds=PROBE_SEEDS, progress: bool = True, types=None):
    """Probe every task at every stage from a T3 cache -> dict of 'tasks' and,
    [T, R, S] each (see T3Result for the axes), 'probe_frames', 'probe_last',
    'control_frames', 'control_last' (all test samples), the same four with
    '_recurring' (scored on the test samples whose input type occurs in the
    task's training split), and [T] each 'n_recurring', 'n_recurring_types',
    'n_test_types'. types: the input type of every sample of the cache
    [n_samples] (input_type), or None: no control task (NaN; counts -1)."""
    from tqdm import tqdm

    s = reader.samples
    if not s["complete"].all():
        raise ValueError(f"{reader.path}: {int((~s['complete']).sum())} samples are not captured yet; "
                         "run the capture to the end first")
    if types is not None and len(types) != reader.n_samples:
        raise ValueError(f"types: {len(types)} for the {reader.n_samples} samples of {reader.path}")
    factory = factory or probe_factory()
    split = np.array([reader.meta(i)["split"] for i in range(reader.n_samples)])
    question = np.array([reader.meta(i)["question"] for i in range(reader.n_samples)])
    tasks = [t for t in T3_TASKS if t in set(s["task"])]
    layers = [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]
    S, R = 2 + n_layers, len(seeds)
    out = {name: np.full((len(tasks), R, S), np.nan) for name in _PER_SEED}
    out |= {name: np.full(len(tasks), -1) for name in _COUNTS}
    for ti, t in enumerate(tqdm(tasks, desc="probes", unit="task", disable=not progress)):
        idx = np.flatnonzero(s["task"] == t)
        y, tr, te, q = s["gold"][idx], split[idx] == "train", split[idx] == "test", question[idx]
        if not tr.any() or not te.any():
            raise ValueError(f"{reader.path}: task {t!r} needs train and test samples")
        # The vision stage has its own width; projector and layers share d_model: one batched fit.
        vis = frame_view(reader.acts(key(VISION, FRAMES), idx))
        llm = np.stack([frame_view(reader.acts(key(h, FRAMES), idx)) for h in [PROJECTOR, *layers]])
        lst = np.stack([reader.acts(key(h, LAST), idx) for h in layers])
        if types is not None:
            ty = np.asarray(types)[idx]
            # The type starts with the question, so a type seen in the task's training
            # split is seen in its question's too: one mask for the per-question and
            # the pooled probes.
            rec = recurring(ty, tr, te, q)
            out["n_recurring"][ti] = rec.sum()
            out["n_recurring_types"][ti], out["n_test_types"][ti] = len(set(ty[rec])), len(set(ty[te]))
        for X, at, where, groups in ((vis, slice(0, 1), "frames", q), (llm, slice(1, None), "frames", q),
                                     (lst, slice(2, None), "last", None)):
            what = f"{t}/{'vision' if X is vis else where}"
            ok, Cs = probe_correct(X, y, tr, te, groups, factory, seeds, what)
            out[f"probe_{where}"][ti, :, at] = accuracy_over(ok, te)
            if types is not None:
                ok_c = control_correct(X, ty, y, tr, te, Cs, groups, factory, seeds, what)
                out[f"control_{where}"][ti, :, at] = accuracy_over(ok_c, te)
                out[f"probe_{where}_recurring"][ti, :, at] = accuracy_over(ok, rec)
                out[f"control_{where}_recurring"][ti, :, at] = accuracy_over(ok_c, rec)
    return {"tasks": tasks, **out}


def model_accuracy(task: np.ndarray, label: np.ndarray, pred: np.ndarray, tasks: list[str]) -> np.ndarray:
    """Accuracy per task [T] of predictions pred [N] against label [N]."""
    ok = np.asarray(label) == np.asarray(pred)
    return np.array([ok[np.asarray(task) == t].mean() for t in tasks])


# ---------------------------------------------------------------- results

PROBE_ARGS = ("C", "cv", "probe", "probe_seeds", "probe_tol")  # the probe stage's request
# Part of every probe request: a file whose T3 results predate the selectivity on
# recurring input types (version 1, no 'results' key) is refused by the probe
# stage with the difference named, and --overwrite redoes only the probes.
RESULTS_VERSION = 2


def probe_results(path, n_layers: int, request: dict, types: list[str], device: str = "cpu",
                  progress: bool = True) -> dict:
    """The probes and the model's accuracies from the per-unit arrays of a
    complete T3 file (no model needed) -> {name: (array, axes attrs)}, stored
    by the engine under /results/t3/. ``request``: PROBE_ARGS' values;
    ``types``: every sample's input type (``tasks.t3.input_type``), for the
    control tasks."""
    from analyses.run import stored
    from tracing.store import CacheReader

    reader = CacheReader(path)
    seeds = list(range(request["probe_seeds"]))
    factory = probe_factory(request["C"], request["cv"], request["probe"], device, request["probe_tol"])
    probes = run_probes(reader, n_layers, factory, seeds, progress, types)
    names = probes.pop("tasks")
    s = reader.samples
    split = np.array([reader.meta(i)["split"] for i in range(reader.n_samples)])
    test = np.flatnonzero(split == "test")
    task, label = np.asarray(s["task"]).astype(str)[test], np.asarray(s["gold"])[test]
    n_options = {t: len(reader.meta(i)["options"]) for i, t in zip(test, task)}
    res = {"tasks": names, **probes, "chance": np.array([1 / n_options[t] for t in names]),
           "n_test": np.array([(task == t).sum() for t in names])}
    extra = {"test_index": test, "input_type": np.array(types, dtype=str)}
    for form in FORMS:
        pred = stored(path, f"{form}_pred", fill=-1)[test, 0]
        res[f"{form}_acc"] = model_accuracy(task, label, pred, names)
        extra[f"{form}_pred"], extra[f"{form}_probs"] = pred, stored(path, f"{form}_probs")[test]
    for where in ("frames", "last"):
        res[f"selectivity_{where}"] = res[f"probe_{where}_recurring"] - res[f"control_{where}_recurring"]
    axes = {"model": reader.attrs.get("model"), "tasks": names, "stages": stage_names(n_layers), "seeds": seeds}
    return {name: (res[name], axes) for name in _STORED + _DERIVED} | {n: (a, axes) for n, a in extra.items()}


# ---------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    from analyses.cli import common_parser

    ap = common_parser("python -m analyses.t3", __doc__.split("\n\n")[0].replace("\n", " "))
    # The T3 data are the synthetic T3 tasks, sized by --samples: the shared
    # dataset flags do not apply (still parsed, so that a stray one is named).
    for act in ap._actions:
        if act.dest in ("dataset", "data_dir", "limit"):
            act.help = argparse.SUPPRESS
        elif act.dest == "tasks":
            act.help = f"comma-separated T3 tasks (default: all of {','.join(T3_TASKS)})"
        elif act.dest == "frames":
            act.help = "frames rendered per clip"
        elif act.dest == "out":
            act.help = ("HDF5 file of the run (features, answers, probe results) that notebooks/t3.ipynb reads "
                        "(default: cache/t3-<model>-synthetic.h5, in the repository's cache/ when run through "
                        "with-venv)")
    ap.set_defaults(limit=None, data_dir=None)
    ap.add_argument("--samples", type=int, default=96,
                    help="samples per task and split (a multiple of 12 balances every question and answer)")
    ap.add_argument("--size", type=int, default=32, help="frame side in pixels of the rendered clips")
    bgs, shapes = sorted(BACKGROUNDS), [*SHAPES, "any"]
    ap.add_argument("--train-background", default="black", choices=bgs,
                    help="background of the clips the probes are trained on")
    ap.add_argument("--test-background", default="black", choices=bgs,
                    help="background of the test clips; the paper shifts black -> white (a model trained on "
                         "black only, as the organism, then fails on the video itself)")
    ap.add_argument("--train-shape", default="square", choices=shapes,
                    help="shape of every object in the training clips (any: random)")
    ap.add_argument("--test-shape", default="circle", choices=shapes,
                    help="shape of every object in the test clips; another one = an object shift "
                         "(the paper's car -> cat)")
    ap.add_argument("--probe-seeds", type=int, default=len(PROBE_SEEDS),
                    help="probe seeds (each draws other cross-validation folds); accuracies are averaged over them")
    ap.add_argument("--C", type=float, default=None,
                    help="fixed inverse L2 penalty of the probes (default: chosen per layer by cross-validation)")
    ap.add_argument("--cv", type=int, default=3, help="cross-validation folds for choosing C")
    ap.add_argument("--probe-tol", type=float, default=1e-6,
                    help="probe solvers' stopping tolerance on the largest gradient entry (default: %(default)g; "
                         "scikit-learn's own 1e-4 stops wide, nearly separable probes at path-dependent points)")
    ap.add_argument("--probe", default="torch", choices=PROBES,
                    help="probe implementation: torch (all layers in one batched fit, on --device) or sklearn "
                         "(the reference, a loop of scikit-learn fits); the same estimator")
    ap.add_argument("--float16", action="store_true", help="store cached activations as float16")
    return ap


def check_folds(samples: list[Sample], cv: int) -> None:
    """Refuse, before any compute, a run whose probes cannot be cross-validated:
    every answer of every question (the probes' groups) needs at least ``cv``
    training samples, or the choice of C fails hours in."""
    from collections import Counter

    from analyses.run import UsageError

    if cv < 2:
        raise UsageError(f"--cv {cv}: need at least 2 folds")
    counts: dict = {}
    for s in samples:
        if s.meta["split"] == "train":
            counts.setdefault((s.task, s.question), Counter())[s.answer] += 1
    for (task, question), c in counts.items():
        if min(c.values()) < cv:
            raise UsageError(f"--samples: task {task!r}, question {question!r} has only {min(c.values())} training "
                             f"samples of one answer, fewer than --cv {cv} folds; raise --samples or lower --cv")


def prepare(argv):
    """The CLI arguments -> run.Prepared (model, declaration, dataset), in the
    driver and in every Ray worker. Checked before anything loads, in order:
    the flags, the output path, the model's name, then the data (whether
    its probes can be cross-validated)."""
    from analyses.cli import load_from_args, preflight
    from analyses.run import Prepared, UsageError

    a = build_parser().parse_args(argv)
    given = [f"{flag} {v}" for flag, v in (("--dataset", None if a.dataset == "synthetic" else a.dataset),
                                           ("--data-dir", a.data_dir), ("--limit", a.limit)) if v is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: T3 runs on its own synthetic tasks: use --tasks and --samples, not "
                         f"--dataset/--data-dir/--limit")
    tasks = a.tasks.split(",") if a.tasks else list(T3_TASKS)
    bad = [t for t in tasks if t not in T3_TASKS]
    if bad:
        raise UsageError(f"--tasks: unknown T3 task(s) {bad}; T3 tasks: {', '.join(T3_TASKS)}")
    if a.samples < 2:
        raise UsageError(f"--samples {a.samples}: need at least 2 per task")
    if a.probe_seeds < 1:
        raise UsageError(f"--probe-seeds {a.probe_seeds}: need at least 1")
    out = preflight("t3", a)
    shape = {"any": None}
    samples = t3_dataset(tasks, a.samples, a.seed, a.frames, a.size, a.train_background, a.test_background,
                         shape.get(a.train_shape, a.train_shape), shape.get(a.test_shape, a.test_shape))
    if a.C is None:  # C is chosen by cross-validation only then
        check_folds(samples, a.cv)
    lm = load_from_args(a)
    # What changes the stored arrays; the probe settings are the probe stage's request.
    data_cfg = {"tasks": tasks, "samples": a.samples, "seed": a.seed, "frames": a.frames, "size": a.size,
                "train_background": a.train_background, "test_background": a.test_background,
                "train_shape": a.train_shape, "test_shape": a.test_shape, "dtype": a.dtype}
    if a.video_pixels:
        data_cfg["video_pixels"] = list(a.video_pixels)
    a.samples_list = samples
    return Prepared(lm, declare(lm, samples, data_cfg, a.float16), "synthetic-t3", a, out)


def probe_request(a) -> dict:
    return {k: getattr(a, k) for k in PROBE_ARGS}


def finish(lm, out, samples: list[Sample], request: dict, device: str = "cpu", overwrite: bool = False,
           progress: bool = True) -> T3Result:
    """The probe stage on a complete file (skipped when it holds this
    request's results; another request needs ``overwrite``) -> T3Result."""
    from analyses.run import later_stage

    request = {**request, "results": RESULTS_VERSION}
    types = [input_type(s) for s in samples]
    later_stage(out, "t3", request,
                lambda: probe_results(out, lm.n_layers, request, types, device, progress), overwrite=overwrite)
    return load_results(out)


def run(lm, samples: list[Sample], out, C: float | None = None, cv: int = 3, probe: str = "torch",
        probe_seeds: int = len(PROBE_SEEDS), probe_tol: float = 1e-6, config: dict | None = None,
        float16: bool = False, device: str = "cpu", overwrite: bool = False, progress: bool = True) -> T3Result:
    """T3 on ``samples`` (``tasks.t3.t3_dataset``) into the HDF5 file ``out``:
    features and answers per sample on the run engine (resumable; another
    configuration refused unless ``overwrite``), then the probes. The probes
    can be redone with other settings on the same file (``overwrite``)
    without the model's forward passes. -> T3Result (``load_results(out)``)."""
    from analyses import run as engine

    engine.run(declare(lm, samples, config, float16), out, lm.name, lm.fingerprint, "synthetic-t3",
               overwrite=overwrite, progress=progress)
    request = {"C": C, "cv": cv, "probe": probe, "probe_seeds": probe_seeds, "probe_tol": probe_tol}
    return finish(lm, out, samples, request, device, overwrite, progress)


def main(argv=None) -> T3Result:
    from analyses import run as engine
    from analyses.cli import figures_dir
    from analyses.t3_figures import save_figures

    argv = sys.argv[1:] if argv is None else list(argv)
    p = prepare(argv)
    a = p.args
    engine.run(p.decl, p.out, p.lm.name, p.lm.fingerprint, p.dataset, **engine.engine_options(a, "analyses.t3", argv))
    res = finish(p.lm, p.out, a.samples_list, probe_request(a), a.device, a.overwrite, not a.no_progress)
    paths = save_figures(res, figures_dir(a, p.out))
    print(res.table())
    print(f"wrote {p.out}, {', '.join(paths)}", file=sys.stderr)
    return res


if __name__ == "__main__":
    from analyses.run import cli_boundary

    raise SystemExit(cli_boundary(main)())
