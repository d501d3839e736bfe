"""`kernelfit export {vllm,sglang} MODEL [--profile P] [--json]`: the engine's command line for the plan."""

from __future__ import annotations

import json
import shlex


def add_export_parser(sub) -> None:
    from .args import add_machine_args, positive_int

    p = sub.add_parser("export", help="the vLLM / SGLang command line for a model on this machine or a profile")
    p.add_argument("engine", choices=("vllm", "sglang"))
    p.add_argument("model", help="model dir, config.json, .gguf, `smollm2-135m`, or a cached hub id")
    add_machine_args(p)
    p.add_argument("--context", type=positive_int("--context"), default=None, help="--max-model-len / --context-length")
    p.add_argument("--json", action="store_true", help='{"engine", "argv", "env", "reasons", "warnings"}')


def cmd_export(args) -> int:
    from ..export.engine_args import export
    from ..model.spec import load_model_spec
    from .args import machine_for as _machine

    machine = _machine(args)
    spec = load_model_spec(args.model)
    if args.context is not None and spec.text.max_positions and args.context > spec.text.max_positions:
        from ..errors import UsageError

        raise UsageError(f"--context {args.context} exceeds {spec.name}'s max_position_embeddings "
                         f"({spec.text.max_positions})")
    out = export(args.engine, machine, spec, args.context)
    if args.json:
        print(json.dumps(out.to_dict(), indent=2))
        return 0
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in out.env.items())
    print((env + " " if env else "") + shlex.join(out.argv))
    for r in out.reasons:
        print(f"# {r}")
    for w in out.warnings:
        print(f"# warning: {w}")
    return 0
