"""OpenAI's request and error shapes: parse and validate a request body into a typed Job spec, or raise an
ApiError with the status and the `{"error": {...}}` body OpenAI clients expect. No torch, no web framework."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_STOP = 4
MAX_TEMPERATURE = 2.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Sampling:
    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says (benchmarks)


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]  # {"role", "content": text}; images taken out into `images`
    images: list[str]  # data: URLs, in order
    sampling: Sampling
    stream: bool
    include_usage: bool


@dataclass
class CompletionRequest:
    model: str
    prompt: str | list[int]  # text, or token ids
    sampling: Sampling
    stream: bool
    include_usage: bool


def _int(body: dict, key: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        bound = f" between {lo} and {hi}" if hi is not None else f" >= {lo}"
        raise ApiError(400, f"'{key}' must be an integer{bound}, not {v!r}", key)
    return v


def _float(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v > hi \
            or (v <= lo if lo_open else v < lo):
        raise ApiError(400, f"'{key}' must be a number {'>' if lo_open else '>='} {lo} and <= {hi}, not {v!r}", key)
    return float(v)


def _sampling(body: dict) -> Sampling:
    max_tokens = _int(body, "max_completion_tokens", 1) or _int(body, "max_tokens", 1)
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP:
        stops = list(stop)
    else:
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOP} strings", "stop")
    if any(not s for s in stops):
        raise ApiError(400, "'stop' strings must not be empty", "stop")
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "'seed' must be an integer", "seed")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, "'ignore_eos' must be true or false", "ignore_eos")
    return Sampling(max_tokens, _float(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
                    _float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True), stops, seed, ignore_eos)


# Request fields this server does not implement yet: refused with a 400 that says so, never silently ignored (a
# client asking for JSON output or a tool call must not get free text it then fails to parse). A value that asks
# for nothing (tools [], tool_choice "none", response_format text, logprobs false) is accepted.
UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
    "function_call": "function calling", "response_format": "structured output (response_format)",
    "logprobs": "log probabilities", "top_logprobs": "log probabilities",
}
HARMLESS = {"tools": ([], None), "tool_choice": ("none", None), "functions": ([], None),
            "function_call": ("none", None), "logprobs": (False, None), "top_logprobs": (0, None)}


def _refuse_unsupported(body: dict) -> None:
    for key, what in UNSUPPORTED.items():
        if key not in body:
            continue
        value = body[key]
        if key == "response_format" and (value is None or (isinstance(value, dict) and value.get("type") == "text")):
            continue
        if value in HARMLESS.get(key, ()):
            continue
        raise ApiError(400, f"'{key}': {what} is not supported by this server yet; leave '{key}' out (the answer "
                       "would otherwise be free text)", key)


def _common(body) -> tuple[str, bool, bool]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _refuse_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required (a string; GET /v1/models lists it)", "model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    return model, stream, bool(options.get("include_usage"))


ROLES = ("system", "developer", "user", "assistant")


def parse_chat(body) -> ChatRequest:
    model, stream, usage = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    out, images = [], []
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") == "tool":
            raise ApiError(400, f"messages[{i}]: role 'tool' answers a tool call, and tool calling is not supported by "
                           "this server yet", f"messages[{i}]")
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] must be an object with a role of {', '.join(ROLES)}", f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str) or not url.startswith("data:"):
                        raise ApiError(400, "image_url parts must carry a data: URL (the server never downloads)",
                                       f"messages[{i}].content[{j}]")
                    images.append(url)
                    parts.append({"type": "image"})
                else:
                    raise ApiError(400, f"messages[{i}].content[{j}] must be a text or image_url part",
                                   f"messages[{i}].content[{j}]")
            text = parts
        else:
            raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", f"messages[{i}].content")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": text})
    return ChatRequest(model, out, images, _sampling(body), stream, usage)


def parse_completion(body) -> CompletionRequest:
    model, stream, usage = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                   for t in prompt):
        return CompletionRequest(model, list(prompt), _sampling(body), stream, usage)  # token ids, as OpenAI allows
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string or a list of token ids", "prompt")
    return CompletionRequest(model, prompt, _sampling(body), stream, usage)
