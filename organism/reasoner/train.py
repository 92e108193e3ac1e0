"""Train the reasoner: ``python -m organism.reasoner.train [--steps N] [--seed S] [--out DIR]``.

The defaults are the committed checkpoint's recipe (``RECIPE``: 8000 steps,
seed 1, the peak learning rate held for 40% of the steps, three micro-batches
cut where padding is least, a compiled forward, 2 threads; about 30 minutes).

Cross-entropy on the solution tokens and ``</s>`` (teacher forcing; the
problem text is context only), fresh problems every step from
tasks/reasoning.py at the training chain lengths. Families are sampled in
proportion to how often the model still gets a whole solution wrong (see
``family_weights``), so that the hard families get the steps.

The checkpoint (config, safetensors, tokenizer, generation config) and
``train_log.json`` go to --out: by default a NEW folder
``reasoner-runs/seed<S>-steps<N>[-k]`` under the current directory, never
the committed checkpoint. To write over the committed checkpoint
(organism/reasoner/checkpoint), pass --replace-checkpoint, then recompute its
model card with ``python -m organism.evaluate --model reasoner --card``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from tasks.reasoning import FAMILIES, HELD_OUT_SEED, TRAIN_LENGTHS, make
from organism.runs import is_same_folder, new_run_folder, output_folder
from tracing.traces import prompt_ids

from .build import ARCH, build_config, build_model, build_tokenizer

IGNORE = -100
WINDOW = 256  # samples per family in the running exact-match that drives the sampling

# The command line's defaults: the committed checkpoint's recipe, so that
# `python -m organism.reasoner.train --replace-checkpoint` retrains it (30
# minutes on 2 threads). train()'s own keyword defaults stay the plain,
# eager ones that tests and the first checkpoints' logs assume.
RECIPE = dict(steps=8000, seed=1, batch_tokens=1280, lr=2e-3, warmup=100, stable=0.4, threads=2, micro=3,
              cut="least-padding", compile=True)


def encode(tok, p) -> tuple[list[int], list[int]]:
    """-> (input ids, labels): ``<s>`` problem ``\\n`` solution ``</s>``; labels
    are IGNORE on the prompt."""
    prompt = prompt_ids(tok, p)
    sol = tok(p.solution, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt + sol, [IGNORE] * len(prompt) + sol


def collate(tok, pairs: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels [B, T]."""
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), tok.pad_token_id)
    labels = torch.full((len(pairs), width), IGNORE)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_on(model, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
    """-> (summed cross-entropy over solution tokens, per-row exactness [B], solution tokens).

    A row is exact when every solution token is the argmax under teacher
    forcing, which is exactly when greedy decoding writes the whole solution:
    the running exact-match on fresh samples is a held-out greedy accuracy."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    target = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")
    wrong = (logits.argmax(-1) != target) & (target != IGNORE)
    return loss, ~wrong.any(1), int((target != IGNORE).sum())


def lr_factor(step: int, steps: int, warmup: int, stable: float = 0.0) -> float:
    """The learning rate at ``step`` over its peak: a linear warm-up over
    ``warmup`` steps, the peak held for the first ``stable`` fraction of the
    steps, then a cosine down to a tenth of the peak at the last step."""
    hold = int(stable * steps)
    decay = min(1.0, max(0, step - hold) / (steps - hold))
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * decay)))


def family_weights(running: dict[str, list[float]], floor: float = 0.15) -> np.ndarray:
    """Sampling weight per family: its recent error rate plus a floor (families
    the model has solved keep being rehearsed)."""
    err = [1.0 - (np.mean(running[f][-WINDOW:]) if running[f] else 0.0) for f in FAMILIES]
    w = np.array(err) + floor
    return w / w.sum()


def sample_problems(rng: np.random.Generator, tok, weights: np.ndarray, budget: int, seed_base: int):
    """Fresh training problems (family by ``weights``, chain length uniform)
    until their tokens reach ``budget`` -> [(problem, (ids, labels))]."""
    out, total = [], 0
    while total < budget:
        f = FAMILIES[rng.choice(len(FAMILIES), p=weights)]
        p = make(f, (seed_base + len(out)) % HELD_OUT_SEED, int(rng.choice(TRAIN_LENGTHS[f])), "train")
        enc = encode(tok, p)
        out.append((p, enc))
        total += len(enc[0])
    return out


CUTS = ("even", "least-padding")


def micro_batches(items: list, n: int, cut: str = "even") -> list[list]:
    """Sorted by length and cut into n runs of consecutive items, each padded
    to its own longest row (a mixed batch padded as one was 38% padding).
    ``even``: runs of equal count (32% padding when the hard families
    dominate); ``least-padding``: at most n runs, cut where they leave the
    fewest padded slots (25% in two runs, 12% in three)."""
    if cut not in CUTS:
        raise ValueError(f"unknown micro-batch cut {cut!r}; known: {', '.join(CUTS)}")
    items = sorted(items, key=lambda it: len(it[1][0]))
    if cut == "even":
        k = math.ceil(len(items) / n)
        return [items[i : i + k] for i in range(0, len(items), k)]
    lengths = [len(it[1][0]) for it in items]
    m = len(items)
    # cost[k][e]: fewest padded slots for the first e items in k runs; start[k][e]: where the last run starts
    cost = [[math.inf] * (m + 1) for _ in range(n + 1)]
    start = [[0] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0
    for k in range(1, n + 1):
        for e in range(1, m + 1):
            for b in range(e):
                c = cost[k - 1][b] + lengths[e - 1] * (e - b)
                if c < cost[k][e]:
                    cost[k][e], start[k][e] = c, b
    k = min(range(1, n + 1), key=lambda k: cost[k][m])
    parts, e = [], m
    while k:
        b = start[k][e]
        parts.insert(0, items[b:e])
        e, k = b, k - 1
    return parts


def train(steps: int, seed: int, out: Path | None, batch_tokens: int = 1280, lr: float = 2e-3, warmup: int = 100,
          log_every: int = 50, threads: int = 1, arch: dict = ARCH, save_every: int = 500,
          micro: int = 2, init: Path | None = None, stable: float = 0.0, compile: bool = False,
          cut: str = "even") -> list[dict]:
    """Train from the seeded initialisation (or, with ``init``, from the
    weights of that checkpoint: a second phase with its own schedule);
    deterministic in (seed, steps, batch_tokens, lr, warmup, arch, micro,
    init, stable, compile, cut) on a given machine and thread count. ``compile``
    runs the model's forward under ``torch.compile`` (after a compile of
    about 30 s; with ``micro=3, cut="least-padding"`` a step took 0.21-0.22 s
    in a whole 2-thread run, against 0.235 s eager in even halves).

    The learning rate warms up linearly over ``warmup`` steps, stays at the
    peak for the first ``stable`` fraction of the steps, then follows a
    cosine down to a tenth of the peak (``stable`` 0: a cosine over the
    whole run).

    Each step: fresh problems of all families (mixed; see ``family_weights``)
    worth ``batch_tokens`` tokens, run as ``micro`` length-sorted
    micro-batches whose gradients add up to one step's."""
    if not 0.0 <= stable < 1.0:
        raise ValueError(f"stable must be in [0, 1), got {stable}")
    torch.set_num_threads(threads)
    tok = build_tokenizer()
    hparams = dict(steps=steps, batch_tokens=batch_tokens, lr=lr, warmup=warmup, micro=micro, stable=stable,
                   compile=compile, cut=cut)
    model = build_model(build_config(tok, arch), seed)
    if init is not None:
        import transformers

        model.load_state_dict(transformers.LlamaForCausalLM.from_pretrained(init).state_dict())
        before = json.loads((Path(init) / "train_log.json").read_text())
        hparams["init"] = {"from": str(init), **{k: v for k, v in before.items() if k not in ("log",)}}
    model.train()
    if compile:  # shapes vary with every batch: one dynamic graph, not one per shape
        model.forward = torch.compile(model.forward, dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, steps=steps, warmup=warmup, stable=stable))
    rng = np.random.default_rng(seed)
    running: dict[str, list[float]] = {f: [] for f in FAMILIES}
    log, t0, n_tokens = [], time.time(), 0
    for step in range(steps):
        w = family_weights(running)
        items = sample_problems(rng, tok, w, batch_tokens, seed_base=(seed * 1_000_003 + step * 997) % HELD_OUT_SEED)
        n_sol = sum(sum(1 for y in lab if y != IGNORE) for _, (_, lab) in items)
        opt.zero_grad()
        problems, exact, loss_sum = [], [], 0.0
        for part in micro_batches(items, micro, cut):
            loss, ex, _ = loss_on(model, collate(tok, [enc for _, enc in part]))
            (loss / n_sol).backward()
            loss_sum += loss.item()
            problems += [p for p, _ in part]
            exact += ex.tolist()
        n_tokens += n_sol
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss = torch.tensor(loss_sum / n_sol)
        for p, e in zip(problems, exact):
            running[p.family].append(float(e))
        log.append({"step": step, "problems": len(problems), "loss": round(loss.item(), 5),
                    "exact": round(float(np.mean(exact)), 4)})
        if (step + 1) % log_every == 0:
            recent = {f: round(float(np.mean(v[-WINDOW:])), 3) if v else None for f, v in running.items()}
            mean_loss = float(np.mean([e["loss"] for e in log[-log_every:]]))
            print(json.dumps({"step": step + 1, "time_s": round(time.time() - t0), "loss": round(mean_loss, 4),
                              "lr": round(sched.get_last_lr()[0], 6), "exact": recent,
                              "weights": [round(x, 2) for x in w]}), flush=True)
        if out is not None and (step + 1) % save_every == 0 and step + 1 < steps:
            save(model, tok, out, log, seed, step + 1, hparams, arch, time.time() - t0, running, n_tokens)
    model.eval()
    if out is not None:
        save(model, tok, out, log, seed, steps, hparams, arch, time.time() - t0, running, n_tokens)
    return log


