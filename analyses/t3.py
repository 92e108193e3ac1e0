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
temporal property rather than to memorising what the clips show.

    python -m analyses.t3 --model organism --samples 96

Capture once, probe many times: activations go to an HDF5 cache (resumable;
--cache), probe and model accuracies to the results file (--out) that
notebooks/t3.ipynb redraws the figures from. An --out (or --cache) written by
another configuration is refused, naming the file and what differs;
--overwrite replaces it: the run writes ``<stem>.next.h5`` beside it and moves
it over the old file only once complete, so a killed run leaves the old file
as it was (and a rerun with --overwrite resumes the capture beside it). A
file of this very configuration is resumed.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.synthetic import BACKGROUNDS, SHAPES, T3_ASPECTS, T3_TASKS, TASKS, caption_prompt
from tasks.t3 import input_type, t3_dataset
from probes.groups import PROBE_SEEDS, PROBES, control_accuracy, probe_accuracy, probe_factory
from tasks.types import Sample

VISION, PROJECTOR = "vision.hook_out", "projector.hook_out"
FRAMES, LAST = "frame_mean", "last"  # the two position sets, as in tracing/capture.py
def _sample_meta(s: Sample):
    from tracing.store import SampleMeta

    return SampleMeta(s.id, s.task, int(s.answer), int(s.answer),
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


def _open_cache(lm, samples: list[Sample], path, config: dict, float16: bool = False):
    """CacheWriter of the T3 cache at path: created, or resumed if it holds
    this run; CacheMismatchError if another run wrote it."""
    from tracing.store import CacheWriter

    cfg = {**config, "hooks": t3_hooks(lm), "positions": [FRAMES, LAST]}
    return CacheWriter.open(path, lm.name, lm.fingerprint, "synthetic-t3", cfg,
                            [_sample_meta(s) for s in samples], float16=float16)


def capture_t3(lm, samples: list[Sample], path, config: dict, float16: bool = False, progress: bool = True):
    """Stream sample_features of every sample into the HDF5 cache at path
    (resumes a run with the same model and config; refuses another). -> CacheReader."""
    from tqdm import tqdm

    from tracing.inputs import build_sample_inputs
    from tracing.store import CacheReader

    hooks = t3_hooks(lm)
    with _open_cache(lm, samples, path, config, float16) as w:
        for i in tqdm(w.pending(), desc=f"capture -> {path}", unit="sample", disable=not progress):
            inputs, layout = build_sample_inputs(lm, samples[i])
            w.write_sample(i, _features(lm, inputs, layout, hooks), layout.to_dict())
    return CacheReader(path)


# ---------------------------------------------------------------- the model's own answers

def model_answers(lm, samples: list[Sample], form: str, batch_size: int = 16, progress: bool = True):
    """The model's answers to samples -> tracing.scoring.Scores (probs [N, K], pred [N]).

    form: 'video' (frames shown) or 'text' (the per-frame captions in place of
    the video, the paper's textual test). Inputs are built batch by batch so
    that memory stays flat in the number of samples.
    """
    from tqdm import tqdm

    from tracing.inputs import build_sample_inputs
    from tracing.scoring import Scores, score

    if form not in ("video", "text"):
        raise ValueError(f"form={form!r}: expected 'video' or 'text'")
    probs, preds = [], []
    k = max(len(s.options) for s in samples)
    for b0 in tqdm(range(0, len(samples), batch_size), desc=f"model answers ({form})", unit="batch",
                   disable=not progress):
        chunk = samples[b0: b0 + batch_size]
        items = [build_sample_inputs(lm, s, context=caption_prompt(s) if form == "text" else None) for s in chunk]
        sc = score(lm, items, batch_size)
        p = np.full((len(chunk), k), np.nan)
        p[:, : sc.probs.shape[1]] = sc.probs
        probs.append(p)
        preds.append(sc.pred)
    return Scores(np.concatenate(probs), np.concatenate(preds))


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


@dataclass
class T3Result:
    """Everything the T3 figures show.

    tasks [T]; stages [S] ('vision', 'projector', 'layer 0', ...); seeds [R].
    probe_frames [T, R, S]: probe accuracy at the video positions (frames
        concatenated); probe_last [T, R, S]: at the last position (NaN for the
        vision and projector stages, which have no last position).
    control_frames, control_last [T, R, S]: the same probes' accuracy on the
        control task (NaN where none was run); selectivity_frames /
        selectivity_last = probe - control.
    video_acc, text_acc, chance [T]: the model's accuracy with the video, with
        the captions, and 1 / n_options; n_test [T] test questions per task.
    """

    model: str
    tasks: list[str]
    stages: list[str]
    seeds: list[int]
    probe_frames: np.ndarray
    probe_last: np.ndarray
    video_acc: np.ndarray
    text_acc: np.ndarray
    chance: np.ndarray
    n_test: np.ndarray
    config: dict
    control_frames: np.ndarray = None
    control_last: np.ndarray = None

    def __post_init__(self):
        for name in ("control_frames", "control_last"):
            if getattr(self, name) is None:
                setattr(self, name, np.full_like(self.probe_frames, np.nan, dtype=float))

    @property
    def selectivity_frames(self) -> np.ndarray:
        return self.probe_frames - self.control_frames

    @property
    def selectivity_last(self) -> np.ndarray:
        return self.probe_last - self.control_last

    def aspects(self) -> dict[str, dict[str, np.ndarray]]:
        """Paper aspect -> {'video', 'text', 'probe_projector', 'probe_last_layer': [R] or scalar},
        each the mean over the aspect's tasks present here (aspects without one are left out)."""
        proj = self.stages.index("projector")
        out = {}
        for aspect, names in T3_ASPECTS.items():
            idx = [self.tasks.index(t) for t in names if t in self.tasks]
            if not idx:
                continue
            out[aspect] = {
                "video": float(np.mean(self.video_acc[idx])),
                "text": float(np.mean(self.text_acc[idx])),
                "probe_projector": self.probe_frames[idx, :, proj].mean(0),
                "probe_last_layer": self.probe_last[idx, :, -1].mean(0),
                "chance": float(np.mean(self.chance[idx])),
            }
        return out

    def table(self) -> str:
        """Per task text table, percent: chance, the model (video / captions), and
        probes at the video positions (vision, projector, best LLM layer) and at
        the last position of the last layer, each probe followed by its
        selectivity (accuracy - control-task accuracy, 'sel'). Means over seeds."""
        proj = self.stages.index("projector")
        rows = [f"{'task':<12}{'chance':>7}{'video':>7}{'text':>7}{'enc':>7}{'sel':>6}{'proj':>7}{'sel':>6}"
                f"{'best layer (frames)':>22}{'sel':>6}{'last layer (last)':>19}{'sel':>6}"]
        for i, t in enumerate(self.tasks):
            f, la = self.probe_frames[i].mean(0), self.probe_last[i].mean(0)
            sf, sl = self.selectivity_frames[i].mean(0), self.selectivity_last[i].mean(0)
            b = proj + 1 + int(np.argmax(f[proj + 1:]))
            best = f"{100 * f[b]:.1f} ({self.stages[b]})"
            rows.append(f"{t:<12}{100 * self.chance[i]:7.1f}{100 * self.video_acc[i]:7.1f}"
                        f"{100 * self.text_acc[i]:7.1f}{100 * f[0]:7.1f}{100 * sf[0]:6.1f}"
                        f"{100 * f[proj]:7.1f}{100 * sf[proj]:6.1f}{best:>22}{100 * sf[b]:6.1f}"
                        f"{100 * la[-1]:19.1f}{100 * sl[-1]:6.1f}")
        return "\n".join(rows)


def stage_names(n_layers: int) -> list[str]:
    return ["vision", "projector", *[f"layer {l}" for l in range(n_layers)]]


def run_probes(reader, n_layers: int, factory=None, seeds=PROBE_SEEDS, progress: bool = True, types=None):
    """Probe every task at every stage from a T3 cache -> dict of 'tasks' and,
    [T, R, S] each (see T3Result for the axes), 'probe_frames', 'probe_last',
    'control_frames', 'control_last'. types: the input type of every sample
    of the cache [n_samples] (input_type), or None: no control task (NaN)."""
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
    out = {name: np.full((len(tasks), R, S), np.nan)
           for name in ("probe_frames", "probe_last", "control_frames", "control_last")}
    for ti, t in enumerate(tqdm(tasks, desc="probes", unit="task", disable=not progress)):
        idx = np.flatnonzero(s["task"] == t)
        y, tr, te, q = s["label"][idx], split[idx] == "train", split[idx] == "test", question[idx]
        if not tr.any() or not te.any():
            raise ValueError(f"{reader.path}: task {t!r} needs train and test samples")
        # The vision stage has its own width; projector and layers share d_model: one batched fit.
        vis = frame_view(reader.acts(key(VISION, FRAMES), idx))
        llm = np.stack([frame_view(reader.acts(key(h, FRAMES), idx)) for h in [PROJECTOR, *layers]])
        lst = np.stack([reader.acts(key(h, LAST), idx) for h in layers])
        for X, at, where, groups in ((vis, slice(0, 1), "frames", q), (llm, slice(1, None), "frames", q),
                                     (lst, slice(2, None), "last", None)):
            what = f"{t}/{'vision' if X is vis else where}"
            acc, Cs = probe_accuracy(X, y, tr, te, groups, factory, seeds, what, return_C=True)
            out[f"probe_{where}"][ti, :, at] = acc
            if types is not None:
                out[f"control_{where}"][ti, :, at] = control_accuracy(
                    X, np.asarray(types)[idx], y, tr, te, Cs, groups, factory, seeds, what)
    return {"tasks": tasks, **out}


def model_accuracy(samples: list[Sample], pred: np.ndarray, tasks: list[str]) -> np.ndarray:
    """Accuracy per task [T] of predictions pred [N] for samples [N]."""
    task = np.array([s.task for s in samples])
    ok = np.array([s.answer for s in samples]) == np.asarray(pred)
    return np.array([ok[task == t].mean() for t in tasks])


# ---------------------------------------------------------------- results file

_ARRAYS = ("probe_frames", "probe_last", "video_acc", "text_acc", "chance", "n_test")
_CONTROL = ("control_frames", "control_last", "selectivity_frames", "selectivity_last")


def write_results(rf, res: T3Result, extra: dict | None = None) -> None:
    """Store res in a tracing.store.ResultsFile under /results/t3/ (and extra
    arrays {name: array} next to it), overwriting an earlier run's. The
    selectivity arrays are stored too, for readers other than load_results."""
    axes = {"model": res.model, "tasks": res.tasks, "stages": res.stages, "seeds": res.seeds}
    for name in _ARRAYS + _CONTROL:
        rf.write_result(f"t3/{name}", getattr(res, name), axes, overwrite=True)
    for name, arr in (extra or {}).items():
        rf.write_result(f"t3/{name}", arr, axes, overwrite=True)


def load_results(path) -> T3Result:
    """The T3Result stored in the results file at path."""
    from tracing.store import CacheReader

    r = CacheReader(path)
    if "t3/probe_frames" not in r.results():
        raise KeyError(f"{path}: no T3 results (it holds {r.results()}); run python -m analyses.t3 first")
    arrays = {}
    for name in _ARRAYS:
        arrays[name], axes = r.result(f"t3/{name}")
    for name in _CONTROL[:2]:  # absent from files written before control tasks: NaN
        if f"t3/{name}" in r.results():
            arrays[name] = r.result(f"t3/{name}")[0]
    return T3Result(model=axes["model"], tasks=axes["tasks"], stages=axes["stages"], seeds=axes["seeds"],
                    config=r.config, **arrays)


# ---------------------------------------------------------------- figures

def plot_layers(res: T3Result):
    """Probe accuracy against stage/layer, one panel per task: frames
    concatenated and last position (mean, 95% band over seeds), the same
    probes on the control task dashed (selectivity is the gap), the model's
    video and text accuracies as horizontal lines, chance dotted."""
    from analyses.plots import COLORS as C, band, panels

    fig, axes = panels(len(res.tasks), width=3.1, height=2.3, ncols=3)
    x = np.arange(len(res.stages))
    for i, (ax, t) in enumerate(zip(axes, res.tasks)):
        ax.axvspan(-0.5, 1.5, color="0.92", lw=0, zorder=0)  # the vision side: encoder and projector
        ax.text(0.5, 2, "vision", ha="center", va="bottom", fontsize=6.5, color="0.35")
        ax.text(1.5 + len(res.stages[2:]) / 2, 2, "LLM", ha="center", va="bottom", fontsize=6.5, color="0.35")
        band(ax, x, 100 * res.probe_frames[i], "probe: video positions (frames concatenated)", C[0])
        band(ax, x[2:], 100 * res.probe_last[i][:, 2:], "probe: last position", C[2])
        if np.isfinite(res.control_frames[i]).any():
            ax.plot(x, 100 * res.control_frames[i].mean(0), color=C[0], lw=1, ls="--",
                    label="control task: video positions")
            ax.plot(x[2:], 100 * res.control_last[i][:, 2:].mean(0), color=C[2], lw=1, ls="--",
                    label="control task: last position")
        ax.axhline(100 * res.video_acc[i], color=C[1], lw=1.2, label="model, video")
        ax.axhline(100 * res.text_acc[i], color=C[3], lw=1.2, ls="--", label="model, captions (text)")
        ax.axhline(100 * res.chance[i], color="0.5", lw=0.8, ls=":", label="chance")
        ax.set_title(t)
        ax.set_ylim(0, 102)
        ax.set_xticks(x, ["enc", "proj", *[s.split()[-1] for s in res.stages[2:]]], fontsize=7)
        ax.set_xlabel("stage / LLM layer")
        ax.set_ylabel("accuracy (%)")
    h, lab = axes[0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(h, lab, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8,
               title=f"T3 probes vs answers: {res.model}", title_fontsize=9)
    return fig


def plot_aspects(res: T3Result):
    """The T3 bar chart: per aspect, the model with the video, its LLM with the
    captions, and probes (projector output; last layer at the last position);
    probe bars show the 95% interval over seeds, the dotted line chance."""
    import matplotlib.pyplot as plt

    from analyses.plots import COLORS as C, STYLE, mean_ci

    plt.rcParams.update(STYLE)
    asp = res.aspects()
    names = list(asp)
    bars = [("video", "model, video", C[1]), ("text", "model, captions", C[3]),
            ("probe_projector", "probe, projector", C[0]), ("probe_last_layer", "probe, last layer", C[2])]
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(names), 2.6))
    w = 0.8 / len(bars)
    for j, (k, label, color) in enumerate(bars):
        xs = np.arange(len(names)) + (j - (len(bars) - 1) / 2) * w
        vals = [asp[a][k] for a in names]
        if np.ndim(vals[0]) and len(res.seeds) > 1:  # per-seed values: mean and interval
            m, lo, hi = (np.array(v) for v in zip(*[mean_ci(100 * np.asarray(v)) for v in vals]))
            ax.bar(xs, m, w, color=color, label=label, yerr=[m - lo, hi - m], capsize=2,
                   error_kw={"lw": 0.8})
        else:
            ax.bar(xs, [100 * np.mean(v) for v in vals], w, color=color, label=label)
    for i, a in enumerate(names):
        ax.hlines(100 * asp[a]["chance"], i - 0.45, i + 0.45, colors="0.3", linestyles=":", lw=1)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8,
              title=f"T3 by aspect: {res.model}", title_fontsize=9)
    fig.tight_layout()
    return fig


