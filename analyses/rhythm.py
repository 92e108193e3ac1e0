"""WAAD / FAI, the preplan-and-anchor rhythm (Li et al. 2025), on the run engine.

    python -m analyses.rhythm                     # the reasoner on held-out word problems
    python -m analyses.rhythm --model organism    # the video organism on synthetic videos

    from analyses.rhythm import run
    res = run(lm, problems, "cache/rhythm.h5")    # -> summary dict (see ``summarize``)

One unit per prompt: the model writes its response (greedy by default,
sampled with ``--sample``; or ``--response reference``: the problem's own
solution, teacher-forced), then one more forward over prompt + response
computes, per layer and head, the head-span term, WAAD, the attention entropy
and FAI (``tracing.attention_stats``, streamed, exact), and the frame x frame
and span x span attention mass. The per-head ``[L, H, T]`` arrays are stored
(so head groups can be re-formed without the model) with the model's
next-token entropy, the tokens and, for word problems, which tokens later
steps read (the dependency graph) and where steps begin.

The rhythm itself (head groups, preplan and anchor tokens, their coupling,
FAI against the dependency graph, per-frame FAI) is a later stage over the
stored arrays (``summarize``); its thresholds are flags with the paper's
values as defaults, stored as the stage's request: other thresholds on a
complete file redo only that stage (``--overwrite``), without the model.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from analyses.rhythm_summary import THRESHOLDS, stage_results, summarize, table
from analyses.run import Declaration, SkipUnit, UsageError

RESPONSES = ("generated", "reference")
ROWS = ("response", "after-video")
PER_POSITION = ("span_term", "waad", "entropy")


# ---------------------------------------------------------------- one trace
def _extend(inputs: dict, new: list[int]) -> dict:
    """The prompt's inputs with the response tokens appended (every [1, T] entry:
    ids, attention mask 1, Qwen's token types 0 = text)."""
    T = inputs["input_ids"].shape[1]
    out = dict(inputs)
    add = torch.tensor([new], dtype=inputs["input_ids"].dtype)
    out["input_ids"] = torch.cat([inputs["input_ids"], add], 1)
    for k, v in inputs.items():
        if k != "input_ids" and torch.is_tensor(v) and v.dim() == 2 and v.shape == (1, T):
            fill = 1 if k == "attention_mask" else 0
            out[k] = torch.cat([v, torch.full((1, len(new)), fill, dtype=v.dtype)], 1)
    return out


def _generate(lm, inputs: dict, max_new_tokens: int, sample: bool, seed: int) -> list[int]:
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if sample:
        torch.manual_seed(seed)
    g = lm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=pad,
                          eos_token_id=tok.eos_token_id, **({"top_k": 0} if sample else {}))
    new = g[0, inputs["input_ids"].shape[1]:].tolist()
    return new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new


def text_trace(lm, problem, response: str, max_new_tokens: int, sample: bool, seed: int):
    """A word problem and its response -> (inputs, layout, extra arrays, meta)."""
    from tracing.traces import solve, trace_inputs

    if response == "reference":
        text = problem.solution
    elif sample:
        from tracing.traces import prompt_ids

        ids = torch.tensor([prompt_ids(lm.tokenizer, problem)])
        new = _generate(lm, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, max_new_tokens, True, seed)
        text = lm.tokenizer.decode(new, skip_special_tokens=True)
    else:
        text = solve(lm, lm.tokenizer, problem, max_new_tokens=max_new_tokens)
    inputs, layout = trace_inputs(lm.tokenizer, problem, text)
    T = layout.n_tokens
    start = layout.extra["solution"][0]
    sources = np.zeros(T, np.int8)
    deps = layout.extra.pop("deps", None)  # known when the response is the problem's own solution
    if deps:
        for srcs in deps.values():
            sources[srcs] = 1
    boundaries = np.zeros(T, np.int8)  # the first token of each solution line
    offsets = layout.extra["offsets"]
    full = problem.problem + "\n" + text
    for t in range(start, T):
        s = offsets[t][0]
        if s > 0 and full[s - 1] == "\n":
            boundaries[t] = 1
    meta = {"response": text, "reference": text == problem.solution, "answer": problem.answer,
            "has_deps": bool(deps)}
    spans = {"start": (0, 1), "problem": (1, start), "response": (start, T)}
    return inputs, layout, spans, {"sources": sources, "boundaries": boundaries}, meta


