"""The README's findings as text: one renderer per block, from stored result files.

Each renderer takes the paths of the runs it reads (RUNS: the CLI command
that makes each file) and returns the block's markdown, prose included, with
every comparison computed so the sentence follows the numbers. BLOCKS says
which runs each block reads; ``python -m analyses.findings`` (findings.py)
runs what is missing and writes the blocks into the README.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("cache/findings")  # relative to the repository root


@dataclass(frozen=True)
class Run:
    """One CLI run whose output file feeds blocks: ``python -m <module> <args>``."""
    module: str
    args: tuple[str, ...]
    out: str  # its result file, relative to the repository root
    takes_out: bool = True  # --out and --overwrite are passed (organism.evaluate writes where its --card says)
    figures: dict[str, str] = field(default_factory=dict)  # file in the run's figures folder -> docs/ name

    def command(self, rerun: bool = False) -> list[str]:
        cmd = [sys.executable, "-m", self.module, *self.args]
        if self.takes_out:
            cmd += ["--out", self.out, "--no-progress"] + (["--overwrite"] if rerun else [])
        return cmd

    def shown(self) -> str:
        """The command as a user types it (for the README and the messages)."""
        return " ".join(["python -m", self.module, *self.args])

    def figures_dir(self) -> Path:
        out = ROOT / self.out
        return out.with_name(out.stem + "_figures")


RUNS: dict[str, Run] = {
    "organism": Run("organism.evaluate", ("--card",), "organism/checkpoint/evaluation.json", takes_out=False),
    "reasoner": Run("organism.evaluate", ("--model", "reasoner", "--json", f"{RESULTS}/reasoner.json"),
                    f"{RESULTS}/reasoner.json", takes_out=False),
    "flow": Run("analyses.flow", ("--lens", "--find-pathways"), f"{RESULTS}/flow.h5",
                figures={"flow.png": "flow-organism.png", "pathways.png": "pathways-organism.png",
                         "lens_words.png": "lens-organism.png"}),
    "tomato": Run("analyses.tomato", ("--limit", "48"), f"{RESULTS}/tomato.h5"),
    "t3": Run("analyses.t3", (), f"{RESULTS}/t3.h5"),
    "rhythm_reasoner": Run("analyses.rhythm", ("--limit", "20"), f"{RESULTS}/rhythm-reasoner.h5",
                           figures={"token_strip.png": "rhythm-reasoner-strip.png"}),
    "rhythm_organism": Run("analyses.rhythm", ("--model", "organism", "--limit", "10"),
                           f"{RESULTS}/rhythm-organism.h5",
                           figures={"frame_fai.png": "rhythm-organism-frame-fai.png"}),
}


# ---------------------------------------------------------------- words and numbers

def _words(name) -> str:
    from analyses.plots import words

    return words(name)


def _quoted(task: str) -> str:
    """A task name that reads as a word in a sentence ("when" in quotes)."""
    return f'"{_words(task)}"' if task == "when" else _words(task)


def listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def pct(v: float, digits: int = 0) -> str:
    """A percentage change with its sign: -70%, +3%, 0%."""
    r = round(float(v), digits)
    if r == 0:
        return "0%"
    return f"{r:+.{digits}f}%".replace("+-", "-")


# ---------------------------------------------------------------- the organism

def organism_block(paths: dict) -> str:
    """The held-out accuracy paragraph, from organism.evaluate's JSON: every
    cell a mean over seed sets with its spread."""
    ev = json.loads((ROOT / paths["organism"]).read_text())
    tasks = ev["tasks"]
    spread = ev.get("spread", "sd")

    def cell(task, cond):
        c = tasks[task][cond]
        return f"{c['mean']:.2f} ± {c[spread]:.2f}"

    from organism.evaluate import ORDER_TASKS

    ordered = [t for t in tasks if t not in ("order3", "referring", "when")]
    extra = [t for t in ("order3", "referring", "when") if t in tasks]
    fall = [t for t in ORDER_TASKS if t in tasks]
    n_sets = len(ev["seed_sets"])
    first, train = ev["seed_sets"][0][0], ev.get("training_seeds")
    where = (f"render seeds from {first:,} up; training drew seeds {train[0]}-{train[1]:,}" if train
             else f"render seeds from {first:,} up")

    def near(cond):
        return [t for t in fall if tasks[t][cond]["mean"] <= tasks[t]["chance"] + 0.15]

    def odd(cond):  # the order tasks that stay above chance, and why order does
        out = [t for t in fall if t not in near(cond)]
        return (f"; {listing([_words(t) for t in out])} stay{'s' if len(out) == 1 else ''} above"
                + (": the two colours that appear in order of two are two of its four options, a coin flip"
                   " between them" if "order" in out else "")) if out else ""

    spread_name = "the sample standard deviation" if spread == "sd" else spread
    lines = [
        f"Held-out accuracy ({ev['n']} clips per task in each of {n_sets} disjoint seed sets, {where}; mean ± "
        f"{spread_name} across the sets; `{RUNS['organism'].shown()}` recomputes it (about 5 minutes a set on 2 "
        "cores; `--seed-sets 1` for one) and writes "
        "`organism/checkpoint/evaluation.json` and the model card, which has every set's values) with 8 ordered "
        "frames: " + ", ".join(f"{_words(t)} {cell(t, 'ordered')}" for t in ordered)
        + "; the extra T3 tasks " + ", ".join(f"{_quoted(t)} {cell(t, 'ordered')}" for t in extra) + ".",
        f"With one frame (the middle one), the order tasks fall to at most 0.15 above chance on "
        f"{len(near('single'))} of {len(fall)} ("
        + "; ".join(f"{_words(t)} {cell(t, 'single')} against {tasks[t]['chance']:.2f}" for t in fall)
        + f"{odd('single')}), and with the 8 frames shuffled on {len(near('shuffled'))} of {len(fall)} ("
        + "; ".join(f"{_words(t)} {cell(t, 'shuffled')}" for t in fall)
        + f"{odd('shuffled')}), while static colour stays at {cell('static_color', 'single')} with one frame and "
        f"{cell('static_color', 'shuffled')} shuffled.",
    ]
    moves = max(abs(v - w) for t in fall for c in ("single", "shuffled")
                for v in tasks[t][c]["per_set"] for w in tasks[t][c]["per_set"])
    moves_o = max(abs(v - w) for t in tasks for v in tasks[t]["ordered"]["per_set"]
                  for w in tasks[t]["ordered"]["per_set"])
    lines.append(f"The one-frame and shuffled cells move by up to {100 * moves:.0f} points between sets of "
                 f"{ev['n']}, the ordered ones by at most {100 * moves_o:.0f}: read them with their spread.")
    return _wrap(" ".join(lines))


def reasoner_block(paths: dict) -> str:
    """The reasoner's held-out exact match per family, at and beyond its training chain lengths."""
    table = json.loads((ROOT / paths["reasoner"]).read_text())
    n = listing(sorted({str(r["n"]) for row in table.values() for r in row.values()}))
    train = ", ".join(f"{f} {row['train']['answer']:.2f}" for f, row in table.items() if "train" in row)
    long = [row["long"]["answer"] for row in table.values() if "long" in row]
    text = (f"Held-out exact match of the final answer ({n} problems per family; `python -m organism.evaluate "
            f"--model reasoner` recomputes it, the model card in `organism/reasoner/checkpoint/` has the table, "
            f"the training and what was tried): {train} at the training chain lengths.")
    if long:
        worst = min(row["train"]["answer"] for row in table.values())
        text += (f" On longer chains than it was trained on it gets {min(long):.2f}-{max(long):.2f}"
                 + (": it has learnt the lengths it saw, not the procedure." if max(long) < worst / 2 else "."))
    return _wrap(text)