def save_figures(res: T3Result, folder) -> list[str]:
    """t3_layers and t3_aspects as PNG and PDF in folder; returns the paths."""
    from analyses.plots import save

    folder = Path(folder)
    return save(plot_layers(res), folder / "t3_layers") + save(plot_aspects(res), folder / "t3_aspects")


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
            act.help = f"comma-separated T3 tasks; None: all of {','.join(T3_TASKS)}"
        elif act.dest == "frames":
            act.help = "frames rendered per clip"
        elif act.dest == "out":
            act.help = "HDF5 results file that notebooks/t3.ipynb reads; None: cache/t3-<model>-synthetic.h5"
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
                    help="fixed inverse L2 penalty of the probes; None: chosen per layer by cross-validation")
    ap.add_argument("--cv", type=int, default=3, help="cross-validation folds for choosing C")
    ap.add_argument("--probe-tol", type=float, default=1e-6,
                    help="probe solvers' stopping tolerance (largest gradient entry; scikit-learn's default 1e-4 "
                         "stops wide, nearly separable probes at path-dependent points)")
    ap.add_argument("--probe", default="torch", choices=PROBES,
                    help="probe implementation: torch (all layers in one batched fit, on --device) or sklearn "
                         "(the reference, a loop of scikit-learn fits); the same estimator")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass when scoring answers")
    ap.add_argument("--float16", action="store_true", help="store cached activations as float16")
    ap.add_argument("--cache", default=None,
                    help="HDF5 activation cache, resumed if it exists; None: --out with .acts.h5")
    return ap