def read_traces(path) -> list[dict]:
    """A JSON-lines file of traces, one ``{"id", "prompt", "response"}`` object
    a line (strings; ids unique) -> the list; a bad line is an error naming it."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"--traces {path}: {e.strerror or e}") from None
    items, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"--traces {path}, line {n}: not JSON ({e.msg})") from None
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("id", "prompt", "response")):
            raise UsageError(f"--traces {path}, line {n}: needs string fields id, prompt and response")
        if item["id"] in seen:
            raise UsageError(f"--traces {path}, line {n}: id {item['id']!r} repeats")
        seen.add(item["id"])
        items.append({k: item[k] for k in ("id", "prompt", "response")})
    if not items:
        raise UsageError(f"--traces {path}: no traces in the file")
    return items


def file_trace(lm, item: dict):
    """A prompt and response read from a file: ``<s>`` (when the tokenizer has
    one), the prompt, a newline, the response; nothing is generated."""
    from tracing.layout import Span, TokenLayout

    tok = lm.tokenizer
    text = item["prompt"] + "\n" + item["response"]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    head = [tok.bos_token_id] if tok.bos_token_id is not None else []
    ids = head + enc["input_ids"]
    offsets = [(0, 0)] * len(head) + [tuple(o) for o in enc["offset_mapping"]]
    T = len(ids)
    start = next((t for t in range(len(head), T) if offsets[t][0] > len(item["prompt"])), T)
    if start >= T:
        raise SkipUnit(f"trace {item['id']!r}: empty response")
    boundaries = np.zeros(T, np.int8)
    for t in range(start, T):
        if offsets[t][0] > 0 and text[offsets[t][0] - 1] == "\n":
            boundaries[t] = 1
    layout = TokenLayout(n_tokens=T, system=Span(0, len(head)), video=Span(len(head), len(head)), frames=[],
                         frame_grid=(0, 0), question=Span(len(head), start), question_text=Span(len(head), start),
                         options=[], trailing=Span(start, T), last=T - 1, option_ids=[], extra={"solution": [start, T]})
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, T, dtype=torch.long)}
    spans = {"start": (0, len(head)), "problem": (len(head), start), "response": (start, T)}
    extra = {"sources": np.zeros(T, np.int8), "boundaries": boundaries}
    return inputs, layout, spans, extra, {"response": item["response"], "has_deps": False}


VIDEO_SPANS = ["system", "video", "question", "options", "trailing", "last", "response"]


def video_spans(layout, P: int, T: int) -> dict[str, tuple[int, int]]:
    """The prompt's layout spans, disjoint, plus the response [P, T): the
    question without its options, the options (first to last), what follows
    them up to the prompt's last token, and that token."""
    q, opts = layout.question_text, layout.options
    o = (opts[0].start, opts[-1].end) if opts else (q.end, q.end)
    last = layout.last
    return {"system": (layout.system.start, layout.system.end), "video": (layout.video.start, layout.video.end),
            "question": (q.start, q.end), "options": o, "trailing": (o[1], last), "last": (last, last + 1),
            "response": (P, T)}


