"""A draft model beside the model a plan runs (`--draft-model`, llama.cpp's `-md`): both must run on kernelfit's
engine (the target checks drafts in one multi-row step of its C++ decode step; the draft decodes ahead with its own
KV cache), the draft without recurrent layers, and they must share a tokenizer. All of it is checked from the plans
and the tokenizers (check_draft_plans), so bad input fails before any weights are read."""

from __future__ import annotations

from ..engine.draft_model import DraftModel, size_mismatch, vocabulary_mismatch
from ..errors import UsageError
from ..planner.hf_args import lean_runner
from ..planner.types import Plan


def check_draft_plans(target: Plan, draft: Plan, name: str) -> None:
    if not lean_runner(target):
        raise UsageError(f"--draft-model needs kernelfit's engine for {target.model.name}, and its plan runs it "
                         f"through transformers; leave out --draft-model")
    if not lean_runner(draft):
        raise UsageError(f"the draft model {name} does not run on kernelfit's engine here (its plan runs "
                         f"transformers); give a GGUF file or a checkpoint the engine reads, or leave out "
                         f"--draft-model")
    if draft.model.text.recurrent_layers:
        raise UsageError(f"the draft model {name} has recurrent layers, whose state cannot be taken back past a "
                         f"rejected draft; give an attention-only draft model, or leave out --draft-model")
    a, b = target.model.text.vocab_size, draft.model.text.vocab_size
    why = size_mismatch(a, b) if a and b else None  # from the headers: no tokenizer read for a plain mismatch
    if why is None:
        from ..engine.runner import load_tokenizer

        why = vocabulary_mismatch(load_tokenizer(target.model), load_tokenizer(draft.model))
    if why is not None:
        raise UsageError(f"the draft model {name} does not share {target.model.name}'s tokenizer ({why}); give a "
                         f"draft of the same family (e.g. SmolLM2-135M for a SmolLM2 model), or leave out "
                         f"--draft-model")


def attach_draft(loaded, draft_plan: Plan, name: str, progress=None) -> DraftModel:
    """Load the draft model of `draft_plan` (checked by check_draft_plans) and give it to the loaded target's runner:
    its drafts replace prompt lookup."""
    from .load import load_plan

    if not loaded.model.can_speculate:
        raise UsageError(f"{loaded.plan.model.name} checks drafts only through kernelfit's C++ step, which does not "
                         f"run it here; leave out --draft-model")
    loaded.model.draft = DraftModel(load_plan(draft_plan, progress=progress).model, name)
    return loaded.model.draft
