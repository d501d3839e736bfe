"""How a transformers checkpoint is read under llama.cpp's tensor names and layouts without writing a file: each
llama.cpp tensor a `Source` (a view of the checkpoint's own tensors: parts stacked by rows, rows and columns picked,
a converter's fix of small tensors' values), named by an architecture's `arrange(cfg, take)` function
(catalog/hybrid_checkpoints.py, catalog/converted_checkpoints.py) — what convert_hf_to_gguf.py's modify_tensors does,
as a pure function of config.json and the tensor names. A tensor no function uses, or one it needs and the checkpoint
lacks, refuses the checkpoint in one line (and at plan time: the plan then keeps transformers).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from ..errors import UsageError

# Multimodal configs whose text model the engine reads alone: model_type -> (the text model's config key, its tensors'
# prefix in place of "model.", the vision tower's prefix). Qwen3.5 and Qwen3.6 ship only as these
# (Qwen3_5ForConditionalGeneration); transformers' AutoModelForCausalLM loads their text model alone the same way
# (modeling_auto.py's "VLM compatibility" rows: qwen3_5 -> Qwen3_5ForCausalLM), and llama.cpp's converter writes it
# to the GGUF file, the vision tower to a separate mmproj file. The vision tower is not read: such a checkpoint
# answers text.
TEXT_OF_VLM = {"qwen3_5": ("text_config", "model.language_model.", "model.visual."),
               "qwen3_5_moe": ("text_config", "model.language_model.", "model.visual.")}
# tensors of the checkpoint no GGUF text model holds: Qwen3.5's multi-token-prediction block (llama.cpp keeps it for
# drafting; the engine does not run it)
SKIPPED_PREFIXES = ("mtp.",)


class Fix(Enum):
    """A change of a small tensor's values the converter makes."""

    PLUS_ONE = "plus_one"  # Qwen3.5's RMSNorms multiply by (1 + w): stored as 1 + w
    NEG_EXP = "neg_exp"  # Gated DeltaNet's and Mamba-2's decay: stored as A = -exp(A_log)


@dataclass(frozen=True)
class Source:
    """One llama.cpp tensor from the checkpoint's: `parts` stacked by rows (each viewed as [rows, last dim]; a 1-D
    tensor as [n, 1]), then `rows` and `cols` picked (None: all, in order), then `fix`."""

    parts: tuple[str, ...]
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    fix: Fix | None = None


class LayoutError(UsageError):
    """A checkpoint the layout cannot read: `problem` says why (the plan's reason), the message adds where and what
    to do (the reader's one line)."""

    def __init__(self, where: str, problem: str, todo: str):
        super().__init__(f"{where}: {problem}; {todo}")
        self.problem = problem


def text_config(cfg: dict) -> dict:
    """The config a checkpoint's text model is read from: a TEXT_OF_VLM config's text object (the top level's
    tie_word_embeddings over its own: transformers ties the wrapper's head by it), any other config as it is."""
    if not isinstance(cfg, dict) or cfg.get("model_type") not in TEXT_OF_VLM:
        return cfg
    text = cfg.get(TEXT_OF_VLM[cfg["model_type"]][0])
    if not isinstance(text, dict):
        raise UsageError(f"a {cfg['model_type']} config.json needs its `{TEXT_OF_VLM[cfg['model_type']][0]}` object; "
                         "fix the config")
    return {**text, **({"tie_word_embeddings": cfg["tie_word_embeddings"]} if "tie_word_embeddings" in cfg else {})}


def text_tensors(names, model_type: str | None) -> dict[str, str]:
    """The text model's tensor names -> the checkpoint's own: for a TEXT_OF_VLM checkpoint its language model's
    tensors as model.* (as a text checkpoint names them), its vision tower's left out; any other's as they are."""
    if model_type not in TEXT_OF_VLM:
        return {n: n for n in names}
    _, text, vision = TEXT_OF_VLM[model_type]
    return {("model." + n[len(text):] if n.startswith(text) else n): n for n in names if not n.startswith(vision)}


def read_layout(arrange, cfg: dict, names: set[str], where: str) -> dict[str, Source]:
    """llama.cpp's tensor name -> its Source, for a checkpoint with these tensor names whose architecture's
    `arrange(cfg, take)` names each tensor (catalog/converted_checkpoints.py picks it by model_type); a LayoutError
    for one it would not read, one it lacks, or a config.json without the sizes or with facts it does not run."""
    out: dict[str, Source] = {}
    take = Taker(names, where, out)
    take("token_embd.weight", "model.embed_tokens.weight")
    if "lm_head.weight" in names:
        take("output.weight", "lm_head.weight")
    try:
        arrange(cfg, take)
    except (KeyError, TypeError, ValueError) as exc:
        raise LayoutError(where, f"config.json lacks or mistypes {exc}", "fix the config") from None
    unused = sorted(n for n in names - take.used if not n.startswith(SKIPPED_PREFIXES))
    if unused:
        raise LayoutError(where, f"tensor {unused[0]} is not one the engine's recipe reads"
                          + (f" (+{len(unused) - 1} more)" if len(unused) > 1 else ""),
                          "--quantization none loads it through transformers")
    return out


class Taker:
    """Records each llama.cpp tensor's Source and the checkpoint names it used."""

    def __init__(self, names: set[str], where: str, out: dict):
        self.names, self.where, self.out, self.used = names, where, out, set()

    def __call__(self, ours: str, *parts: str, rows=None, cols=None, fix: Fix | None = None) -> None:
        missing = [p for p in parts if p not in self.names]
        if missing:
            raise LayoutError(self.where, f"tensor {missing[0]} is missing from the checkpoint", "re-save it")
        self.used.update(parts)
        self.out[ours] = Source(tuple(parts), rows, cols, fix)

    def has(self, name: str) -> bool:
        return name in self.names

    def refuse(self, problem: str) -> None:
        """A config.json fact the engine does not run (a LayoutError: the plan's reason, the reader's one line)."""
        raise LayoutError(self.where, problem, "--quantization none loads it through transformers")

    def experts(self, b: str, p: str, n: int, size: int, names: dict[str, str], fused: tuple[str, str]) -> None:
        """A layer's experts: one tensor each (`names`: llama.cpp's gate/up/down -> the expert's own leaf, as
        transformers saves them) or transformers' fused [experts, 2 size, hidden] gate|up and [experts, hidden, size]
        down (`fused`: their leaves) — stacked by rows as llama.cpp's 3-D ffn_*_exps."""
        gate_up, down = (p + x for x in fused)
        if self.has(gate_up) or not names:  # (neither: the fused tensors are named missing)
            rows = np.arange(n)[:, None] * 2 * size
            self(b + "ffn_gate_exps.weight", gate_up, rows=(rows + np.arange(size)).reshape(-1))
            self(b + "ffn_up_exps.weight", gate_up, rows=(rows + size + np.arange(size)).reshape(-1))
            self(b + "ffn_down_exps.weight", down)
            return
        for ours, leaf in names.items():
            self(b + f"ffn_{ours}_exps.weight", *(p + f"{e}.{leaf}.weight" for e in range(n)))