def video_trace(lm, sample, max_new_tokens: int, do_sample: bool, seed: int):
    """A video question and the model's answer -> (inputs, layout, spans, extra arrays, meta)."""
    from tracing.inputs import build_sample_inputs

    try:
        inputs, layout = build_sample_inputs(lm, sample)
    except ValueError as e:
        raise SkipUnit(str(e)) from None
    new = _generate(lm, inputs, max_new_tokens, do_sample, seed)
    P = layout.n_tokens
    inputs = _extend(inputs, new)
    T = P + len(new)
    spans = video_spans(layout, P, T)
    meta = {"response": lm.tokenizer.decode(new, skip_special_tokens=True), "prompt_tokens": P}
    if sample.latents:  # rendered clips: the frames that decide the answer, as frame-group indices
        from tasks.synthetic import informative_frames

        inf = informative_frames(sample)
        if inf is not None:
            groups = sorted({(f.start, f.end) for f in layout.frames})
            meta["informative"] = sorted({groups.index((layout.frames[f].start, layout.frames[f].end))
                                          for f in inf if f < len(layout.frames)})
    return inputs, layout, spans, {}, meta


def next_token_entropy(logits: torch.Tensor) -> np.ndarray:
    """Entropy (nats) of the model's next-token distribution at each position [T]."""
    lp = torch.log_softmax(logits.double(), -1)
    return (-(lp.exp() * lp).sum(-1)).float().numpy()


