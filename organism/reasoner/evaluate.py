"""Recompute the reasoner's accuracy table and write its model card.

    python -m organism.evaluate --model reasoner [--n 100] [--card] [--checkpoint DIR]

Held-out problems (seeds from --seed0, at or above every training seed), per
family: --n at the training chain lengths and --n at the longer held-out
ones, lengths in turn. Greedy ``generate`` writes the whole solution; a
problem counts as solved when its ``Answer:`` line equals the true answer
(``whole solution`` also requires every step to be the reference's).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tasks.reasoning import FAMILIES, HELD_OUT_SEED, LONG_LENGTHS, TRAIN_LENGTHS, answer_of, lengths, make
from tracing.traces import MAX_NEW_TOKENS, solve

from . import REASONER_DIR


def problems_for(family: str, split: str, n: int, seed0: int = HELD_OUT_SEED) -> list:
    """n held-out problems of one family, the split's chain lengths in turn."""
    ls = lengths(family, split)
    return [make(family, seed0 + i, ls[i % len(ls)], split) for i in range(n)]


def accuracy_table(lm_or_model, tokenizer, n: int = 100, seed0: int = HELD_OUT_SEED,
                   families=FAMILIES, splits=("train", "long"), progress: bool = True) -> dict:
    """-> {family: {split: {'n', 'answer', 'solution', 'by_length': {L: answer accuracy}}}}."""
    table: dict = {}
    for f in families:
        for split in splits:
            ps = problems_for(f, split, n, seed0)
            longest = max(len(tokenizer(p.solution, add_special_tokens=False)["input_ids"]) for p in ps)
            sols = solve(lm_or_model, tokenizer, ps, max_new_tokens=min(MAX_NEW_TOKENS, longest + 32))
            ans = np.array([answer_of(s) == p.answer for s, p in zip(sols, ps)])
            whole = np.array([s == p.solution for s, p in zip(sols, ps)])
            by = {str(L): float(np.mean([a for a, p in zip(ans, ps) if p.length == L])) for L in lengths(f, split)}
            table.setdefault(f, {})[split] = {"n": n, "answer": float(ans.mean()), "solution": float(whole.mean()),
                                              "by_length": by}
            if progress:
                print(f"{f:>10} {split:>5}: answer {ans.mean():.2f}, whole solution {whole.mean():.2f}, "
                      f"by length {by}", flush=True)
    return table


def markdown(table: dict) -> str:
    lines = ["| family | split | chain lengths | n | answer exact match | whole solution exact | by chain length |",
             "|---|---|---|---|---|---|---|"]
    for f, row in table.items():
        for split, r in row.items():
            ls = ", ".join(r["by_length"])
            by = ", ".join(f"{L}: {a:.2f}" for L, a in r["by_length"].items())
            name = "training lengths" if split == "train" else "longer (held out)"
            lines.append(f"| {f} | {name} | {ls} | {r['n']} | {r['answer']:.2f} | {r['solution']:.2f} | {by} |")
    return "\n".join(lines)


def _lengths_text() -> str:
    return "\n".join(f"| {f} | {', '.join(map(str, TRAIN_LENGTHS[f]))} | {', '.join(map(str, LONG_LENGTHS[f]))} |"
                     for f in FAMILIES)


