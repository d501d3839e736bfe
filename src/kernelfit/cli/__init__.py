"""The `kernelfit` command line. Planning commands import neither torch nor transformers.

Every `UsageError` ends as one line on stderr and exit code 2; argparse errors too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import EXIT_USAGE, HealthCheckError, UsageError
from .args import Parser, add_machine_args, add_quant_args, machine_for as _machine, positive_int, preferences

def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kernelfit", description="Run any transformers model on the hardware it lands on.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)

    p = sub.add_parser("doctor", help="what this machine (or a profile) has, and what to fix")
    add_machine_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--save", metavar="FILE", help="write the machine profile to FILE (.toml or .json)")

    p = sub.add_parser("profiles", help="list the reference machines")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("plan", help="plan a model for this machine or a profile, with every reason")
    p.add_argument("model", help="model dir, config.json, .gguf, `smollm2-135m`, or a cached hub id")
    add_machine_args(p)
    p.add_argument("--context", type=positive_int("--context"), default=None,
                   help="tokens of context to budget for (default: 4096, or the model's maximum if smaller)")
    p.add_argument("--batch", type=positive_int("--batch"), default=1)
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32 (a preference)")
    p.add_argument("--attn", default="auto", help="attention implementation preference (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    add_quant_args(p)
    p.add_argument("--tune", action="store_true", help="measure candidates now (kernelfit bench) and use the winner")
    p.add_argument("--no-cache", action="store_true", help="ignore a cached bench winner")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("matrix", help="the support matrix (every profile x attention/dtype), from the catalog")
    p.add_argument("--markdown", action="store_true")

    from .run_cmd import add_run_parser

    add_run_parser(sub)
    from .serve_cmd import add_serve_parser

    add_serve_parser(sub)
    from .export_cmd import add_export_parser

    add_export_parser(sub)
    return parser


def _write_atomic(path: str, text: str) -> None:
    """Nothing half-written: write a temp file beside the target, then rename."""
    from ..paths import write_atomic

    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"cannot save to {path}: it is a directory; give a file name ending in .toml or .json")
    if not os.path.isdir(directory):
        raise UsageError(f"cannot save to {path}: directory {directory} does not exist")
    write_atomic(path, text)


def cmd_doctor(args) -> int:
    from .doctor import findings

    m = _machine(args)
    found = findings(m)
    if args.save:
        text = m.to_toml() if args.save.lower().endswith(".toml") else m.to_json() + "\n"
        _write_atomic(args.save, text)
    if args.json:
        print(json.dumps({"machine": m.to_dict(), "findings": [f.to_dict() for f in found]}, indent=2))
    else:
        from .render import render_machine

        print(render_machine(m, found))
        if args.save:
            print(f"\nsaved this machine's profile to {args.save} (use it with --profile {args.save})")
    return 0


def cmd_profiles(args) -> int:
    from ..profiles import load_profile, profile_names

    machines = [load_profile(n) for n in profile_names()]
    if args.json:
        print(json.dumps([{"name": m.name, "description": m.description,
                           "devices": [{"kind": d.kind, "name": d.name,
                                        "compute_capability": str(d.compute_capability) if d.compute_capability else None,
                                        "memory_gib": d.memory_gib} for d in m.accelerators],
                           "torch": m.software.torch} for m in machines], indent=2))
    else:
        from .render import render_profiles

        print(render_profiles(machines))
    return 0


def cmd_plan(args) -> int:
    if args.tune and args.profile:
        raise UsageError("--tune measures this machine; it cannot be combined with --profile")
    from ..api import make_plan

    # a cached bench winner measured this machine: never applied to a profile's plan
    p = make_plan(args.model, preferences(args), _machine(args), use_tune_cache=not (args.no_cache or args.profile
                                                                                  or args.tune))
    if args.tune:
        from .run_cmd import run_bench

        p = run_bench(p, args.json, save=True)[2] or p
    if args.json:
        from ..planner.report import plan_dict

        print(json.dumps(plan_dict(p), indent=2))
    else:
        from .render import render_plan

        print(render_plan(p))
    return 0


def cmd_matrix(args) -> int:
    from .matrix import support_matrix

    print(support_matrix(markdown=args.markdown))
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """kernelfit's own warnings as one stderr line; others as Python prints them."""
    if category.__module__.startswith("kernelfit"):
        text = " ".join(str(message).split()).removeprefix("kernelfit: ")
        print(f"kernelfit: warning: {text}", file=sys.stderr)
    else:
        import warnings

        print(warnings.formatwarning(message, category, filename, lineno, line).rstrip(), file=file or sys.stderr)


def _check_text_args(args) -> None:
    """Arguments that are not valid text (bytes that are not UTF-8 arrive as surrogates) fail now, not after
    the model has loaded."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise UsageError(f"--{name.rstrip('_').replace('_', '-')} is not valid UTF-8 text; check the "
                                     "terminal's encoding") from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    import warnings

    warnings.showwarning = _one_line_warning
    try:
        args = parser.parse_args(argv)
        _check_text_args(args)
        if args.version:
            from ..version import __version__

            print(f"kernelfit {__version__}")
            return 0
        if not args.command:
            parser.print_help()
            return EXIT_USAGE
        handler = {"doctor": cmd_doctor, "profiles": cmd_profiles, "plan": cmd_plan, "matrix": cmd_matrix}.get(args.command)
        if handler is None and args.command == "export":
            from .export_cmd import cmd_export

            handler = cmd_export
        if handler is None and args.command == "serve":
            from .serve_cmd import cmd_serve

            handler = cmd_serve
        if handler is None:
            from .run_cmd import COMMANDS

            handler = COMMANDS[args.command]
        return handler(args)
    except UsageError as exc:
        print(f"kernelfit: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a file the user named that cannot be written or read: their problem to fix
        where = f" {exc.filename}" if exc.filename else ""
        print(f"kernelfit: error: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except HealthCheckError as exc:
        print(f"kernelfit: health check failed: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("kernelfit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
