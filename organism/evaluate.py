"""Recompute the organism's accuracy table and write its model card.

    python -m organism.evaluate [--n 100] [--model organism] [--card]
    python -m organism.evaluate --model reasoner [--card]   (organism/reasoner/evaluate.py)

Held-out samples (seeds above every training seed), four conditions: the 8
frames in order, one frame (the middle one), the 8 frames shuffled (a fixed
permutation per sample), and the caption text instead of the video.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tasks.synthetic import TASKS, caption_prompt, render
from tracing.inputs import build_inputs
from tracing.registry import load_model
from tracing.scoring import score

from .train import CORE_TASKS, EXTRA_TASKS, HELD_OUT_SEED

CONDITIONS = ("ordered", "single", "shuffled", "text")
ORDER_TASKS = ["direction", "rotation", "order", "brightness", "size_change"]  # collapse without order


def condition_frames(frames: np.ndarray, condition: str, seed: int) -> np.ndarray:
    if condition == "single":
        return frames[[len(frames) // 2]]
    if condition == "shuffled":
        perm = np.random.default_rng(seed).permutation(len(frames))
        return frames[perm]
    return frames


def accuracy_table(lm, tasks: list[str], n: int, seed0: int = HELD_OUT_SEED, progress: bool = True) -> dict:
    """-> {task: {condition: accuracy}} plus chance per task."""
    table = {}
    for task in tqdm(tasks, desc="evaluate", disable=not progress):
        samples = [render(task, seed0 + i, n_frames=8) for i in range(n)]
        row = {"chance": 1.0 / len(TASKS[task].options)}
        for cond in CONDITIONS:
            items = []
            for i, s in enumerate(samples):
                if cond == "text":
                    items.append(build_inputs(lm, None, s.question, s.options, s.answer, context=caption_prompt(s)))
                else:
                    f = condition_frames(s.frames, cond, seed0 + i)
                    items.append(build_inputs(lm, f, s.question, s.options, s.answer))
            sc = score(lm, items, batch_size=32)
            row[cond] = float(np.mean(sc.correct([s.answer for s in samples])))
        table[task] = row
    return table


def markdown(table: dict) -> str:
    lines = ["| task | chance | 8 frames in order | 1 frame | 8 frames shuffled | text captions |",
             "|---|---|---|---|---|---|"]
    for task, r in table.items():
        lines.append(f"| {task} | {r['chance']:.2f} | {r['ordered']:.2f} | {r['single']:.2f} | "
                     f"{r['shuffled']:.2f} | {r['text']:.2f} |")
    return "\n".join(lines)


CARD = """# The organism: a small LLaVA-NeXT-Video trained on synthetic temporal tasks

The default model of chronolens (`--model organism`). Real architecture
classes (`LlavaNextVideoForConditionalGeneration`: CLIP vision tower, 2x2
average pooling, MLP projector, Llama decoder), trained here from random
initialisation on 2 CPU cores. The vision encoder sees one frame at a time,
so any answer that needs the order of frames is computed inside the LLM.

## Architecture
{arch}

Tokenizer: word level over the synthetic tasks' vocabulary plus the prompt
scaffolding ({vocab} tokens). Prompt: LLaVA-NeXT-Video's
`USER: <video>...` format ending in `Best option:(`, as for real models.

## Training
{stages}
Common to every stage: AdamW, warm-up then cosine, gradient clipping 1.0,
batch 32 of fresh samples every step, answer-letter cross-entropy at the last
position; one thread on a shared 2-core machine ({minutes} minutes in all).
- Steps 0-299: single-frame questions only (grounding: position, colour,
  size; static colour) at 1-8 frames. Mixing every task from step 0 learnt
  nothing in 600 steps (loss stuck at the log of the option count, even for
  caption text); static colour alone escaped chance in ~50 steps.
- Then: every temporal task and the static control at 8 frames (issue 3's
  tasks at weight 1, the extra T3 tasks order3 / referring / when at 0.5),
  grounding 15%, static and grounding at 1/2/4/16 frames every 6th step,
  the caption form of every task every 6th step (half batch).
- Second stage (resumed from the step-3000 checkpoint, fresh optimizer): the
  three tasks still below 90% after 3000 steps (rotation 0.63, count 0.78,
  velocity 0.69 held-out) sampled more often (rotation and velocity x3,
  count x2, "when" x2), peak learning rate 5e-4. All three passed 90% within
  ~1000 more steps, with no loss on the other tasks.
