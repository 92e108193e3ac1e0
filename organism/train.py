"""Train the organism: ``python -m organism.train [--steps N] [--seed S] [--out DIR]``.

Answer-letter cross-entropy on the multiple-choice prompt that tracing/
builds for real models, on fresh synthetic samples every step:
- single-frame grounding questions (what/where/how big), weighted up early,
  as real video LLMs align their vision side on images first;
- every temporal task and the static control at 8 frames;
- static and grounding questions at 1-16 frames, so that a 1-frame video is
  not out of distribution;
- the caption (text) form of every task.
The checkpoint (config, safetensors, tokenizer) and a training log go to
--out: by default a NEW folder ``organism-runs/seed<S>-steps<N>[-k]`` (in the
repository under with-venv), never the committed checkpoint. Writing over
the committed checkpoint (organism/checkpoint) takes --replace-checkpoint;
then recompute its model card with ``python -m organism.evaluate --card``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from tqdm import tqdm

from tasks.synthetic import EVAL_SEED_BASE, GROUNDING_TASKS, STATIC_TASKS, TEMPORAL_TASKS, caption_prompt, render
from tracing import scoring
from tracing.inputs import build_inputs
from tracing.registry import ORGANISM_DIR, LoadedModel
from tracing.families import recipe

from .build import ARCH, FAMILY, build_config, build_model, build_tokenizer
from .runs import is_same_folder, new_run_folder, output_folder

VIDEO_TASKS = TEMPORAL_TASKS + STATIC_TASKS
# Training seeds stay below this; held-out evaluation uses seeds above it, as
# every dataset the analyses build does (tasks.synthetic.task_seed).
HELD_OUT_SEED = EVAL_SEED_BASE


def wrap(model, tok) -> LoadedModel:
    """A LoadedModel around a model being trained, for tracing's input builder."""
    return LoadedModel("organism", model, tok, FAMILY, recipe(FAMILY, model.config), "training", "")


def collate(lm: LoadedModel, items: list[tuple]) -> dict[str, torch.Tensor]:
    """One right-padded batch plus each row's answer position (``last``) and
    answer-letter id (``target``)."""
    batch = scoring.collate(lm, items)
    batch["last"] = torch.tensor([lay.last for _, lay in items])
    batch["target"] = torch.tensor([lay.option_ids[lay.answer] for _, lay in items])
    return batch


# Tasks the organism must solve (issue 3) at full weight; the extra T3 tasks at half.
CORE_TASKS = ["direction", "rotation", "count", "velocity", "order", "brightness", "size_change", "static_color"]
EXTRA_TASKS = [t for t in VIDEO_TASKS if t not in CORE_TASKS]
CURRICULUM_STEPS = 300


def pick_task(rng, kind: str, step: int, weights: dict[str, float] | None = None) -> tuple[str, int]:
    """-> (task, frame count) of one training sample.

    The first CURRICULUM_STEPS steps show only single-frame questions (what,
    where, how big) at 1-8 frames: until the LLM reads the video tokens at
    all, temporal questions only add noise (all tasks mixed from step 0 learnt
    nothing in 600 steps; static colour alone escaped chance in ~50)."""
    single = GROUNDING_TASKS + STATIC_TASKS
    if kind == "text":
        return str(rng.choice(CORE_TASKS + EXTRA_TASKS)), 8
    if kind == "frames" or step < CURRICULUM_STEPS:
        return str(rng.choice(single)), -1
    if rng.random() < 0.15:
        return str(rng.choice(GROUNDING_TASKS)), 8
    pool = CORE_TASKS + EXTRA_TASKS
    w = np.array([(weights or {}).get(t, 1.0 if t in CORE_TASKS else 0.5) for t in pool])
    return str(rng.choice(pool, p=w / w.sum())), 8


