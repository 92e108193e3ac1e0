"""The reasoner: a small Llama trained here to solve temporal word problems
step by step (tasks/reasoning.py), the second organism (registry name
``reasoner``).

    from tracing.registry import load_model
    from tracing.traces import solve
    lm = load_model("reasoner")
    solve(lm, lm.tokenizer, "Mia left at 7:40. The bus took 35 minutes. When did Mia arrive?")
    # '7:40 + 0:35 = 8:15\\nAnswer: 8:15'

Its prompt format, generation and trace inputs are tracing/traces.py's
(``<s>`` + problem + ``\\n``; the model writes the solution and ``</s>``);
build.py makes the tokenizer and architecture, train.py trains it,
evaluate.py recomputes its model card.
"""
from __future__ import annotations

from pathlib import Path

from tracing.registry import LOCAL_MODELS

REASONER_DIR: Path = LOCAL_MODELS["reasoner"][0]  # organism/reasoner/checkpoint