# ---------------------------------------------------------------- Map the Flow, pathways, lens

def _strongest(res: dict, edge: str) -> dict[str, tuple[float, str, int]]:
    """Per task: the most negative mean % change of the ground truth's
    probability over windows (kept samples), its window's layers, n."""
    from analyses.flow_figures import window_label

    L = res["flow"][edge].shape[1]
    out = {}
    for t in res["tasks"]:
        m = (res["task"] == t) & res["kept"]
        if not m.any():
            continue
        mean = np.nanmean(res["flow"][edge][m], 0)
        c = int(np.argmin(mean))
        out[t] = (float(mean[c]), window_label(c, res["k"], L), int(m.sum()))
    return out


def layers(label: str) -> str:
    """'layers 1-2' or 'layer 1'."""
    return f"layer{'s' if '-' in str(label) else ''} {label}"


def _cells(s: dict, tasks, digits: int = 0) -> str:
    return listing([f"{_quoted(t)} {pct(s[t][0], digits)} ({layers(s[t][1])})" for t in tasks])


def flow_block(paths: dict) -> str:
    """Map the Flow's findings on the organism: which edges carry the answer, where."""
    from analyses.flow import load_results

    return flow_text(load_results(ROOT / paths["flow"]))


def flow_text(res: dict) -> str:
    """flow_block's text from ``analyses.flow.load_results``' dict."""
    from tasks.synthetic import GROUNDING_TASKS, STATIC_TASKS

    one_frame = [t for t in res["tasks"] if t in GROUNDING_TASKS + STATIC_TASKS]
    multi = [t for t in res["tasks"] if t not in one_frame]
    cf, vq, vl, ql = (_strongest(res, e) for e in ("cross_frame", "video_question", "video_last", "question_last"))
    n_kept, n = int(res["kept"].sum()), len(res["kept"])
    hurt = sorted([t for t in multi if cf[t][0] <= -20], key=lambda t: cf[t][0])
    barely = [t for t in multi if cf[t][0] > -10]
    one_max = max(abs(cf[t][0]) for t in one_frame) if one_frame else float("nan")
    b = [f"({n_kept} of {n} samples kept: those the model answers right; clean accuracy "
         f"{100 * res['accuracy']:.1f}%; `{RUNS['flow'].shown()}`.) Each number below is the strongest mean "
         "change of the right answer's probability over the windows, with the layers that window cuts."]
    b.append(f"- Cross-frame knockout hurts most on the tasks that compare frames: {_cells(cf, hurt)}; on "
             f"static colour and the grounding questions, which one frame answers, it stays "
             + (f"within {one_max:.1f}%" if one_max >= 0.05 else "at 0%") + ", as Map the Flow finds for video vs image-only models."
             + (f" It barely matters (less than 10%) for {_cells(cf, barely)}." if barely else ""))
    vl_first = [t for t in multi if vl[t][0] < vq[t][0]]
    top_vl = sorted(multi, key=lambda t: vl[t][0])[:5]
    vq_big = sorted([t for t in res["tasks"] if vq[t][0] <= -10], key=lambda t: vq[t][0])
    route = ("straight to the last position, more than through the question tokens"
             if len(vl_first) > len(multi) / 2 else "through the question tokens more than straight to the last position")
    b.append(f"- The organism carries video information {route} (video -/-> last hurts more than video -/-> "
             f"question on {len(vl_first)} of {len(multi)} multi-frame tasks; video -/-> last: "
             f"{_cells(vl, top_vl)}); video -/-> question lowers the answer's probability by 10% or more on "
             + (f"{_cells(vq, vq_big)} only." if vq_big else "no task.")
             + (" Map the Flow's 7B models route it through the question." if len(vl_first) > len(multi) / 2 else ""))
    half = [t for t in res["tasks"] if ql[t][0] <= -50]
    where = {}
    for t in half:
        where[ql[t][1]] = where.get(ql[t][1], 0) + 1
    common = max(where, key=where.get) if where else "-"
    b.append(f"- Question -/-> last lowers the answer's probability by half or more on {len(half)} of "
             f"{len(res['tasks'])} tasks, most of them ({where.get(common, 0)}) in the window cutting "
             f"{layers(common)}: the option letters live in the question.")
    return "\n".join(_wrap(x, indent="  " if x.startswith("- ") else "") for x in b)


