"""T3's results as one object: ``T3Result`` (what the table and the figures
show) and ``load_results`` (it, back from a T3 file's /results/t3/). The run
and the probes that fill it are ``analyses/t3.py``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.synthetic import T3_ASPECTS

_ARRAYS = ("probe_frames", "probe_last", "video_acc", "text_acc", "chance", "n_test")
_PER_SEED = ("probe_frames", "probe_last", "control_frames", "control_last", "probe_frames_recurring",
             "probe_last_recurring", "control_frames_recurring", "control_last_recurring")  # [T, R, S]
_COUNTS = ("n_recurring", "n_recurring_types", "n_test_types")  # [T]
_STORED = _ARRAYS + _PER_SEED[2:] + _COUNTS  # what load_results reads back
_DERIVED = ("selectivity_frames", "selectivity_last")  # stored too, for readers of the file


@dataclass
class T3Result:
    """Everything the T3 figures show.

    tasks [T]; stages [S] ('vision', 'projector', 'layer 0', ...); seeds [R].
    probe_frames [T, R, S]: probe accuracy at the video positions (frames
        concatenated); probe_last [T, R, S]: at the last position (NaN for the
        vision and projector stages, which have no last position).
    control_frames, control_last [T, R, S]: the same probes' accuracy on the
        control task over all test questions (NaN where none was run); capped
        where test types do not occur in training: not for selectivity.
    probe_frames_recurring, probe_last_recurring, control_frames_recurring,
        control_last_recurring [T, R, S]: the same probes scored on the test
        questions whose input type recurs in training (NaN where a task has
        none); selectivity_frames / selectivity_last [T, R, S] = probe -
        control on those questions, per seed.
    video_acc, text_acc, chance [T]: the model's accuracy with the video, with
        the captions, and 1 / n_options; n_test [T] test questions per task.
    n_recurring [T]: test questions whose input type occurs in the task's
        training split; n_recurring_types, n_test_types [T]: distinct input
        types among those and among all test questions (-1: not computed).
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
    probe_frames_recurring: np.ndarray = None
    probe_last_recurring: np.ndarray = None
    control_frames_recurring: np.ndarray = None
    control_last_recurring: np.ndarray = None
    n_recurring: np.ndarray = None
    n_recurring_types: np.ndarray = None
    n_test_types: np.ndarray = None

    def __post_init__(self):
        for name in _PER_SEED[2:]:
            if getattr(self, name) is None:
                setattr(self, name, np.full_like(self.probe_frames, np.nan, dtype=float))
        for name in _COUNTS:
            if getattr(self, name) is None:
                setattr(self, name, np.full(len(self.tasks), -1))

    @property
    def selectivity_frames(self) -> np.ndarray:
        """[T, R, S]: probe - control accuracy on the recurring test questions, per seed."""
        return self.probe_frames_recurring - self.control_frames_recurring

    @property
    def selectivity_last(self) -> np.ndarray:
        return self.probe_last_recurring - self.control_last_recurring

    def selectivity_spread(self, where: str = "frames") -> dict[str, np.ndarray]:
        """Selectivity over the probe seeds, [T, S] each: 'mean', 'sd' (population
        standard deviation, numpy's std), 'min', 'max'; NaN where there is none."""
        sel = getattr(self, f"selectivity_{where}")
        out = {}
        with np.errstate(invalid="ignore"):
            for name, f in (("mean", np.mean), ("sd", np.std), ("min", np.min), ("max", np.max)):
                out[name] = f(sel, axis=1)
        return out

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
        the last position of the last layer (means over seeds, all test
        questions), each probe followed by its selectivity ('sel': probe -
        control-task accuracy, both on the test questions whose input type
        recurs in training; mean ± sd over seeds), then the recurring count;
        a footnote says what the numbers are."""
        import textwrap

        proj = self.stages.index("projector")
        spread = {w: self.selectivity_spread(w) for w in ("frames", "last")}
        R = len(self.seeds)

        def sel(where, i, s):
            m, sd = spread[where]["mean"][i, s], spread[where]["sd"][i, s]
            if not np.isfinite(m):
                return "—"
            return f"{100 * m:.1f}" + (f"±{100 * sd:.1f}" if R > 1 else "")

        rows = [f"{'task':<12}{'chance':>7}{'video':>7}{'text':>7}{'enc':>7}{'sel':>11}{'proj':>7}{'sel':>11}"
                f"{'best layer (frames)':>22}{'sel':>11}{'last layer (last)':>19}{'sel':>11}  recurring"]
        for i, t in enumerate(self.tasks):
            f, la = self.probe_frames[i].mean(0), self.probe_last[i].mean(0)
            b = proj + 1 + int(np.argmax(f[proj + 1:]))
            best = f"{100 * f[b]:.1f} ({self.stages[b]})"
            rec = (f"{int(self.n_recurring[i])}/{int(self.n_test[i])} "
                   f"({int(self.n_recurring_types[i])}/{int(self.n_test_types[i])} types)"
                   if self.n_recurring[i] >= 0 else "not computed")
            rows.append(f"{t:<12}{100 * self.chance[i]:7.1f}{100 * self.video_acc[i]:7.1f}"
                        f"{100 * self.text_acc[i]:7.1f}{100 * f[0]:7.1f}{sel('frames', i, 0):>11}"
                        f"{100 * f[proj]:7.1f}{sel('frames', i, proj):>11}{best:>22}{sel('frames', i, b):>11}"
                        f"{100 * la[-1]:19.1f}{sel('last', i, -1):>11}  {rec}")
        spread_note = (f"mean ± standard deviation over the {R} probe seeds (numpy's std, ddof 0; each seed draws "
                       "its own cross-validation folds and control labels)" if R > 1 else
                       "one probe seed, so no spread")
        note = ("Probe columns: accuracy on all test questions, mean over seeds. sel: selectivity in points, probe "
                "minus control-task accuracy (Hewitt and Liang), both scored on the recurring test questions only, "
                "those whose input type also occurs in training (recurring: those questions / all test "
                f"questions, and their input types / all test input types); {spread_note}.")
        none = [t for i, t in enumerate(self.tasks) if self.n_recurring[i] == 0]
        if none:
            note += f" —: no test input type of {', '.join(none)} occurs in training, so no selectivity."
        elif not np.isfinite(self.selectivity_frames).any():
            note += " —: no control task was run."
        return "\n".join(rows + textwrap.wrap(note, 110))


def load_results(path) -> T3Result:
    """The T3Result stored in the file at path (its config: the run's
    configuration and the probe request)."""
    from tracing.store import CacheReader

    r = CacheReader(path)
    if "t3/request" not in r.results():
        raise KeyError(f"{path}: no T3 results (it holds {r.results()}); run python -m analyses.t3 first")
    missing = [n for n in _STORED if f"t3/{n}" not in r.results()]
    if missing:
        raise KeyError(f"{path}: T3 results of an older version (no {', '.join(missing)}: written before "
                       "selectivity was scored on recurring input types); rerun the same python -m analyses.t3 "
                       "command with --overwrite, which redoes only the probes")
    arrays = {}
    for name in _STORED:
        arrays[name], axes = r.result(f"t3/{name}")
    config = {**r.config, **r.result("t3/request")[1]}
    return T3Result(model=axes["model"], tasks=list(axes["tasks"]), stages=list(axes["stages"]),
                    seeds=list(axes["seeds"]), config=config, **arrays)