CARD = """# The reasoner: a small Llama that solves temporal word problems step by step

The second organism of chronolens. A `LlamaForCausalLM` trained here from
random initialisation on a 2-core CPU, to write step-by-step solutions of
synthetic temporal word problems (`tasks/reasoning.py`) whose dependency
graph is known by construction: for every token of a solution, which earlier
tokens (in the problem or in earlier steps) its value is read or computed
from. WAAD/FAI-style analyses test attention against that graph.

```
Mia left at 7:40. The bus took 35 minutes and the walk 20 minutes. When did Mia arrive?
7:40 + 0:35 = 8:15
8:15 + 0:20 = 8:35
Answer: 8:35
```

Load it with `tracing.registry.load_model("reasoner")` (or the folder `{folder}`) (model type llama:
the `causal_lm` family; TransformerLens works through
`capture(..., backend="transformer_lens")`). Prompt: `<s>` + problem + `\\n`;
the model writes the solution and `</s>` (`tracing.traces.prompt_ids`,
`tracing.traces.solve`, `tracing.traces.trace_inputs` for capture).

## Tasks
| family | problem | steps |
|---|---|---|
| clock | a start time and 1-5 durations (5-55 minutes) | `7:40 + 0:35 = 8:15` per duration |
| duration | 1-3 intervals "from 7:40 to 9:15" (5-115 minutes each) | `9:15 - 7:40 = 1:35` per interval, then running sums `a + b = c` |
| weekday | a start day and 1-5 offsets of 1-9 days | `Monday + 3 = Thursday` per offset |
| relations | a chain of 2-6 events as "The X happened before/after the Y." (each relation names one event already named); which came first / last | one line per relation: the order so far, `the flood, the storm, the party`, the new event at its end |
| timestamps | 3-6 events, "At 7:40 the storm began." (one-digit hours, all different); put them in order | `7:40 the storm` per event, earliest first; the answer lists them |

Chain lengths (durations, intervals, offsets, events):

| family | training | held out (longer) |
|---|---|---|
{lengths}

Chosen to keep the arithmetic learnable at this size and budget: every time
is a multiple of 5 minutes (12 minute values), clock and duration times stay
within 6:00-21:55 (no wrap past midnight), clock durations stay under an
hour (the hour changes by at most one per step), day offsets are 1-9 (one
token: a 7 x 9 table), the times to sort have one-digit hours that differ
within a problem (the hour digit decides the order and names the event;
the minutes are copied along); 8 names, 8 legs/activities/places and 12
events. Training chains stop at four steps
per problem (duration: two intervals = three steps).

Tokenizer: word level, built locally (`organism/reasoner/build.py`), {vocab}
tokens: `<s>`, `</s>`, `[UNK]`, `<pad>`, each word with and without its
leading space, and every digit, the colon, each mark and each whitespace
character as a token of its own (`10:05` = `1 0 : 0 5`); decoding is
concatenation, so the text round-trips exactly and offsets are exact.

## Architecture
{arch}

## Training
{phases}
- Loss: cross-entropy on the solution tokens and `</s>` (teacher forcing);
  the problem is context only.
- Fresh problems every step, all families mixed, chain lengths uniform over
  the training lengths, as many problems as fill the token budget (~16),
  run as {batching}; their gradients make one step.
- Families sampled in proportion to their running error (share of the last
  256 fresh problems not solved exactly under teacher forcing, which equals
  greedy whole-solution exact match) plus a floor of 0.15: the model's steps
  go where it is still wrong.
- AdamW (betas 0.9/0.98, weight decay 0.01), linear warm-up to the peak
  learning rate, held at the peak for the phase's stable part where it has
  one (`--stable`), then a cosine down to 10% of the peak; gradient
  clipping 1.0.
{notes}
Running exact match per family at the end of training (fresh problems):
{running}. The per-step log is in `train_log.json`.

## Accuracy on held-out problems ({n} per family and split, seeds >= {seed0})
Recomputed by `python -m organism.evaluate --model reasoner --card`: greedy
`generate` of the whole solution; "answer exact match" compares the
`Answer:` line, "whole solution exact" every character of the solution.

{table}

## Retrain
```
{retrain}
python -m organism.evaluate --model reasoner --card
```
Without `--out` the training writes to a new folder `reasoner-runs/...`
and leaves this checkpoint alone; only `--replace-checkpoint` writes here.
Training is deterministic in its seed on a given machine and thread count.
"""


def _phases(log: dict) -> list[dict]:
    """The training phases of a checkpoint's log, first first (a phase started
    with --init records the log of the one before under 'init')."""
    out, cur = [], log
    while cur:
        out.insert(0, cur)
        cur = cur.get("init")
    return out


def _threads(n: int) -> str:
    return "one thread" if n == 1 else f"{n} threads"


COMMITTED = "organism/reasoner/checkpoint"  # the retrain commands' name for the committed checkpoint


# What train() did before a phase's log recorded these keys: an older log's phase is read with them.
LEGACY = dict(micro=2, stable=0.0, cut="even", compile=False, threads=1)


def _command(ph: dict, init: str | None = None, out: str | None = None) -> str:
    """The training command of one phase: the flags where the phase differs
    from the command line's defaults (``RECIPE``). A key missing from an older
    log means the value train() had before it was recorded (LEGACY)."""
    from .train import RECIPE

    val = lambda key: ph.get(key, LEGACY.get(key))
    cmd = "python -m organism.reasoner.train"
    for flag, key in (("--steps", "steps"), ("--seed", "seed"), ("--batch-tokens", "batch_tokens"), ("--lr", "lr"),
                      ("--warmup", "warmup"), ("--stable", "stable"), ("--micro", "micro"), ("--cut", "cut"),
                      ("--threads", "threads")):
        if val(key) != RECIPE[key]:
            cmd += f" {flag} {val(key):g}" if isinstance(val(key), float) else f" {flag} {val(key)}"
    if val("compile") != RECIPE["compile"]:
        cmd += " --compile" if val("compile") else " --no-compile"
    if init:
        cmd += f" --init {init}"
    if out == COMMITTED:
        return cmd + " --replace-checkpoint"
    return cmd + (f" --out {out}" if out else "")


