"""A text problem and its solution trace as model inputs: the prompt, greedy
solutions, and the whole trace with its TokenLayout and dependency graph.

One prompt format for training, evaluation, generation and capture of the
reasoner (``--model reasoner``) and any text model on ``tasks/reasoning.py``
problems: ``<s>`` + problem + ``\\n``; the model writes the solution and
``</s>``.

    ids = prompt_ids(lm.tokenizer, problem)
    text = solve(lm, lm.tokenizer, problem)               # the greedy solution
    inputs, layout = trace_inputs(lm.tokenizer, problem)  # for tracing.capture
"""
from __future__ import annotations

import torch

from tasks.reasoning import SEP, Problem, token_graph

from .layout import Span, TokenLayout

MAX_NEW_TOKENS = 256  # the longest held-out solution is ~170 tokens


def _text(problem) -> str:
    return problem.problem if isinstance(problem, Problem) else str(problem)


def prompt_ids(tokenizer, problem: Problem | str) -> list[int]:
    """-> the prompt's token ids [T]: ``<s>``, the problem text, the newline
    after which the solution starts."""
    return [tokenizer.bos_token_id] + tokenizer(_text(problem) + SEP, add_special_tokens=False)["input_ids"]


def _model(lm_or_model):
    # A Hugging Face model has .generate (and a .model of its own: the decoder stack).
    return lm_or_model if hasattr(lm_or_model, "generate") else lm_or_model.model


@torch.no_grad()
def solve(lm_or_model, tokenizer, problem: Problem | str | list, max_new_tokens: int = MAX_NEW_TOKENS,
          batch_size: int = 64) -> str | list[str]:
    """Greedy solution text (without the prompt and ``</s>``) of one problem,
    or a list of them for a list of problems (left-padded batches of
    ``batch_size``). ``lm_or_model``: a tracing ``LoadedModel`` or the Hugging
    Face model itself."""
    model = _model(lm_or_model)
    many = isinstance(problem, (list, tuple))
    problems = list(problem) if many else [problem]
    out: list[str] = []
    pad = tokenizer.pad_token_id
    for i in range(0, len(problems), batch_size):
        prompts = [prompt_ids(tokenizer, p) for p in problems[i : i + batch_size]]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        gen = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=pad)
        for row in gen[:, width:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            out.append(tokenizer.decode(row, skip_special_tokens=True))
    return out if many else out[0]


def trace_inputs(tokenizer, problem: Problem, solution: str | None = None):
    """A plain prompt of the problem and its solution (``problem.solution``
    unless another, e.g. generated, one is given), for ``tracing.capture``.

    -> (inputs {'input_ids', 'attention_mask'} [1, T], TokenLayout): the
    layout's ``question`` span is the problem text, ``trailing`` the newline
    and the solution, ``system`` the ``<s>``; ``extra['offsets']`` are the
    character offsets in ``problem.problem + '\\n' + solution`` of every token
    (``<s>``: (0, 0)), ``extra['solution']`` the [start, end) token range of
    the solution, and, when the solution is the problem's own,
    ``extra['deps']`` its dependency graph over token indices
    (``tasks.reasoning.token_graph``)."""
    solution = problem.solution if solution is None else solution
    text = problem.problem + SEP + solution
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [tokenizer.bos_token_id] + enc["input_ids"]
    offsets = [(0, 0)] + [tuple(o) for o in enc["offset_mapping"]]
    n_problem = len(prompt_ids(tokenizer, problem)) - 1  # <s> + the problem's tokens, before the newline
    T = len(ids)
    extra = {"offsets": offsets, "solution": [n_problem + 1, T]}
    if solution == problem.solution:
        extra["deps"] = token_graph(problem, enc["offset_mapping"], shift=1)
    layout = TokenLayout(
        n_tokens=T, system=Span(0, 1), video=Span(1, 1), frames=[], frame_grid=(0, 0),
        question=Span(1, n_problem), question_text=Span(1, n_problem), options=[], trailing=Span(n_problem, T),
        last=T - 1, option_ids=[], extra=extra,
    )
    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, T, dtype=torch.long)}
    return inputs, layout
