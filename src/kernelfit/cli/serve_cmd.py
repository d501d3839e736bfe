"""`kernelfit serve`: load with the plan, then an OpenAI-compatible endpoint (FastAPI + uvicorn)."""

from __future__ import annotations

import signal
import sys
import threading

from ..errors import UsageError


def add_serve_parser(sub) -> None:
    from .args import add_draft_args, add_quant_args, positive_int

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP endpoint for a model, loaded with its plan")
    p.add_argument("model", nargs="?", default="smollm2-135m", help="model (default: smollm2-135m, bundled)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int("--port"), default=8000)
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1/ requests")
    p.add_argument("--served-model-name", help="the model id clients use (default: the model's name)")
    p.add_argument("--engine", choices=("kernelfit", "vllm"), default="kernelfit",
                   help="vllm: launch vLLM's server on the checkpoint kernelfit prepared, with the exported flags")
    p.add_argument("--engine-python", metavar="PATH", help="the python of vLLM's virtualenv (default: .engines/vllm)")
    p.add_argument("--max-batch", type=positive_int("--max-batch"), default=8, help="requests decoded together")
    p.add_argument("--queue-size", type=positive_int("--queue-size"), default=64,
                   help="waiting requests beyond this get 503")
    p.add_argument("--cache-ram", type=int, default=1024, metavar="MIB",
                   help="RAM for the prompts of conversations whose sequence another request took, so their next "
                        "turns are not prefilled again (llama-server's --cache-ram; 0: none)")
    p.add_argument("--request-timeout", type=positive_int("--request-timeout"), default=600, metavar="SECONDS",
                   help="a request still queued or generating this long after it arrived ends with a 504 "
                        "(llama-server's --timeout default, 600)")
    p.add_argument("--shutdown-timeout", type=positive_int("--shutdown-timeout"), default=30, metavar="SECONDS",
                   help="on SIGTERM, running requests may finish for this long (new ones get 503)")
    p.add_argument("--attn", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--context", type=positive_int("--context"), default=None, help="the longest prompt + answer")
    p.add_argument("--device", default="auto")
    add_quant_args(p)
    add_draft_args(p)
    p.add_argument("--no-cache", action="store_true", help="ignore a cached bench winner")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--allow-pickle", action="store_true")


def cmd_serve(args) -> int:
    if args.port > 65535:
        raise UsageError(f"--port must be at most 65535, not {args.port}")
    from ..api import make_draft_plan, make_plan
    from ..loader.load import check_loadable
    from .args import preferences
    from .run_cmd import _err, _summary

    plan = make_plan(args.model, preferences(args), use_tune_cache=not args.no_cache)  # one sequence's KV cache
    check_loadable(plan, args.allow_pickle)
    if args.engine == "vllm":
        if args.draft_model:
            raise UsageError("--draft-model is kernelfit's engine's; with --engine vllm pass vLLM's own "
                             "speculative config, or leave it out")
        return _serve_with_vllm(args, plan)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UsageError("kernelfit serve needs fastapi and uvicorn: pip install 'kernelfit[serve]'") from None
    draft_plan = make_draft_plan(plan)
    _err(_summary(plan))
    slots = _slots(plan, args.max_batch)  # the sequences served at once: as many as fit, up to --max-batch
    from ..loader.load import load_plan
    from ..serve.app import create_app
    from ..serve.engine import Engine

    loaded = load_plan(plan, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                       progress=lambda m: _err(f"kernelfit: {m}"))
    if draft_plan is not None:
        from ..loader.draft import attach_draft

        attach_draft(loaded, draft_plan, args.draft_model, lambda m: _err(f"kernelfit: draft: {m}"))
    model_id = args.served_model_name or plan.model.name
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=slots, queue_size=args.queue_size,
                    background=False, request_timeout=args.request_timeout,
                    prefix_store_bytes=max(args.cache_ram, 0) << 20)
    if engine.lean:
        _err(f"kernelfit: the packed engine decodes up to {engine.max_batch} requests together (continuous batching)"
             if engine.max_batch > 1 else "kernelfit: note: the packed engine serves one request at a time here (its "
             "C++ step is not built: TorchScript has one KV cache)")
    app = create_app(loaded, model_id, plan.preferences.context, api_key=args.api_key, engine=engine)
    url = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}/v1"
    _err(f"kernelfit: serving {model_id} at {url} (OpenAI API: /v1/chat/completions, /v1/completions, /v1/models; "
         f"/health){' with an API key' if args.api_key else ''}")
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    # HTTP on a helper thread, decoding on the main thread (where PyTorch's CPU kernels run fastest)
    http = threading.Thread(target=server.run, name="kernelfit-http", daemon=True)

    def stop(*_):
        server.should_exit = True
        engine.close()

    # SIGTERM: drain — no new requests (503), the running ones finish (or fail when --shutdown-timeout is up), then
    # the HTTP server closes; Ctrl-C stops at once
    signal.signal(signal.SIGTERM, lambda *_: engine.drain(args.shutdown_timeout))
    http.start()
    try:
        engine.serve(until=lambda: not http.is_alive())
    except KeyboardInterrupt:
        pass
    stop()
    http.join(timeout=10)
    if not server.started:
        print(f"kernelfit: error: could not start the server on {args.host}:{args.port} (in use?)", file=sys.stderr)
        return 2
    return 0