def write_card(model, tokenizer, table: dict, folder: Path, n: int, seed0: int, notes: str = "") -> Path:
    log = json.loads((folder / "train_log.json").read_text())
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    arch = (f"- Llama: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads "
            f"({cfg.num_key_value_heads} key/value heads, head size {cfg.hidden_size // cfg.num_attention_heads}), "
            f"MLP {cfg.intermediate_size}, RoPE, vocabulary {cfg.vocab_size}, untied embeddings\n"
            f"- {n_params / 1e6:.2f}M parameters, float32 safetensors")
    phases = _phases(log)
    lines, retrain = [], []
    for k, ph in enumerate(phases):
        last = k == len(phases) - 1
        out = COMMITTED if last else f"reasoner-runs/phase{k + 1}"
        init = None if k == 0 else f"reasoner-runs/phase{k}"
        name = f"Phase {k + 1} of {len(phases)}" if len(phases) > 1 else "One phase"
        start = "from random initialisation" if k == 0 else "from the weights of the phase before"
        held = f" held for the first {ph['stable']:.0%} of the steps" if ph.get("stable") else ""
        lines.append(f"- {name}, {start}: `{_command(ph, init)}`: {ph['steps']} steps of about "
                     f"{ph['batch_tokens']} tokens of fresh problems, peak learning rate {ph['lr']:g}"
                     f"{held}, "
                     f"{ph['warmup']} warm-up steps ({round(ph['wall_s'] / 60)} minutes on "
                     f"{_threads(ph.get('threads', 1))} of a shared 2-core machine; "
                     f"{ph.get('solution_tokens', 0):,} solution tokens).")
        retrain.append(_command(ph, init, out))
    minutes = round(sum(ph["wall_s"] for ph in phases) / 60)
    lines.append(f"- In all: {sum(ph['steps'] for ph in phases)} steps, {minutes} minutes.")
    running = ", ".join(f"{f} {v:.2f}" for f, v in log["running_exact"].items())
    final = phases[-1]
    cut = {"even": "of equal size", "least-padding": "cut where they leave the fewest padded slots"}
    batching = (f"{final.get('micro', LEGACY['micro'])} length-sorted micro-batches "
                f"{cut[final.get('cut', LEGACY['cut'])]}")
    try:
        rel = folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        rel = folder
    text = CARD.format(folder=rel, lengths=_lengths_text(), vocab=len(tokenizer), arch=arch,
                       phases="\n".join(lines), batching=batching, notes=notes, running=running, n=n, seed0=seed0,
                       table=markdown(table), retrain="\n".join(retrain))
    (folder / "README.md").write_text(text)
    return folder / "README.md"