def pathways_block(paths: dict) -> str:
    """The effective pathways found on the organism and the random control."""
    from analyses.flow import load_results
    from analyses.flow_figures import _pathway_rows

    res = load_results(ROOT / paths["flow"])
    if "pathways" not in res:
        raise ValueError(f"{paths['flow']}: no pathway results; rerun with --find-pathways")
    a = res["pathways"]["attrs"]
    rows = {r[0]: r for r in _pathway_rows(res)}
    g, n, full, p, rm, rsd, share = rows["all"]
    ranges = ", ".join(f"{k} = {layers(v)}" for k, v in _ranges(a["pathways"]).items())
    if a.get("random_control") == "per-layer":
        control = (f"in every layer {100 * a['random_ratio']:.1f}% of its causal edges among the positions from the "
                   "first video token on")
    else:
        control = "as many edges as the pathways cut, drawn uniformly over layers and positions"
    text = (f"**Effective pathways** (`python -m analyses.flow --find-pathways`, all {n} samples): the search "
            f"keeps {ranges}: {100 * p:.1f}% accuracy against {100 * full:.1f}% for the full model, with "
            f"{100 * share:.1f}% of the causal edges, against {100 * rm:.1f}% ± {100 * rsd:.1f} when {control} are "
            f"cut at random instead (`--random-control {a.get('random_control', 'uniform')}`; mean ± sd over "
            f"{len(a.get('seeds', []))} seeds).")
    if "VL" in _ranges(a["pathways"]):
        from tracing.store import CacheReader

        trace, t_attrs = CacheReader(ROOT / paths["flow"]).result("pathways/search")
        widest = [i for i, st in enumerate(t_attrs["steps"]) if st == "widest"]  # three ranges first, then four
        three = float(trace[widest[0], t_attrs["columns"].index("accuracy")]) if widest else None
        text += (" The paper's three ranges (cross-frame, video -> question, question -> last, everything else "
                 "cut) could not keep the accuracy within the tolerance"
                 + (f" (at best {100 * three:.1f}%)" if three is not None else "")
                 + ", so a fourth range keeping video -> last joined: the organism routes video to the last "
                 "position directly.")
    return _wrap(text)


