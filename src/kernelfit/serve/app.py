"""The OpenAI-compatible ASGI app: /v1/chat/completions (streaming and not), /v1/completions, /v1/models,
/health, /metrics (Prometheus). Errors come in OpenAI's shape with their status; the model is served by
serve.engine."""

# no `from __future__ import annotations` here: FastAPI reads the route signatures' annotations at runtime

import asyncio
import json
import secrets
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..model.generation import generation_defaults
from .engine import Busy, Engine, Job, ShuttingDown
from .metrics import CONTENT_TYPE, Metrics
from .structured import Grammars, tool_calls
from .protocol import ApiError, parse_chat, parse_completion


def create_app(loaded, model_id: str, context: int, api_key: str | None = None, engine: Engine | None = None):
    engine = engine or Engine(loaded.model, loaded.tokenizer)
    processor = loaded.tokenizer
    tok = getattr(processor, "tokenizer", None) or processor
    vision = any(s.role == "vision" for s in loaded.plan.model.sub_models)
    # the checkpoint's generation_config.json: sampling defaults where a request does not say (as vLLM's server)
    defaults = generation_defaults(loaded.plan.model.model_dir, loaded.plan.model.gguf_file)
    created = int(time.time())
    app = FastAPI(title="kernelfit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    metrics = engine.metrics = Metrics(engine)
    routes = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"}

    def error(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # unknown routes, wrong methods: OpenAI's shape too
        return error(ApiError(exc.status_code, str(exc.detail), type_="invalid_request_error"))

    @app.exception_handler(Exception)
    async def internal(request, exc):
        return error(ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error"))

    @app.middleware("http")
    async def auth(request: Request, call_next):
        path = request.url.path
        if api_key and path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given, f"Bearer {api_key}"):
                response = error(ApiError(401, "invalid or missing API key (Authorization: Bearer ...)",
                                          type_="authentication_error", code="invalid_api_key"))
                metrics.requests.labels(path if path in routes else "other", "401").inc()
                return response
        response = await call_next(request)
        metrics.requests.labels(path if path in routes else "other", str(response.status_code)).inc()
        return response

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.get("/health")
    async def health():
        b = engine.batcher
        batched = {"mode": "continuous", "largest": b.largest, "steps": b.steps, "active": len(b.active),
                   "prefix_store": {"prompts": len(b.pool.store.entries),
                                    "mib": round(b.pool.store.nbytes / 2**20, 1)}} \
            if b is not None else {"mode": "static" if engine.max_batch > 1 else "one at a time",
                                   "largest": max(engine.batches, default=0)}
        return {"status": "ok", "model": model_id, "queued": engine.jobs.qsize(), "max_batch": engine.max_batch,
                "batched": batched, "runner": "kernelfit packed CPU runner" if engine.lean else "transformers",
                "sampling_defaults": {"temperature": defaults.temperature, "top_p": defaults.top_p,
                                      "from": defaults.source}}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "kernelfit", "max_model_len": context}]}

    async def body_of(request: Request):
        try:
            return json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None

    def check_model(name: str) -> None:
        if name != model_id:
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{model_id}'", "model",
                           code="model_not_found")

    def job_for(ids: list[int], sampling, extra=None) -> Job:
        room = context - len(ids)
        if room < 1 or (sampling.max_tokens or 1) > room:
            raise ApiError(400, f"this model's context is {context} tokens; the prompt has {len(ids)} and "
                           f"{sampling.max_tokens or 1} more were requested — shorten the prompt or lower max_tokens",
                           "messages", code="context_length_exceeded")
        return Job(ids, sampling, min(sampling.max_tokens or room, room), asyncio.get_running_loop(),
                   asyncio.Queue(), extra)

    def chat_inputs(req) -> tuple[list[int], dict | None]:
        if req.images:
            if not vision:
                raise ApiError(400, f"'{model_id}' is a text-only model; image_url parts need a vision-language "
                               "model", "messages")
            from ..errors import UsageError
            from ..loader.generate import model_inputs
            from ..loader.images import load_image

            try:
                images = [load_image(u) for u in req.images]
            except UsageError as exc:
                raise ApiError(400, str(exc), "messages") from None
            text = processor.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=False)
            enc = model_inputs(loaded.model, processor(text=text, images=images, return_tensors="pt"))
            ids = enc.pop("input_ids")[0].tolist()
            enc.pop("attention_mask", None)
            return ids, enc
        messages = [{**m, "content": m["content"] if isinstance(m["content"], str) else
                     "".join(p["text"] for p in m["content"] if p["type"] == "text")} for m in req.messages]
        template = getattr(processor, "chat_template", None)
        if template:
            ids = render_chat(processor, template, messages, req.tools)
        else:
            ids = tok("\n".join(m["content"] for m in messages) + "\n")["input_ids"]
        return list(ids), None

    # token-id prompts: ids the model has rows for (a tokenizer may name fewer than the embedding's rows)
    vocab = next((s.vocab_size for s in loaded.plan.model.sub_models if s.role == "text" and s.vocab_size), None)

    def prompt_ids(prompt) -> list[int]:
        if isinstance(prompt, str):
            return list(tok(prompt)["input_ids"])
        if vocab is not None and max(prompt) >= vocab:
            raise ApiError(400, f"token id {max(prompt)} is outside the vocabulary (0..{vocab - 1})", "prompt")
        return prompt

    def render_chat(processor, template: str, messages: list[dict], tools: list) -> list[int]:
        """The chat template's prompt; tools shown where the template shows them. A template that refuses tool
        messages or calls (one that only alternates user and assistant) gets them as text: the call as its JSON, the
        result as a user turn naming the call."""
        kw = {"tools": tools} if tools and "tools" in template else {}

        def apply(msgs):
            ids = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                **kw)["input_ids"]
            return ids[0] if ids and isinstance(ids[0], list) else ids

        try:
            return list(apply(messages))
        except Exception:  # noqa: BLE001 - jinja's raise_exception, or a template reading fields it lacks
            if not any(m["role"] == "tool" or "tool_calls" in m for m in messages):
                raise
        plain = []
        for m in messages:
            if m["role"] == "tool":
                plain.append({"role": "user", "content": f"[result of tool call {m['tool_call_id']}] {m['content']}"})
            elif "tool_calls" in m:
                calls = [{"name": c["function"]["name"], "arguments": c["function"].get("arguments", "")}
                         for c in m["tool_calls"]]
                plain.append({"role": "assistant", "content": (m["content"] or "") + json.dumps(calls)})
            else:
                plain.append(m)
        return list(apply(plain))

    grammars = Grammars(tok, vocab or (len(tok.tokens) if hasattr(tok, "token_bytes") else len(tok)), engine.eos)

    def constrain(job: Job, constraint) -> None:
        if constraint is not None:
            job.matcher = grammars.matcher(grammars.grammar(constraint))

    def submit(job: Job) -> None:
        try:
            engine.submit(job)
        except Busy:
            raise ApiError(503, "the server is busy (its queue is full); retry shortly", type_="server_error",
                           code="server_overloaded") from None
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down; retry on another server", type_="server_error",
                           code="server_shutting_down") from None

    async def collect(job: Job) -> tuple[str, str, int, int, int]:
        parts = []
        while True:
            event = await job.events.get()
            if event[0] == "text":
                parts.append(event[1])
            elif event[0] == "done":
                return "".join(parts), event[1], event[2], event[3], event[4]
            else:
                raise failure(event)

    def failure(event) -> ApiError:
        """The error a request's failure event becomes: its --request-timeout (504), or the step failed (500)."""
        if event[0] == "timeout":
            return ApiError(504, event[1], type_="server_error", code="timeout")
        return ApiError(500, f"generation failed: {event[1]}", type_="server_error")

    def usage(p: int, c: int, cached: int = 0) -> dict:
        # cached: prompt tokens not prefilled again (a chat's earlier turns), reported where OpenAI reports them
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "prompt_tokens_details": {"cached_tokens": cached}}

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def stream(job: Job, chunk, include_usage: bool, tool_mode: bool = False):
        held = []  # a tool request's text: a call is sent whole once complete, text as it was
        try:
            yield sse(chunk(None, None, first=True))
            while True:
                event = await job.events.get()
                if event[0] == "text" and tool_mode:
                    held.append(event[1])
                elif event[0] == "text":
                    yield sse(chunk(event[1], None))
                elif event[0] == "done":
                    finish = event[1]
                    if tool_mode:
                        calls = tool_calls("".join(held)) if finish == "stop" else None
                        yield sse(chunk(calls if calls else "".join(held), None))
                        finish = "tool_calls" if calls else finish
                    yield sse(chunk(None, finish))
                    if include_usage:
                        yield sse(dict(chunk(None, None), choices=[], usage=usage(event[2], event[3], event[4])))
                    break
                else:
                    yield sse(failure(event).body())
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled.set()  # the client left (or the stream ended): the engine drops the row

    async def respond(job: Job, req, prefix: str, chunk, final, tool_mode: bool = False):
        """A stream of chunks, or one response with the whole text and the usage."""
        rid, now = f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            return StreamingResponse(stream(job, lambda text, finish, first=False: chunk(rid, now, text, finish, first),
                                            req.include_usage, tool_mode), media_type="text/event-stream")
        try:
            text, finish, p, c, cached = await collect(job)
        except ApiError as exc:
            return error(exc)
        finally:
            job.cancelled.set()
        kind, choice = final(text, finish)
        return {"id": rid, "object": kind, "created": now, "model": model_id, "choices": [choice],
                "usage": usage(p, c, cached)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            req = parse_chat(await body_of(request), defaults)
            check_model(req.model)
            ids, extra = chat_inputs(req)
            job = job_for(ids, req.sampling, extra)
            constrain(job, req.constraint)
            submit(job)
        except ApiError as exc:
            return error(exc)
        tool_mode = req.constraint is not None and req.constraint.kind == "tool"

        def chunk(rid, now, text, finish, first=False):
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            if isinstance(text, list):  # a tool call, sent whole when its JSON is complete
                delta = {"tool_calls": [dict(c, index=i) for i, c in enumerate(text)]}
            return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        def final(text, finish):
            calls = tool_calls(text) if tool_mode and finish == "stop" else None
            message = {"role": "assistant", "content": None, "tool_calls": calls} if calls else \
                {"role": "assistant", "content": text}
            return "chat.completion", {"index": 0, "message": message,
                                       "finish_reason": "tool_calls" if calls else finish}

        return await respond(job, req, "chatcmpl", chunk, final, tool_mode)

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            req = parse_completion(await body_of(request), defaults)
            check_model(req.model)
            job = job_for(prompt_ids(req.prompt), req.sampling)
            submit(job)
        except ApiError as exc:
            return error(exc)
        def chunk(rid, now, text, finish, first=False):
            return {"id": rid, "object": "text_completion", "created": now, "model": model_id,
                    "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]}

        def final(text, finish):
            return "text_completion", {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

        return await respond(job, req, "cmpl", chunk, final)

    return app