- Initialisation that mattered: text `initializer_range` 0.08; the CLIP position
  embedding redrawn at std 1.0 and the patch embedding at std 0.1 (at 0.02 the
  pixel content was ~5% of the position signal after CLIP's pre-norm).
Final training accuracies (last 40 samples per task) are in `train_log.json`.

## Accuracy on held-out samples ({n} per task, seeds >= {held})
Recomputed by `python -m organism.evaluate --card`.

{table}

Single frame = the middle frame alone (4 video tokens); shuffled = a fixed
random permutation of the 8 frames per sample. Chance is over all options;
on "order" the two colours that appear are two of the four options, so
shuffled frames leave a coin flip between them (~0.5), not 0.25. "when"
(three-way: which third of the video) is an extra T3 task, outside issue 3's
set, and the one task still well short of the others.
{notes}
"""


def stages_text(log: dict) -> str:
    """The training commands that made the checkpoint, one per stage of train_log.json."""
    stages = log.get("stages") or [{"from_step": 0, "steps": log["steps"], "lr": 1e-3, "warmup": 100,
                                    "seed": log["seed"], "weights": {}}]
    lines = []
    for i, st in enumerate(stages):
        cmd = f"python -m organism.train --steps {st['steps']} --seed {st['seed']}"
        if i:
            cmd += f" --resume <stage {i} checkpoint> --lr {st['lr']:g} --warmup {st['warmup']}"
            cmd += "".join(f" --weight {t}={w:g}" for t, w in st["weights"].items())
        lines.append(f"- stage {i + 1}, steps {st['from_step']}-{st['from_step'] + st['steps'] - 1}: `{cmd}`")
    return "\n".join(lines)


def write_card(lm, table: dict, out: Path, n: int) -> None:
    log = json.loads((out / "train_log.json").read_text())
    cfg = lm.model.config
    arch = (f"- vision: CLIP, {cfg.vision_config.image_size} px frames, patch {cfg.vision_config.patch_size}, "
            f"hidden {cfg.vision_config.hidden_size}, {cfg.vision_config.num_hidden_layers} layers; "
            f"4 tokens per frame after pooling\n"
            f"- LLM: Llama, hidden {cfg.text_config.hidden_size}, {cfg.text_config.num_hidden_layers} layers, "
            f"{cfg.text_config.num_attention_heads} heads, MLP {cfg.text_config.intermediate_size}\n"
            f"- {sum(p.numel() for p in lm.model.parameters()) / 1e6:.2f}M parameters")
    miss = [t for t in CORE_TASKS if t != "static_color" and table[t]["ordered"] < 0.9]
    notes = ""
    if miss:
        notes = ("\n## Below the bar\nTemporal tasks under 90% with 8 ordered frames: "
                 + ", ".join(f"{t} ({table[t]['ordered']:.2f})" for t in miss)
                 + ". Training stopped at the step budget while these were still improving "
                 "(see `train_log.json`); longer training is the first thing to try.\n")
    minutes = round(log["log"] and len(log["log"]) * 1.2 / 60)
    text = CARD.format(arch=arch, vocab=len(lm.tokenizer), stages=stages_text(log), minutes=minutes,
                       n=n, held=HELD_OUT_SEED, table=markdown(table), notes=notes)
    (out / "README.md").write_text(text)


def main(argv=None):
    # The reasoner (a text LLM on word problems) has its own evaluation, in its package.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", default="organism")
    if pre.parse_known_args(argv)[0].model == "reasoner":
        from .reasoner.evaluate import main as reasoner_main

        return reasoner_main(argv)
    ap = argparse.ArgumentParser(prog="python -m organism.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="organism", help="model name or checkpoint folder")
    ap.add_argument("--n", type=int, default=100, help="held-out samples per task")
    ap.add_argument("--card", action="store_true", help="write README.md (the model card) into the checkpoint")
    ap.add_argument("--json", default=None, help="also write the table as JSON to this file")
    ap.add_argument("--from-json", default=None,
                    help="take the table from this file (written by --json) instead of recomputing it")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    lm = load_model(a.model)
    if a.from_json:
        table = json.loads(Path(a.from_json).read_text())
    else:
        table = accuracy_table(lm, CORE_TASKS + EXTRA_TASKS, a.n)
    print(markdown(table))
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1))
    if a.card:
        write_card(lm, table, Path(lm.source), a.n)
        print(f"wrote {(Path(lm.source) / 'README.md').absolute()}")


if __name__ == "__main__":
    main()
