"""Activations of a model on a dataset into an HDF5 cache, on the run engine.

    python -m analyses.capture --model organism --hooks resid_post --positions frame_mean
    python -m analyses.capture --model reasoner --dataset reasoning --backend transformer_lens --positions all

    from analyses.capture import capture_dataset
    reader = capture_dataset(lm, samples, ["resid_post"], "cache/acts.h5", positions="frame_mean")

One unit per sample (a video question, or with ``--dataset reasoning`` a
word problem of tasks/reasoning.py read with its reference solution,
``tracing.traces.trace_inputs``): its activations at the chosen hooks and positions
(``tracing.capture.capture``), its TokenLayout. The largest sample is captured
first: its shapes bound the file's. Resume, refusal of another configuration,
``--overwrite`` and the lock are the engine's (analyses/run.py).
"""
from __future__ import annotations

from analyses.run import Declaration, SkipUnit, cli_boundary, run


def declare(lm, samples, hooks, positions: str = "all", layers=None, float16: bool = False,
            config: dict | None = None, backend: str = "nnsight", context=None) -> Declaration:
    """The capture of ``hooks`` on every sample as an engine declaration.

    samples: video samples, or ``tasks.reasoning.Problem``s (a text model
    reads each with its reference solution). context: None, or a function
    sample -> text shown in place of the video (e.g.
    ``tasks.synthetic.caption_prompt``, the T3 text form): what a text-only
    model reads. backend: see ``tracing.capture.capture``."""
    from tasks.reasoning import Problem, problem_id
    from tracing.capture import capture
    from tracing.hooks import expand
    from tracing.inputs import build_sample_inputs
    from tracing.store import SampleMeta
    from tracing.traces import trace_inputs

    if backend == "transformer_lens":
        from tracing.hooked import check_text_model

        check_text_model(lm)  # before anything is built or written
    names = expand(lm, hooks, layers)

    def build(s):
        if isinstance(s, Problem):
            return trace_inputs(lm.tokenizer, s)
        return build_sample_inputs(lm, s, context=None if context is None else context(s))

    def meta(s):
        if isinstance(s, Problem):
            return SampleMeta(problem_id(s), s.family, -1, -1, {"problem": s.problem, "solution": s.solution,
                                                                 "answer": s.answer, "length": s.length})
        return SampleMeta(s.id, s.task, int(s.answer), -1, {"options": s.options, "question": s.question})

    # Layouts first (no forward; milliseconds a sample): a sample that cannot be
    # built is a bad item, and the largest one is captured first.
    sizes = []
    for s in samples:
        try:
            sizes.append(build(s)[1].n_tokens)
        except ValueError:
            sizes.append(-1)
    units = [meta(s) for s in samples]
    cfg = {"hooks": names, "positions": positions, **(config or {})}
    if backend != "nnsight":
        cfg["backend"] = backend

    def compute(i):
        try:
            inputs, layout = build(samples[i])
        except ValueError as e:
            raise SkipUnit(str(e)) from None
        acts = capture(lm, inputs, layout, names, positions, backend=backend)
        # .numpy() shares the tensor's memory: no copy for float32 on the CPU
        return {k: v.detach().float().cpu().numpy() for k, v in acts.items()}, layout.to_dict(), {}

    big = max(range(len(samples)), key=lambda i: sizes[i]) if samples else 0
    return Declaration("capture", cfg, units, compute, float16=float16, order=[big])


def capture_dataset(lm, samples, hooks, out, positions: str = "all", layers=None, float16: bool = False,
                    dataset: str = "synthetic", config: dict | None = None, progress: bool = True,
                    backend: str = "nnsight", context=None, overwrite: bool = False):
    """Capture ``hooks`` for every sample into the HDF5 cache ``out``, one sample
    at a time (memory flat in the number of samples). -> tracing.store.CacheReader.
    A rerun resumes; another configuration is refused (``overwrite`` replaces it
    when the new run completes)."""
    from tracing.store import CacheReader

    decl = declare(lm, samples, hooks, positions, layers, float16, config, backend, context)
    done = run(decl, out, lm.name, lm.fingerprint, dataset, overwrite=overwrite, progress=progress)
    return CacheReader(done.path)