def beside(path: Path) -> Path:
    """Where an --overwrite run writes until it completes: <stem>.next<suffix>."""
    return path.with_name(f"{path.stem}.next{path.suffix}")


def writable(path: Path, open_file, overwrite: bool) -> Path:
    """The file to write instead of path, decided before any compute.

    open_file(p) creates p or reopens it, raising CacheMismatchError when p
    holds another run. path itself when it is new or holds this very run (to
    resume); with overwrite and path holding another run, beside(path),
    resumed if an earlier --overwrite run of this configuration was killed
    there, started afresh if one of yet another was; the caller moves it over
    path once complete. Without overwrite such a path is refused: SystemExit
    naming the file and what differs.
    """
    from tracing.store import CacheMismatchError

    try:
        open_file(path)
        return path
    except CacheMismatchError as err:
        if not overwrite:
            raise SystemExit(f"error: {err}\nor pass --overwrite to replace it (the old file stays until the "
                             "new run completes)") from None
    nxt = beside(path)
    try:
        open_file(nxt)
    except CacheMismatchError:
        nxt.unlink()
        open_file(nxt)
    return nxt


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


def main(argv=None) -> T3Result:
    from analyses.cli import default_out, figures_dir, load_from_args, run_config
    from tracing.store import ResultsFile

    ap = build_parser()
    a = ap.parse_args(argv)
    if a.dataset != "synthetic" or a.data_dir is not None or a.limit is not None:
        ap.error("T3 runs on its own synthetic tasks: use --tasks and --samples, not --dataset/--data-dir/--limit")
    from analyses.cli import check_flags

    check_flags(a)
    tasks = a.tasks.split(",") if a.tasks else list(T3_TASKS)
    bad = [t for t in tasks if t not in T3_TASKS]
    if bad:
        ap.error(f"unknown T3 task(s) {bad}; T3 tasks: {', '.join(T3_TASKS)}")
    if a.samples < 2:
        ap.error(f"--samples {a.samples}: need at least 2 per task")
    progress = not a.no_progress

    out = Path(default_out("t3", a))
    cache = Path(a.cache) if a.cache else out.with_suffix(".acts.h5")
    figures = figures_dir(a, out)
    shape = {"any": None}
    # The results file's identity: what changes the numbers (not paths, batch size or progress bars).
    config = {k: v for k, v in run_config(a).items() if k not in ("no_progress", "figures", "cache", "batch_size")}
    samples = t3_dataset(tasks, a.samples, a.seed, a.frames, a.size, a.train_background, a.test_background,
                         shape.get(a.train_shape, a.train_shape), shape.get(a.test_shape, a.test_shape))
    if a.C is None:  # C is chosen by cross-validation only then
        check_folds(samples, a.cv)
    lm = load_from_args(a)
    # Both files are checked before the long part, so that one of another run is refused at once.
    metas = [_sample_meta(s) for s in samples]
    rf_path = writable(out, lambda p: ResultsFile.open(p, lm.name, lm.fingerprint, "synthetic-t3", config, metas),
                       a.overwrite)
    rf = ResultsFile(rf_path)
    data_cfg = {"tasks": tasks, "samples": a.samples, "seed": a.seed, "frames": a.frames, "size": a.size,
                "train_background": a.train_background, "test_background": a.test_background,
                "train_shape": a.train_shape, "test_shape": a.test_shape, "dtype": a.dtype}
    cache_path = writable(cache, lambda p: _open_cache(lm, samples, p, data_cfg, a.float16).close(),
                          a.overwrite)

    reader = capture_t3(lm, samples, cache_path, data_cfg, a.float16, progress)
    seeds = list(range(a.probe_seeds))
    types = [input_type(s) for s in samples]
    factory = probe_factory(a.C, a.cv, a.probe, a.device, a.probe_tol)
    probes = run_probes(reader, lm.n_layers, factory, seeds, progress, types)
    names = probes.pop("tasks")

    test = [s for s in samples if s.meta["split"] == "test"]
    video = model_answers(lm, test, "video", a.batch_size, progress)
    text = model_answers(lm, test, "text", a.batch_size, progress)
    res = T3Result(
        model=lm.name, tasks=names, stages=stage_names(lm.n_layers), seeds=seeds, **probes,
        video_acc=model_accuracy(test, video.pred, names), text_acc=model_accuracy(test, text.pred, names),
        chance=np.array([1 / len(TASKS[t].options) for t in names]),
        n_test=np.array([sum(s.task == t for s in test) for t in names]),
        config=config,
    )
    index = np.array([i for i, s in enumerate(samples) if s.meta["split"] == "test"])
    write_results(rf, res, {"test_index": index, "video_probs": video.probs, "video_pred": video.pred,
                            "text_probs": text.probs, "text_pred": text.pred,
                            "input_type": np.array(types, dtype=str)})
    for done, final in ((cache_path, cache), (rf_path, out)):  # the results last: they need the cache
        if done != final:
            os.replace(done, final)
    paths = save_figures(res, figures)
    print(res.table())
    print(f"wrote {out} (results), {cache} (activations), {', '.join(paths)}", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