def _ranges(spec) -> dict[str, str]:
    if isinstance(spec, dict):
        return {k: str(v) for k, v in spec.items()}
    return dict(part.split("=", 1) for part in str(spec).split(","))


def lens_block(paths: dict) -> str:
    """Which word lists the logit lens finds on video tokens, at which depth."""
    from analyses import lens

    lres = lens.load_results(ROOT / paths["flow"], prefix="lens")
    c = lres["word"]["embed"]
    names = list(c["lists"])
    shares = {w: np.asarray(c["shares"][i], float) for i, w in enumerate(names)}
    parts = [f"{_words(w)} " + " ".join(f"{v:.2f}" for v in s) for w, s in shares.items()]
    peak = {w: int(np.nanargmax(s)) for w, s in shares.items()}
    text = ("**Logit lens on video tokens** (`--lens`; the residual stream entering each layer read against "
            "the input embedding, top-1 word counted in word lists, row-normalised; entry 0 is the projector "
            f"output): the share of each list's hits by entry, {'; '.join(parts)}.")
    if {"spatial", "temporal"} <= set(shares):
        s, t = shares["spatial"], shares["temporal"]
        order = ("the paper's spatial-early, temporal-later order in miniature" if peak["spatial"] < peak["temporal"]
                 else "not the paper's spatial-early, temporal-later order")
        text += (f" Spatial words peak at entry {peak['spatial']} ({s[peak['spatial']]:.2f}), temporal words at "
                 f"entry {peak['temporal']} ({t[peak['temporal']]:.2f}; {t[0]:.2f} at the projector output): "
                 f"{order}.")
    return _wrap(text)