def build_parser():
    from analyses.cli import common_parser
    from tracing.capture import BACKENDS, POSITIONS

    ap = common_parser("python -m analyses.capture", __doc__.split("\n\n")[0].replace("\n", " "), limit=8,
                       text_datasets=True)
    ap.add_argument("--hooks", default="resid_post",
                    help="comma-separated hook names or shorthands (embed, vision, projector, resid_pre, resid_post, "
                         "attn_out, mlp_out, pattern, ln_final); see tracing/hooks.py")
    ap.add_argument("--layers", default=None, help="comma-separated layer indices for per-layer hooks (default: all)")
    ap.add_argument("--positions", default="frame_mean", help=f"{', '.join(POSITIONS)} or a TokenLayout span name")
    ap.add_argument("--float16", action="store_true", help="store activations as float16")
    ap.add_argument("--backend", default="nnsight", choices=BACKENDS,
                    help="nnsight (every model) or transformer_lens (text models only; no vision towers in TL)")
    return ap


def prepare(argv):
    """The CLI arguments -> run.Prepared (model, declaration, dataset), in the
    driver and in every Ray worker."""
    from analyses.cli import load_data, load_from_args, preflight
    from analyses.run import Prepared, UsageError
    from tasks.synthetic import caption_prompt

    a = build_parser().parse_args(argv)
    try:
        layers = [int(x) for x in a.layers.split(",")] if a.layers else None
    except ValueError:
        raise UsageError(f"--layers {a.layers!r}: comma-separated integers") from None
    pattern = "pattern" in a.hooks and a.backend == "nnsight"  # TL computes patterns itself
    out = preflight("capture", a)
    if a.dataset == "reasoning":
        from tasks.reasoning import problem_set

        if a.limit is None:
            raise UsageError("--limit all: the reasoning problems are generated; give a number per family")
        try:
            samples = problem_set(a.tasks.split(",") if a.tasks else None, a.limit, a.seed)
        except KeyError as e:
            raise UsageError(f"--tasks: {e.args[0]}") from None
    else:
        samples = load_data(a).samples
    lm = load_from_args(a, attn="eager" if pattern else "sdpa")
    if a.dataset == "reasoning" and lm.family.frame_tokens is not None:
        raise UsageError(f"--dataset reasoning is text: --model {a.model} is a video model; use a text model "
                         f"(e.g. --model reasoner)")
    if a.backend == "transformer_lens":
        from tracing.hooked import check_text_model

        try:
            check_text_model(lm)
        except ValueError as e:
            raise UsageError(str(e)) from None
    try:
        from tracing.hooks import expand

        expand(lm, a.hooks, layers)
    except KeyError as e:
        raise UsageError(f"--hooks / --layers: {e.args[0]}") from None
    # A text-only model reads the video as its per-frame captions (the T3 text form).
    context = caption_prompt if lm.family.frame_tokens is None else None
    cfg = {"tasks": a.tasks.split(",") if a.tasks else None, "limit": a.limit, "frames": a.frames, "seed": a.seed,
           "dtype": a.dtype, "layers": layers, "data_dir": a.data_dir}
    if a.video_pixels:
        cfg["video_pixels"] = list(a.video_pixels)
    decl = declare(lm, samples, a.hooks, a.positions, layers, a.float16, cfg, a.backend, context)
    return Prepared(lm, decl, a.dataset, a, out)


def main(argv=None):
    import sys

    from analyses.run import engine_options
    from tracing.store import CacheReader

    argv = sys.argv[1:] if argv is None else list(argv)
    p = prepare(argv)
    done = run(p.decl, p.out, p.lm.name, p.lm.fingerprint, p.dataset, **engine_options(p.args, "analyses.capture", argv))
    print(f"wrote {done.path}")
    return CacheReader(done.path)


if __name__ == "__main__":
    raise SystemExit(cli_boundary(main)())