def make_batch(lm, rng: np.random.Generator, kind: str, size: int, step: int, seed_base: int,
               weights: dict[str, float] | None = None) -> dict:
    """One batch of fresh samples. kind: 'video' (8 frames after the
    curriculum), 'frames' (static and grounding at a random frame count),
    'text' (captions). One frame count per batch (videos are stacked)."""
    items, tasks = [], []
    counts = [1, 2, 4, 16] if kind == "frames" else [1, 2, 4, 8]
    n_frames = int(rng.choice(counts))
    for j in range(size):
        task, nf = pick_task(rng, kind, step, weights)
        s = render(task, seed_base + j, n_frames=n_frames if nf < 0 else nf)
        tasks.append(task)
        if kind == "text":
            items.append(build_inputs(lm, None, s.question, s.options, s.answer, context=caption_prompt(s)))
        else:
            items.append(build_inputs(lm, s.frames, s.question, s.options, s.answer))
    batch = collate(lm, items)
    batch["tasks"] = tasks
    return batch


def loss_on(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (mean cross-entropy of the answer letter, per-row correctness [B])."""
    kw = {k: v for k, v in batch.items() if k not in ("last", "target", "tasks")}
    logits = model(**kw).logits
    rows = torch.arange(len(batch["last"]))
    last = logits[rows, batch["last"]]
    loss = torch.nn.functional.cross_entropy(last, batch["target"])
    return loss, (last.argmax(-1) == batch["target"]).detach()


SCHEDULE = ("video", "video", "frames", "video", "video", "text")


def train(steps: int, seed: int, out: Path, batch: int = 32, lr: float = 1e-3, warmup: int = 100,
          log_every: int = 50, threads: int = 2, resume: Path | None = None,
          weights: dict[str, float] | None = None) -> list[dict]:
    """Train from the seeded initialisation, or continue the checkpoint in
    ``resume`` for ``steps`` more steps (a fresh warm-up and cosine; its
    samples continue the step count, so none repeats an earlier step's)."""
    torch.set_num_threads(threads)
    tok = build_tokenizer()
    start, history, stages = 0, [], []
    if resume is not None:
        model, prev = _load_for_resume(Path(resume), tok)
        history = prev["log"]
        # Checkpoints from before resuming existed record one stage with the defaults of then.
        stages = prev.get("stages") or [{"from_step": 0, "steps": prev["steps"], "lr": 1e-3, "warmup": 100,
                                          "batch": 32, "seed": prev["seed"], "weights": {}}]
        start = len(history)
    else:
        model = build_model(build_config(tok), seed)
    stages = stages + [{"from_step": start, "steps": steps, "lr": lr, "warmup": warmup, "batch": batch,
                        "seed": seed, "weights": weights or {}}]
    model.train()
    lm = wrap(model, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    rng = np.random.default_rng(seed + start)
    log, t0 = list(history), time.time()
    run: dict[str, list[float]] = {}
    bar = tqdm(range(start, start + steps), desc="organism", unit="step")
    for step in bar:
        kind = SCHEDULE[step % len(SCHEDULE)]
        size = batch // 2 if kind == "text" else batch  # caption prompts are 2-3x longer
        b = make_batch(lm, rng, kind, size, step, seed_base=(seed * 100_003 + step) * batch % HELD_OUT_SEED,
                       weights=weights)
        loss, correct = loss_on(model, b)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        for t, c in zip(b["tasks"], correct.tolist()):
            key = f"text:{t}" if kind == "text" else t
            run.setdefault(key, []).append(float(c))
        log.append({"step": step, "kind": kind, "loss": loss.item(), "acc": float(correct.float().mean())})
        if (step + 1) % log_every == 0:
            # Training samples are fresh, so this running accuracy is already out-of-sample.
            recent = {k: round(float(np.mean(v[-40:])), 2) for k, v in sorted(run.items())}
            bar.set_postfix(loss=f"{float(loss):.3f}")
            print(json.dumps({"step": step + 1, "time_s": round(time.time() - t0), **recent}), flush=True)
        if out is not None and (step + 1 - start) % 500 == 0:
            save(model, tok, out, log, seed, step + 1, stages)
    model.eval()
    if out is not None:
        save(model, tok, out, log, seed, start + steps, stages)
    return log


def _load_for_resume(folder: Path, tok):
    """-> (model, the folder's train_log.json) of a checkpoint written by `save`."""
    log_file = folder / "train_log.json"
    if not log_file.is_file():
        raise FileNotFoundError(f"--resume {folder}: no train_log.json there; is it a folder written by organism.train?")
    prev = json.loads(log_file.read_text())
    if prev.get("arch") != ARCH:
        raise ValueError(f"--resume {folder}: its architecture {prev.get('arch')} differs from organism.build.ARCH")
    model = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    return model, prev


def save(model, tok, out: Path, log: list[dict], seed: int, steps: int, stages: list[dict] | None = None) -> None:
    # Write beside, then swap in, so an interrupted save never leaves a half checkpoint.
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "train_log.json").write_text(json.dumps({"seed": seed, "steps": steps, "arch": ARCH,
                                                       "stages": stages or [], "log": log}))
    if out.exists():
        for f in tmp.iterdir():
            f.replace(out / f.name)
        tmp.rmdir()
    else:
        tmp.replace(out)


def default_out(seed: int, steps: int) -> Path:
    """A folder that does not exist yet: organism-runs/seed<S>-steps<N>[-k]."""
    return new_run_folder("organism-runs", seed, steps)


def is_committed(folder: Path) -> bool:
    """Whether ``folder`` is the committed checkpoint (organism/checkpoint)."""
    return is_same_folder(folder, ORGANISM_DIR)


def main(argv=None):
    from analyses.cli import RawHelpFormatter, user_path

    ap = argparse.ArgumentParser(prog="python -m organism.train", description=__doc__,
                                 formatter_class=RawHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of the training samples")
    ap.add_argument("--batch", type=int, default=32, help="samples per step")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, warm-up then cosine)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--warmup", type=int, default=100, help="linear warm-up steps before the cosine decay")
    ap.add_argument("--out", type=user_path, default=None,
                    help="checkpoint folder (default: a new folder organism-runs/seed<S>-steps<N>; never the "
                         "committed checkpoint without --replace-checkpoint)")
    ap.add_argument("--replace-checkpoint", action="store_true",
                    help=f"write over the committed checkpoint {ORGANISM_DIR} (the model every analysis "
                         f"loads as --model organism)")
    ap.add_argument("--resume", type=user_path, default=None,
                    help="continue training this checkpoint folder for --steps more steps (fresh optimizer)")
    ap.add_argument("--weight", action="append", default=[], metavar="TASK=W",
                    help=f"sampling weight of a video task after the curriculum (default 1 for the core tasks "
                         f"{', '.join(CORE_TASKS)}; 0.5 for the T3 tasks {', '.join(EXTRA_TASKS)}); "
                         f"repeatable, e.g. --weight rotation=3")
    a = ap.parse_args(argv)
    # Before anything is built: the committed checkpoint is written only on request.
    out = output_folder(ap, a.out, a.replace_checkpoint, ORGANISM_DIR, "organism-runs", a.seed, a.steps)
    weights = {}
    for item in a.weight:
        task, _, w = item.partition("=")
        if task not in CORE_TASKS + EXTRA_TASKS or not w:
            ap.error(f"--weight {item!r}: expected TASK=W with TASK one of {CORE_TASKS + EXTRA_TASKS}")
        weights[task] = float(w)
    print(f"training the organism for {a.steps} steps (seed {a.seed}) into {out}", flush=True)
    train(a.steps, a.seed, out, batch=a.batch, lr=a.lr, warmup=a.warmup, threads=a.threads,
          resume=None if a.resume is None else Path(a.resume), weights=weights or None)
    if is_committed(out):
        print(f"saved to {out}; now run `python -m organism.evaluate --card` to recompute the model card")
    else:
        print(f"saved to {out}; evaluate it with `python -m organism.evaluate --model {out}`")


if __name__ == "__main__":
    main()