# ---------------------------------------------------------------- TOMATO

def tomato_block(paths: dict) -> str:
    """The TOMATO ablation table on synthetic data and what it shows."""
    import warnings

    from analyses.tomato import load_results
    from analyses.tomato_metrics import metric_rows

    ab = load_results(ROOT / paths["tomato"])
    with warnings.catch_warnings():  # an undefined kappa / tau is shown as "undefined" in the table
        warnings.simplefilter("ignore")
        rows = [r for r in metric_rows([ab]) if r["group"] != "all"]
    m = ab.config.get("frames", 8)
    n = listing(sorted({str(r["n"]) for r in rows}))

    def f(v):
        return "undefined" if v is None or np.isnan(v) else f"{v:.0f}"

    head = (f"**TOMATO ablations** (`{RUNS['tomato'].shown()}`, synthetic, {n} questions per task, m = {m} frames, "
            f"single frame = the first (TOMATO's code), {len(ab.shuffled_names)} shuffle seeds; kappa = multi-frame "
            "gain, tau = frame-order sensitivity, in %, with bootstrap 95% intervals in the output table; A_rev = "
            "frames reversed):")
    table = [f"| task | A_1 | A_{m} | A_shuffled | A_rev | kappa | tau |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {_words(r['group'])} | {r['acc_first']:.1f} | {r['acc_multi']:.1f} | {r['acc_shuffled']:.1f} "
                     f"| {r['acc_reversed']:.1f} | {f(r['kappa'])} | {f(r['tau'])} |")
    by = {r["group"]: r for r in rows}
    temporal = [g for g in by if g != "static_color"]
    flips = [g for g in temporal if by[g]["acc_reversed"] <= 10 and by[g]["acc_multi"] >= 90]
    survive = [g for g in temporal if by[g]["acc_reversed"] >= 90]
    first = [g for g in temporal if by[g]["acc_first"] >= 80]
    order_loss = [g for g in temporal if by[g]["acc_multi"] - by[g]["acc_shuffled"] >= 25]
    prose = (f"With the frames shuffled, {listing([_quoted(g) for g in order_loss])} lose 25 points or more; "
             f"reversed, {listing([_quoted(g) for g in flips])} answer the opposite (A_rev 10% or less), while "
             f"{listing([_quoted(g) for g in survive])} survive reversal (90% or more)")
    if "static_color" in by:
        s = by["static_color"]
        prose += (f"; the static control stays at {s['acc_first']:.0f} / {s['acc_multi']:.0f} / "
                  f"{s['acc_shuffled']:.0f} / {s['acc_reversed']:.0f} (A_1 / A_{m} / A_shuffled / A_rev)")
    prose += "."
    if first:
        prose += (f" {listing([_words(g).capitalize() if i == 0 else _words(g) for i, g in enumerate(first)])} "
                  f"{'is' if len(first) == 1 else 'are'} answered from the first frame alone (A_1 80% or more; the "
                  "renderer starts a growing object small and a brightening one dark): a shortcut of the synthetic "
                  "task that kappa exposes, while tau still shows whether the model reads the order when it has it.")
    return "\n".join([_wrap(head), "", *table, "", _wrap(prose)])


# ---------------------------------------------------------------- T3

def t3_block(paths: dict) -> str:
    """The T3 probe table on the organism and the bottleneck it shows."""
    from analyses.t3_results import load_results

    return t3_text(load_results(ROOT / paths["t3"]))