# ---------------------------------------------------------------- the declaration
def declare(lm, units, window: int = 10, horizons=("end",), rows: str | None = None, response: str = "generated",
            max_new_tokens: int | None = None, sample: bool = False, seed: int = 0, perturb: int | None = None,
            config: dict | None = None) -> Declaration:
    """The rhythm statistics of every unit (``tasks.reasoning.Problem``s for a
    text model, video ``Sample``s for a video model) as an engine declaration.
    perturb: high/low-FAI token pairs per trace for the perturbation test
    (``analyses.rhythm_perturb``; default 1 for text, 0 for video)."""
    from tasks.reasoning import Problem, problem_id
    from tracing.attention_stats import StatsSpec, attention_stats
    from tracing.store import SampleMeta
    from tracing.traces import MAX_NEW_TOKENS, prompt_ids

    from_file = bool(units) and isinstance(units[0], dict)
    text = from_file or (bool(units) and isinstance(units[0], Problem))
    rows = rows or ("response" if text else "after-video")
    if rows not in ROWS:
        raise UsageError(f"--rows {rows!r}: choose from {', '.join(ROWS)}")
    if text and rows != "response":
        raise UsageError(f"--rows {rows}: a text trace has no video; its rows are the response")
    if response not in RESPONSES:
        raise UsageError(f"--response {response!r}: choose from {', '.join(RESPONSES)}")
    if from_file:
        response = "file"
    elif not text and response == "reference":
        raise UsageError("--response reference: only word problems have a reference solution")
    max_new = max_new_tokens or (MAX_NEW_TOKENS if text else 8)
    pairs = (1 if text else 0) if perturb is None else perturb
    if pairs < 0:
        raise UsageError(f"--perturb {pairs}: must be >= 0")
    spec0 = StatsSpec(window=window, horizons=horizons)  # validates the flags before any compute
    horizons = [h.name for h in spec0.horizons]
    L, H = lm.n_layers, lm.text_config.num_attention_heads

    if from_file:
        T_max = max(len(lm.tokenizer(u["prompt"] + "\n" + u["response"], add_special_tokens=False)["input_ids"])
                    for u in units) + 1
        metas = [SampleMeta(u["id"], "file", -1, -1, {"prompt": u["prompt"]}) for u in units]
        n_frames, span_names = 0, ["start", "problem", "response"]
    elif text:
        prompt_len = max(len(prompt_ids(lm.tokenizer, p)) for p in units)
        longest = max(len(lm.tokenizer(p.solution, add_special_tokens=False)["input_ids"]) for p in units)
        T_max = prompt_len + max(max_new, longest) + 1
        metas = [SampleMeta(problem_id(p), p.family, -1, -1, {"problem": p.problem, "length": p.length})
                 for p in units]
        n_frames, span_names = 0, ["start", "problem", "response"]
    else:
        from tracing.inputs import build_sample_inputs

        sizes = []
        for s in units:
            try:
                _, lay = build_sample_inputs(lm, s)
                sizes.append((lay.n_tokens, len(lay.frame_groups)))
            except ValueError:
                sizes.append((0, 0))
        T_max = max(n for n, _ in sizes) + max_new
        n_frames = max(f for _, f in sizes)
        metas = [SampleMeta(s.id, s.task, int(s.answer), -1, {"options": s.options, "question": s.question})
                 for s in units]
        span_names = VIDEO_SPANS

    shapes = {n: ((L, H, T_max), "float32") for n in PER_POSITION}
    for h in horizons:
        shapes[f"fai_{h}"] = ((L, H, T_max), "float32")
        shapes[f"fai_count_{h}"] = ((T_max,), "float32")
    shapes.update({"tokens": ((T_max,), "int32"), "rows": ((T_max,), "int8"), "next_entropy": ((T_max,), "float32"),
                   "span_mass": ((L, H, len(span_names), len(span_names)), "float32")})
    if n_frames:
        shapes["frame_mass"] = ((L, H, n_frames, n_frames), "float32")
    if text:
        shapes.update({"sources": ((T_max,), "int8"), "boundaries": ((T_max,), "int8")})
    if pairs:
        from analyses.rhythm_perturb import COLUMNS

        shapes["perturb"] = ((pairs, len(COLUMNS)), "float32")

    def compute(i):
        u = units[i]
        if from_file:
            inputs, layout, spans, extra, meta = file_trace(lm, u)
            rowmask = np.arange(layout.n_tokens) >= spans["response"][0]
        elif text:
            inputs, layout, spans, extra, meta = text_trace(lm, u, response, max_new, sample, seed + i)
            rowmask = np.arange(layout.n_tokens) >= spans["response"][0]
        else:
            inputs, layout, spans, extra, meta = video_trace(lm, u, max_new, sample, seed + i)
            rowmask = np.arange(inputs["input_ids"].shape[1]) >= (
                spans["response"][0] if rows == "response" else layout.video.end)
        T = inputs["input_ids"].shape[1]
        if T > T_max:
            raise SkipUnit(f"trace of {T} tokens exceeds the {T_max} planned")
        frames = sorted({(s.start, s.end) for s in layout.frames})
        spec = StatsSpec(rows=rowmask, window=window, horizons=horizons, frames=frames, spans=spans)
        with torch.no_grad(), attention_stats(lm, spec) as st:
            out = lm.model(**{k: v.to(lm.device) if torch.is_tensor(v) else v for k, v in inputs.items()})
        arrays = st.numpy()
        for h in horizons:
            arrays[f"fai_count_{h}"] = st.fai_count(h).astype(np.float32)
        if not n_frames:
            arrays.pop("frame_mass")
        arrays.update(tokens=inputs["input_ids"][0].numpy().astype(np.int32), rows=rowmask.astype(np.int8),
                      next_entropy=next_token_entropy(out.logits[0].cpu()), **extra)
        if pairs:  # FAI of this trace's own global heads (top 30% of its head spans) picks the tokens
            from analyses import rhythm_metrics as rm
            from analyses.rhythm_perturb import perturb as perturb_trace

            _, glob = rm.head_groups(rm.head_span(arrays["span_term"], rowmask))
            fai_t = rm.group_mean(arrays[f"fai_{horizons[0]}"], glob)
            arrays["perturb"] = perturb_trace(lm, arrays["tokens"], out.logits[0].cpu(), fai_t, rowmask, pairs)
        lay = layout.to_dict()
        lay["extra"] = {k: v for k, v in lay["extra"].items() if k != "offsets"}  # large, and rebuilt from tokens
        meta.update(spans={k: list(v) for k, v in spans.items()}, frames=[list(f) for f in frames])
        return arrays, lay, meta

    cfg = {"window": window, "horizons": horizons, "rows": rows, "response": response, "max_new_tokens": max_new,
           "sample": sample, "perturb": pairs, "spans": list(span_names), **(config or {})}
    return Declaration("rhythm", cfg, metas, compute, shapes=shapes, max_json_bytes=65536,
                       describe="WAAD / FAI statistics per trace")