# What was tried before this checkpoint (running exact match on fresh problems; pasted into the card).
TRIED = """
What was tried (same 1.1M-parameter model, seed 0 and one thread unless said; numbers
are the running exact match on fresh problems unless marked held-out):
- Run 1: batches of 32 mixed problems padded as one (38% padding), peak
  learning rate 2e-3, day offsets 1-20, times to sort 6:00-21:55 stated as
  "The storm was at 7:40." and written `7:40 the storm`, relations stated
  in any order and solved as `the storm before the party` per link in chain
  order. After 2,400 steps (28 minutes): clock 0.82, duration 0.89, weekday
  0.13 (day + offset, a 7 x 20 table, still at chance), relations 0.59,
  timestamps 0.13.
- Run 2: one family and chain length per step (no padding), peak 3e-3: the
  loss stalled at 0.66 at step 1,000 (run 1: 0.25), with spikes; stopped.
- Run 3: mixed batches again, as two length-sorted micro-batches of 2,560
  tokens in all; 2e-3; day offsets 1-9; one-digit hours to sort. At step
  1,600: clock 0.79, duration 0.63, weekday 0.90, relations 0.31,
  timestamps 0.11. Its outputs showed why: timestamps sorted the times but
  wrote the wrong event after them (the event stood before its time), and
  relations failed at the chain's first event (27 of 60 first errors), a
  search over every statement for one token.
- Run 4: timestamps stated "At 7:40 the storm began." (event after the
  time); relations stated so that each names an event already named, and
  solved by writing the order so far (each line adds one event at an end: a
  local step, not a global search). At step 1,900 (24 minutes): clock
  0.71, duration 0.64, weekday 0.93, relations 0.29, timestamps 0.18.
- Run 5: as run 4 with half the tokens per step (1,280) and 5,000 steps (31
  minutes): clock 0.96, duration 0.95, weekday 1.00, relations 0.91,
  timestamps 0.64. Of 24 timestamps failures, 18 wrote the right time and
  then the wrong event: every event stood after " the", so finding it meant
  matching the whole 4-token time; 6 miscopied a time's last digit.
- Run 6: as run 5, with timestamps stated "The storm began at 7:40." and
  written `the storm at 7:40` (the sort decision one token, the time copied
  after the event's unique name): worse at step 4,400 (clock 0.87,
  duration 0.85, weekday 1.00, relations 0.56, timestamps 0.34; run 5 at
  that step: 0.94, 0.91, 1.00, 0.84, 0.61), a reminder of how much the
  same recipe varies from run to run at this budget; stopped.
- Run 7 (seed 0), runs 8 and 10 (seeds 1 and 2), run 9 (seed 0, peak
  3e-3, 300 warm-up steps): as run 5, with the times of a problem on
  different hours, so that the one hour digit orders the events and names
  the event to copy (a one-token key instead of four), and 6,000 steps. At
  step 2,000 run 5 had clock 0.26 and weekday 0.74; run 7 had 0.08 and
  0.06 (stopped), run 9 0.01 and 0.03 (stopped at 1,350 to free the core).
  Run 8 ended at clock 0.96, duration 0.94, weekday 1.00, relations 0.79,
  timestamps 0.60; run 10 at 0.95, 0.91, 1.00, 0.51, 0.67. Of run 8's
  timestamps failures (29 of 60), every one sorted the times right and
  then wrote another problem's event after a time: the event sits five
  tokens after its hour in the problem, a longer reach than the minutes
  (copied right) need.
- Run 8 then two more phases from its weights with fresh problems (new
  seeds), a new warm-up and a lower peak (1e-3 for 3,000 steps, then 5e-4
  for 2,000): the first lifted relations to 0.98 and timestamps to 0.88
  (held-out answers), the second finished timestamps. This was the first
  committed checkpoint; it took about 80 minutes of one core, more than
  the half hour aimed at.
- From here on seed 1, two threads, one phase, a peak of 2e-3 held for a
  part of the steps (`--stable`) before the cosine: the peak is where
  relations and timestamps progress, the decay below about 1e-3 is where
  clock and duration become exact. Run 11, three phases squeezed into
  9,000 compiled steps: after 5,000, clock 0.84, duration 0.68, weekday
  1.00, relations 0.27, timestamps 0.09; stopped. Run 12, 8,000 steps held
  for 60%: at the end of the hold clock 0.06, duration 0.08, weekday 0.84,
  relations 0.40, timestamps 0.09; at 8,000 (33 minutes) 0.80, 0.50,
  1.00, 0.95, 0.85. Run 13, held for 40% (31 minutes): held-out answers
  0.99, 0.88, 1.00, 0.98, 0.88; 1,000 more steps at 5e-4 gave 1.00, 0.96,
  1.00, 0.97, 0.88.
- This checkpoint, run 14: run 13's recipe with three micro-batches cut
  where they leave the fewest padded slots (12% padding against 32% for
  equal halves) and the forward compiled (`torch.compile`): a step takes
  0.21-0.22 s against 0.235, and the run was ahead of run 13 from step
  4,000 on. 30 minutes, one phase, every family exact at the training
  lengths (the table above). One seed: runs of one recipe still differ a
  lot at this budget.

What made it work, in order of effect: solution formats in which every
token is a local step (a copy from a place named by a unique token, or a
small table), more steps (the families are learnt one after another:
weekday first, then clock and duration, relations, timestamps last), a
schedule that holds the peak learning rate for 40% of the steps and then
decays (relations and timestamps need the peak, clock and duration the
decay), batches of 1,280 tokens rather than 2,560 (more steps in the same
time), sampling families by their error, and little padding; the
least-padding cut and the compiled forward buy the last minutes. Runs of
the same recipe differ a lot at this budget (seeds 0-2 above).
"""


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m organism.evaluate --model reasoner", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="reasoner", help="'reasoner' (this evaluation)")
    ap.add_argument("--checkpoint", type=Path, default=REASONER_DIR,
                    help=f"checkpoint folder (default the committed one, {REASONER_DIR})")
    ap.add_argument("--n", type=int, default=100, help="held-out problems per family and split (default 100)")
    ap.add_argument("--seed0", type=int, default=HELD_OUT_SEED, help="first held-out seed")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--card", action="store_true", help="write README.md (the model card) into the checkpoint")
    ap.add_argument("--json", default=None, help="also write the table as JSON to this file")
    a = ap.parse_args(argv)
    if a.model != "reasoner":
        ap.error(f"--model {a.model!r}: this evaluation is the reasoner's (--model reasoner)")
    if a.seed0 < HELD_OUT_SEED:
        ap.error(f"--seed0 {a.seed0}: held-out seeds start at {HELD_OUT_SEED} (training uses those below)")
    torch.set_num_threads(a.threads)
    from tracing.registry import load_model

    lm = load_model(str(a.checkpoint))
    table = accuracy_table(lm, lm.tokenizer, a.n, a.seed0)
    print(markdown(table))
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1))
    if a.card:
        print(f"wrote {write_card(lm.model, lm.tokenizer, table, a.checkpoint, a.n, a.seed0, TRIED).absolute()}")


if __name__ == "__main__":
    main()