def t3_text(r) -> str:
    """t3_block's text from a ``T3Result``."""
    proj = r.stages.index("projector")
    frames, last = r.probe_frames.mean(1), r.probe_last.mean(1)  # [T, S], over seeds
    spread = {w: r.selectivity_spread(w) for w in ("frames", "last")}
    R = len(r.seeds)
    layers = [s for s in r.stages if s.startswith("layer")]

    def sel(where, i, s):
        m, sd = spread[where]["mean"][i, s], spread[where]["sd"][i, s]
        return "-" if not np.isfinite(m) else f"{100 * m:.0f} ± {100 * sd:.0f}" if R > 1 else f"{100 * m:.0f}"

    def task_name(i):
        t = _words(r.tasks[i])
        return f"{t} (chance {100 * r.chance[i]:.0f})" if r.tasks[i] == "when" else t

    n = listing(sorted({str(int(x)) for x in r.n_test}))
    head = (f"**T3 probes** (`{RUNS['t3'].shown()}`, {n} samples per task and split, squares in training and "
            f"circles in test; torch probes with cross-validated C, {R} seed{'s' if R > 1 else ''}; accuracy in %). Video positions = the "
            "frames' mean tokens concatenated in order; last = the last position; sel = selectivity, probe minus "
            "control-task accuracy (Hewitt and Liang; each input type, the question with its objects' colours and "
            "sides, given a random fixed label), both scored on the test questions whose input type also occurs "
            "in training, since only those control labels can be memorised (the recurring column counts them); "
            + (f"mean ± standard deviation over the {R} probe seeds (each draws its own folds and control labels)"
               if R > 1 else "one probe seed, so no spread") + ". Probe accuracies are over all test questions:")
    rows = [f"| task | model (video) | model (text) | projector probe (sel) | best layer, video positions (sel) | "
            f"last position, layers 0-{len(layers) - 1} | recurring |", "|---|---|---|---|---|---|---|"]
    best_at = {}
    for i, t in enumerate(r.tasks):
        b = int(np.argmax(frames[i, proj:])) + proj  # the projector or a layer
        best_at[t] = b
        where = "projector" if b == proj else r.stages[b]
        rec = f"{int(r.n_recurring[i])} of {int(r.n_test[i])}" if r.n_recurring[i] >= 0 else "-"
        rows.append(f"| {task_name(i)} | {100 * r.video_acc[i]:.0f} | {100 * r.text_acc[i]:.0f} | "
                    f"{100 * frames[i, proj]:.0f} ({sel('frames', i, proj)}) | {100 * frames[i, b]:.0f}, {where} "
                    f"({sel('frames', i, b)}) | " + " ".join(f"{100 * v:.0f}" for v in last[i, proj + 1:])
                    + f" | {rec} |")
    prose = []
    # The bottleneck: readable at the video positions, not at the last position, and the model's answers
    for i, t in enumerate(r.tasks):
        at_video = frames[i, proj:].max()
        at_last = np.nanmax(last[i, proj + 1:])
        if at_video - at_last >= 0.15 and at_video - r.video_acc[i] >= 0.15:
            prose.append(f"The paper's bottleneck appears on {_quoted(t)}: the answer is linearly readable at the "
                         f"video positions ({100 * frames[i, proj:].min():.0f}-{100 * at_video:.0f}% from the "
                         f"projector on), but at most {100 * at_last:.0f}% at the last position, and the model "
                         f"answers {100 * r.video_acc[i]:.0f}%.")
    gains = [f"{_quoted(t)} (projector {100 * frames[i, proj]:.0f}% -> {100 * frames[i, best_at[t]]:.0f}% at "
             f"{r.stages[best_at[t]]})" for i, t in enumerate(r.tasks)
             if best_at[t] != proj and frames[i, best_at[t]] - frames[i, proj] >= 0.05]
    if gains:
        prose.append(f"The LLM adds what per-frame features lack on {listing(gains)}.")
    low = [i for i, t in enumerate(r.tasks) if np.isfinite(spread["frames"]["mean"][i, proj])
           and spread["frames"]["mean"][i, proj] < 0.3 and frames[i, proj] > 0.9]
    if low:
        prose.append(f"{listing([_words(r.tasks[i]) for i in low]).capitalize()} "
                     f"{'has' if len(low) == 1 else 'have'} low selectivity at the projector ("
                     + listing([f"{_words(r.tasks[i])} {sel('frames', i, proj)} points with "
                                f"{int(r.n_test_types[i])} input types" for i in low])
                     + "): their few input types are easy to memorise, and the first frame already gives the answer "
                     "away (see TOMATO above).")
    return "\n".join([_wrap(head), "", *rows, "", _wrap(" ".join(prose))])