# ---------------------------------------------------------------- the CLI
def build_parser() -> argparse.ArgumentParser:
    from analyses.cli import common_parser, user_path

    ap = common_parser("python -m analyses.rhythm", "WAAD / FAI (the preplan-and-anchor rhythm): attention "
                       "statistics of the model's own traces, streamed and exact, on the run engine.", limit=8,
                       text_datasets=True)
    ap.set_defaults(model="reasoner", dataset=None)
    for act in ap._actions:  # the shared flag's help, with this analysis' own default
        if act.dest == "dataset":
            act.help += " (default: reasoning for a text model, synthetic for a video model)"
    ap.add_argument("--response", default="generated", choices=RESPONSES,
                    help="what the model reads after the prompt: its own generated response, or (word problems) "
                         "the reference solution, teacher-forced")
    ap.add_argument("--traces", default=None, metavar="FILE.jsonl", type=user_path,
                    help="read prompts and responses from a JSON-lines file ({\"id\", \"prompt\", \"response\"} "
                         "a line) instead of a dataset: text models; nothing is generated")
    ap.add_argument("--sample", action="store_true",
                    help="sample the response (temperature 1, seeded by --seed and the unit) instead of greedy")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="longest response (default: 256 for word problems, 8 for videos)")
    ap.add_argument("--rows", default=None, choices=ROWS,
                    help="the rows R that FAI averages over: the response, or everything after the video "
                         "(default: response for text, after-video for video models)")
    ap.add_argument("--perturb", type=int, default=None,
                    help="perturbation test: pairs of high- and low-FAI tokens per trace replaced by the model's "
                         "runner-up token, the rest regenerated (default: 1 for text models, 0 for video)")
    ap.add_argument("--window", type=int, default=10, help="WAAD's window W in tokens")
    ap.add_argument("--horizons", default="end",
                    help="FAI horizons to store, comma-separated: v1 = [10, 50], v2 = [10, 100], end = [10, end]")
    g = ap.add_argument_group("the rhythm (a later stage: other values on a complete file need only --overwrite)")
    g.add_argument("--local", type=float, default=0.3, help="fraction of heads with the smallest span: local group")
    g.add_argument("--global", dest="global_", type=float, default=0.3,
                   help="fraction of heads with the largest span: global group")
    g.add_argument("--preplan", type=float, default=0.4, help="top fraction of |WAAD_t - WAAD_t+1|: preplan tokens")
    g.add_argument("--anchor", type=float, default=0.4, help="top fraction of FAI: anchor tokens")
    g.add_argument("--head-layers", default="all", choices=["all", "middle"],
                   help="layers the head groups come from: all, or 5 evenly spaced in [L/3, 2L/3] (as in the paper's "
                        "RL method)")
    g.add_argument("--horizon", default=None, help="the stored horizon the rhythm uses (default: the first)")
    g.add_argument("--draws", type=int, default=1000, help="random token sets of the baseline")
    return ap