def _slots(plan, asked: int) -> int:
    """The sequences served at once: --max-batch, or as many as the plan's memory holds with a KV cache of the full
    context each (said in one line either way; the plan fits one, or there would be no plan)."""
    from ..planner.memory import gib, sequences_that_fit
    from .run_cmd import _err

    fit = sequences_that_fit(plan.memory, plan.preferences.batch)
    per = plan.memory.kv_cache / plan.preferences.batch
    kind = plan.kernels["kv_cache"].value if "kv_cache" in plan.kernels else plan.dtype.value
    if fit < asked:
        _err(f"kernelfit: note: {asked} sequences of {plan.preferences.context} tokens need {gib(per * asked):.2f} GiB "
             f"of KV cache ({kind}); {fit} fit beside the model: serving {fit} at once (--context or --max-batch "
             "to change it)")
        return fit
    _err(f"kernelfit: KV cache: up to {asked} sequences of {plan.preferences.context} tokens, {gib(per):.2f} GiB each "
         f"({kind}); {fit} would fit")
    return asked


def _serve_with_vllm(args, plan) -> int:
    """vLLM's server on the checkpoint kernelfit prepared (a converted GGUF, an unpacked checkpoint)."""
    from ..export.engine_args import export
    from ..export.launch import engine_python, run_vllm, server_argv
    from ..model.spec import load_model_spec
    from .run_cmd import _err

    python = engine_python(args.engine_python)
    spec = plan.model
    say = lambda m: _err(f"kernelfit: {m}")  # noqa: E731
    directory = spec.model_dir
    if spec.format == "gguf":
        from ..loader.gguf_cache import materialise

        directory = str(materialise(spec, say))  # vLLM's core cannot read GGUF: hand it the safetensors
    elif plan.quantization is not None and plan.quantization.dequantize_first:
        from ..loader.dequantize import dequantized_dir

        directory = str(dequantized_dir(spec, say))
    prepared = load_model_spec(directory)
    model_id = args.served_model_name or spec.name
    out = export("vllm", plan.machine, prepared, plan.preferences.context,
                 None if args.dtype == "auto" else args.dtype)
    argv = out.argv
    argv[argv.index("--served-model-name") + 1] = model_id
    for r in out.reasons + [f"warning: {w}" for w in out.warnings]:
        _err(f"kernelfit: vllm: {r}")
    cmd = server_argv(python, argv, args.host, args.port, args.api_key)
    _err("kernelfit: starting " + " ".join(f"{k}={v}" for k, v in out.env.items()) + " " + " ".join(cmd))
    host = args.host if ":" not in args.host else f"[{args.host}]"
    return run_vllm(cmd, out.env, f"http://{host}:{args.port}", say)