# ---------------------------------------------------------------- WAAD / FAI

def _p(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def rhythm_block(paths: dict) -> str:
    """The rhythm statistics of the reasoner and the organism beside the paper's."""
    from analyses.rhythm_summary import summarize

    t = summarize(ROOT / paths["rhythm_reasoner"])
    v = summarize(ROOT / paths["rhythm_organism"])
    tf, vf = t["peak_follow"][1], v["peak_follow"][1]
    tc, vc = t["coupling"].by_k[1], v["coupling"].by_k[1]
    te, ve = t["entropy_at_peaks"], v["entropy_at_peaks"]
    layers = {l: o for l, o in t["auroc"].items() if not np.isnan(o[0])}
    best = max(layers, key=lambda l: layers[l][0]) if layers else None
    auroc = f"{t['auroc_all']:.2f}" + (f" (layer {best}: {layers[best][0]:.2f} vs random heads {layers[best][1]:.2f})"
                                      if best is not None else "")
    b = t["boundary"]
    pt = t.get("perturbation")
    perturb = (f"{_p(pt['high_more'])} of {pt['n']} trials (as much {_p(pt['tie'])}, less {_p(pt['low_more'])})"
               if pt else "-")
    inf = v.get("informative", {})
    inf_tasks = [k for k in ("direction", "count", "when") if k in inf]
    share = (" / ".join(f"{100 * inf[k]['share']:.1f}" for k in inf_tasks) + "% (uniform "
             + " / ".join(f"{100 * inf[k]['uniform']:.1f}" for k in inf_tasks) + "; same frames in static clips "
             + " / ".join(f"{100 * inf[k]['control_share']:.1f}" for k in inf_tasks) + ")") if inf_tasks else "-"
    n_t, n_v = len(t["units"]), len(v["units"])
    head = (f"What it finds, and how weak it is (`{RUNS['rhythm_reasoner'].shown()}`: {n_t} greedy traces of the "
            f"reasoner; `{RUNS['rhythm_organism'].shown()}`: {n_v} organism traces):")
    rows = [
        "| statistic | reasoner | organism | paper (Qwen3-4B-Base, GSM8K) |",
        "|---|---|---|---|",
        f"| FAI peak at or right after a WAAD peak (k = 1) | {_p(tf.observed)} vs random {_p(tf.baseline)} | "
        f"{_p(vf.observed)} vs {_p(vf.baseline)} | 52.53% vs 36.87% |",
        f"| anchor \"locally dominated\" (k = 1, median thresholds) | {_p(tc.observed)} vs {_p(tc.baseline)} | "
        f"{_p(vc.observed)} vs {_p(vc.baseline)} | (not given) |",
        f"| next-token entropy at preplan tokens vs elsewhere | {te.observed:.4f} vs {te.baseline:.4f} | "
        f"{ve.observed:.3f} vs {ve.baseline:.3f} | 0.3608 vs 0.2386 |",
        f"| FAI of global heads ranking the tokens later steps read (AUROC) | {auroc} | - | - |",
        f"| preplan tokens on a step's first token | {_p(b.observed)} vs {_p(b.baseline)} of response tokens | - | - |",
        f"| high-FAI change alters the rollout more than low-FAI change | {perturb} | - | 87.14% |",
        f"| FAI share of the informative frames ({' / '.join(inf_tasks)}) | - | {share} | - |",
    ]
    # The reasoner: is there a rhythm at all?
    follows = tf.observed > tf.baseline
    sep = t["auroc_all"] >= 0.6
    read = "the tokens its later steps read (the dependency graph of `tasks/reasoning.py`)"
    ranks = (f"separates {read} from the rest" if sep else f"barely separates {read} from the rest"
             if t["auroc_all"] >= 0.5 else f"ranks {read} below the rest, not above")  # AUROC < 0.5
    r = [f"- The reasoner's anchors come {'more' if follows else 'less'} often after a WAAD peak than random "
         f"tokens do ({_p(tf.observed)} vs {_p(tf.baseline)}, p = {tf.p_value:.3f}), and FAI {ranks} "
         f"(AUROC {t['auroc_all']:.2f} overall)."]
    if not follows and not sep:
        r.append(f"It shows no preplan-and-anchor rhythm: a 1.1M-parameter model that is nearly certain of every "
                 f"token (next-token entropy {te.baseline:.4f} nats away from preplan tokens) has no \"planning\" "
                 "tokens to find; the paper's effect is a property of large models, and this toy does not "
                 "reproduce it.")
    r.append(f"Preplan tokens fall at step starts {'more' if b.observed > b.baseline else 'less'} often than "
             f"chance ({_p(b.observed)} vs {_p(b.baseline)}).")
    if pt:
        way = "goes the paper's way" if pt["high_more"] > pt["low_more"] else "runs the other way from the paper's"
        pv = pt["p_value"]
        r.append(f"The perturbation test {way}: changing the highest-FAI token alters the rest of the rollout more "
                 f"than changing the lowest-FAI token in {_p(pt['high_more'])} of trials, less in "
                 f"{_p(pt['low_more'])} (sign test over the trials that differ: p = {pv:.3f}"
                 f"{'' if pv < 0.05 else ', not significant'}; the paper: 87.14%).")
    o = [f"- The organism's anchors follow WAAD peaks {'more' if vf.observed > vf.baseline else 'less'} often than "
         f"random tokens ({_p(vf.observed, 0)} vs {_p(vf.baseline, 0)}, p = {vf.p_value:.3f} over "
         f"{vf.n_draws:,} random sets), but its rows are the question and one answer letter, so this is the "
         "prompt's structure as much as reasoning."]
    if "frame_fai" in v:
        peaks = np.argmax(v["frame_fai"], 1)
        top = int(np.bincount(peaks).argmax())
        o.append(f"Its per-frame FAI peaks at frame {top + 1} of {v['frame_fai'].shape[1]} in "
                 f"{int((peaks == top).sum())} of {len(peaks)} layers (`docs/rhythm-organism-frame-fai.png`).")
    if inf_tasks:
        above = [k for k in inf_tasks if inf[k]["share"] > inf[k]["control_share"] + 0.03]  # 3 points: noise
        o.append("Against the frames the renderer makes informative (`tasks.synthetic.informative_frames`: the "
                 "first and last frames of direction, the flashes of count, the target's third of \"when\"), FAI "
                 + ("gives them no more (within 3 points) than the same frames get in static clips, where they "
                    "decide nothing (" if not above
                    else f"gives them more (by over 3 points) than static clips on {listing(above)} only (")
                 + ", ".join(f"{_words(k)} {_p(inf[k]['share'])} vs {_p(inf[k]['control_share'])}" for k in inf_tasks)
                 + ")" + (": FAI follows position, not content, on this model." if not above else "."))
    return "\n".join([_wrap(head), "", *rows, "", _wrap(" ".join(r), indent="  "), _wrap(" ".join(o), indent="  ")])


# ---------------------------------------------------------------- README blocks

BLOCKS: dict[str, tuple[tuple[str, ...], Callable[[dict], str]]] = {
    "organism": (("organism",), organism_block),
    "reasoner": (("reasoner",), reasoner_block),
    "flow": (("flow",), flow_block),
    "pathways": (("flow",), pathways_block),
    "lens": (("flow",), lens_block),
    "tomato": (("tomato",), tomato_block),
    "t3": (("t3",), t3_block),
    "rhythm": (("rhythm_reasoner", "rhythm_organism"), rhythm_block),
}


def _wrap(text: str, width: int = 78, indent: str = "") -> str:
    import textwrap

    return textwrap.fill(text, width=width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)