def prepare(argv):
    """CLI arguments -> run.Prepared, in the driver and in every Ray worker."""
    from analyses.cli import load_data, load_from_args, preflight, run_config
    from analyses.run import Prepared
    from tracing.registry import resolve

    a = build_parser().parse_args(argv)
    if a.window < 1:
        raise UsageError(f"--window {a.window}: must be >= 1")
    if a.max_new_tokens is not None and a.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {a.max_new_tokens}: must be >= 1")
    horizons = [h.strip() for h in a.horizons.split(",") if h.strip()]
    from tracing.attention_stats import HORIZONS

    bad = [h for h in horizons if h not in HORIZONS]
    if bad or not horizons:
        raise UsageError(f"--horizons {a.horizons!r}: choose from {', '.join(HORIZONS)}")
    resolve(a.model)
    text_model = a.model == "reasoner" or a.model.startswith("tiny-llama")
    if a.traces:
        a.dataset = "file"
    elif a.dataset is None:
        a.dataset = "reasoning" if text_model else "synthetic"
    out = preflight("rhythm", a)
    if a.traces:
        units = read_traces(a.traces)
    elif a.dataset == "reasoning":
        from tasks.reasoning import problem_set

        if a.limit is None:
            raise UsageError("--limit all: the word problems are generated; give a number per family")
        try:
            units = problem_set(a.tasks.split(",") if a.tasks else None, a.limit, a.seed + 1000)  # held out
        except KeyError as e:
            raise UsageError(f"--tasks: {e.args[0]}") from None
    else:
        units = load_data(a).samples
    lm = load_from_args(a)
    is_text = lm.family.frame_tokens is None
    if is_text != (a.dataset in ("reasoning", "file")):
        raise UsageError(f"--model {a.model} is a {'text' if is_text else 'video'} model and --dataset {a.dataset} "
                         f"is {'video' if a.dataset not in ('reasoning', 'file') else 'text'}")
    keep = ("response", "sample", "max_new_tokens", "perturb", "rows", "window", "horizons", "local", "global_", "preplan",
            "anchor", "head_layers", "horizon", "draws")
    config = {k: v for k, v in run_config(a).items() if k not in keep}
    decl = declare(lm, units, a.window, horizons, a.rows, a.response, a.max_new_tokens, a.sample, a.seed,
                   a.perturb, config)
    return Prepared(lm, decl, a.dataset, a, out)


def request_of(a) -> dict:
    return {**THRESHOLDS, "local": a.local, "global_": a.global_, "preplan": a.preplan, "anchor": a.anchor,
            "layers": a.head_layers, "horizon": a.horizon, "draws": a.draws, "seed": a.seed}


def main(argv=None) -> dict:
    from analyses import run as engine
    from analyses.cli import figures_dir

    argv = sys.argv[1:] if argv is None else list(argv)
    p = prepare(argv)
    engine.run(p.decl, p.out, p.lm.name, p.lm.fingerprint, p.dataset,
               **engine.engine_options(p.args, "analyses.rhythm", argv))
    request = request_of(p.args)
    res = summarize(p.out, request)
    engine.later_stage(p.out, "rhythm", request, lambda: stage_results(res), overwrite=p.args.overwrite)
    paths = save_figures(res, figures_dir(p.args, p.out), p.lm.tokenizer)
    print(table(res))
    print(f"wrote {p.out}, {', '.join(map(str, paths))}", file=sys.stderr)
    return res


def save_figures(res: dict, folder, tokenizer) -> list:
    """The figures of analyses/rhythm_figures.py from a summary."""
    from pathlib import Path

    from analyses import rhythm_figures as rf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    u = max(res["units"], key=lambda x: int(x["rows"].sum()))
    rows = u["rows"]
    toks = [tokenizer.decode([t]) for t in u["tokens"][rows]]
    rf.token_strip(toks, u["waad_t"][rows], u["fai_t"][rows], u["preplan"][rows], u["anchor"][rows],
                   path=folder / "token_strip")
    rf.head_span_histogram(res["d"], res["local"], res["global"], path=folder / "head_span")
    paths += [folder / "token_strip.png", folder / "head_span.png"]
    if "frame_fai" in res:
        rf.frame_fai(res["frame_fai"], list(range(res["frame_fai"].shape[0])), path=folder / "frame_fai")
        names = list(res["frame_mass"])
        L = res["frame_fai"].shape[0]
        rf.frame_mass(np.stack([res["frame_mass"][n][L // 2] for n in names]), names, path=folder / "frame_mass")
        paths += [folder / "frame_fai.png", folder / "frame_mass.png"]
    return paths


if __name__ == "__main__":
    from analyses.run import cli_boundary

    raise SystemExit(cli_boundary(main)())