def save(model, tok, out: Path, log, seed, steps_done, hparams, arch, seconds, running, n_tokens) -> None:
    # Written beside, then swapped in: an interrupted save never leaves a half checkpoint.
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    final = {f: round(float(np.mean(v[-WINDOW:])), 4) for f, v in running.items() if v}
    (tmp / "train_log.json").write_text(json.dumps({
        "seed": seed, "steps_done": steps_done, **hparams, "arch": arch, "threads": torch.get_num_threads(),
        "wall_s": round(seconds), "solution_tokens": n_tokens, "running_exact": final, "log": log}))
    out.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()


def default_out(seed: int, steps: int) -> Path:
    """A folder that does not exist yet: reasoner-runs/seed<S>-steps<N>[-k]."""
    return new_run_folder("reasoner-runs", seed, steps)


def is_committed(folder: Path) -> bool:
    """Whether ``folder`` is the committed checkpoint (organism/reasoner/checkpoint)."""
    from . import REASONER_DIR

    return is_same_folder(folder, REASONER_DIR)


def main(argv=None):
    from analyses.cli import RawHelpFormatter, user_path

    from . import REASONER_DIR

    ap = argparse.ArgumentParser(prog="python -m organism.reasoner.train", description=__doc__,
                                 formatter_class=RawHelpFormatter)
    R = RECIPE
    ap.add_argument("--steps", type=int, default=R["steps"],
                    help=f"optimizer steps (default {R['steps']}: ~30 minutes on 2 threads)")
    ap.add_argument("--seed", type=int, default=R["seed"],
                    help=f"seed of the initialisation and of the training problems (default {R['seed']})")
    ap.add_argument("--batch-tokens", type=int, default=R["batch_tokens"],
                    help=f"tokens of fresh problems per step (default {R['batch_tokens']}, ~16 problems)")
    ap.add_argument("--lr", type=float, default=R["lr"],
                    help=f"peak learning rate (AdamW; warm-up, hold, cosine to 10%%; default {R['lr']:g})")
    ap.add_argument("--warmup", type=int, default=R["warmup"], help=f"linear warm-up steps (default {R['warmup']})")
    ap.add_argument("--stable", type=float, default=R["stable"],
                    help=f"fraction of the steps held at the peak learning rate before the cosine decay begins "
                         f"(default {R['stable']:g}; 0: the cosine spans the whole run)")
    ap.add_argument("--threads", type=int, default=R["threads"], help=f"torch CPU threads (default {R['threads']})")
    ap.add_argument("--micro", type=int, default=R["micro"],
                    help=f"length-sorted micro-batches per step (default {R['micro']})")
    ap.add_argument("--cut", default=R["cut"], choices=CUTS,
                    help="how a step's length-sorted problems are cut into micro-batches: runs of equal count "
                         f"(even) or where they leave the fewest padded slots (least-padding; default {R['cut']})")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=R["compile"],
                    help="run the model's forward under torch.compile (faster steps after a compile of ~30 s; "
                         "on by default)")
    ap.add_argument("--init", type=user_path, default=None,
                    help="start from this checkpoint's weights (a second phase, with its own warm-up and cosine "
                         "schedule and fresh problems from --seed) instead of a random initialisation")
    ap.add_argument("--out", type=user_path, default=None,
                    help="checkpoint folder (default: a new folder reasoner-runs/seed<S>-steps<N>; never the "
                         "committed checkpoint without --replace-checkpoint)")
    ap.add_argument("--replace-checkpoint", action="store_true",
                    help=f"write over the committed checkpoint {REASONER_DIR} (the model every analysis loads "
                         f"as --model reasoner)")
    a = ap.parse_args(argv)
    # Before anything is built: the committed checkpoint is written only on request.
    out = output_folder(ap, a.out, a.replace_checkpoint, REASONER_DIR, "reasoner-runs", a.seed, a.steps)
    print(f"training the reasoner for {a.steps} steps (seed {a.seed}) into {out}", flush=True)
    train(a.steps, a.seed, out, batch_tokens=a.batch_tokens, lr=a.lr, warmup=a.warmup, threads=a.threads,
          stable=a.stable, micro=a.micro, compile=a.compile, cut=a.cut,
          init=None if a.init is None else Path(a.init))
    print(f"saved to {out}; evaluate it with `python -m organism.evaluate --model reasoner --checkpoint {out}`")


if __name__ == "__main__":
    main()
