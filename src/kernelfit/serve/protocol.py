"""OpenAI's request and error shapes: parse and validate a request body into a typed Job spec, or raise an
ApiError with the status and the `{"error": {...}}` body OpenAI clients expect. No torch, no web framework."""

from __future__ import annotations

import math
import re
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
    constraint: "Constraint | None" = None
    tools: list = field(default_factory=list)  # as sent: the chat template may show them to the model


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


def _sampling(body: dict, defaults=None) -> Sampling:
    """defaults: the checkpoint's model.generation.GenerationDefaults, used where the request does not say."""
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
    temperature = defaults.temperature if defaults is not None and defaults.temperature is not None else 1.0
    top_p = defaults.top_p if defaults is not None and defaults.top_p is not None else 1.0
    return Sampling(max_tokens, _float(body, "temperature", temperature, 0.0, MAX_TEMPERATURE),
                    _float(body, "top_p", top_p, 0.0, 1.0, lo_open=True), stops, seed, ignore_eos)


# Request fields this server does not implement: refused with a 400 that says so, never silently ignored. A value
# that asks for nothing (logprobs false, functions []) is accepted.
UNSUPPORTED = {"functions": "the legacy 'functions' (use 'tools')", "function_call": "the legacy 'function_call' "
               "(use 'tool_choice')", "logprobs": "log probabilities", "top_logprobs": "log probabilities"}
HARMLESS = {"functions": ([], None), "function_call": ("none", None), "logprobs": (False, None),
            "top_logprobs": (0, None)}
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names


@dataclass
class Constraint:
    """What the output must be, checked token by token (serve/structured.py): JSON matching `schema`, or (tools) one
    call {"name": ..., "arguments": {...}} of the named functions, or free text not starting with "{" (auto)."""
    kind: str  # "json" or "tool"
    schema: dict
    free_text: bool = False  # tool_choice "auto": the model may answer in text instead


def _refuse_unsupported(body: dict) -> None:
    for key, what in UNSUPPORTED.items():
        if key in body and body[key] not in HARMLESS.get(key, ()):
            raise ApiError(400, f"'{key}': {what} is not supported by this server; leave '{key}' out", key)


def _response_format(body: dict) -> Constraint | None:
    rf = body.get("response_format")
    if rf is None or (isinstance(rf, dict) and rf.get("type") == "text"):
        return None
    if not isinstance(rf, dict) or rf.get("type") not in ("json_object", "json_schema"):
        raise ApiError(400, "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                       "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}",
                       "response_format")
    if rf["type"] == "json_object":
        return Constraint("json", {"type": "object"})
    spec = rf.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema"), dict):
        raise ApiError(400, "'response_format.json_schema' needs a 'name' (string) and a 'schema' (object)",
                       "response_format")
    return Constraint("json", spec["schema"])


def _tools(body: dict) -> Constraint | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools in (None, []):
        if choice not in (None, "none", "auto"):
            raise ApiError(400, "'tool_choice' names a tool, but 'tools' is empty", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise ApiError(400, "'tools' must be a list of {\"type\": \"function\", \"function\": {...}}", "tools")
    calls = {}
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not TOOL_NAME.match(fn["name"]):
            raise ApiError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": "
                           "[A-Za-z0-9_-]{1,64}, \"parameters\": {...}}}", f"tools[{i}]")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON schema object", f"tools[{i}]")
        calls[fn["name"]] = params
    if choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if name not in calls:
            raise ApiError(400, f"'tool_choice' names {name!r}, which is not in 'tools'", "tool_choice")
        calls = {name: calls[name]}
    elif choice not in (None, "auto", "required"):
        raise ApiError(400, "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                       "\"function\": {\"name\": ...}}", "tool_choice")
    one = [{"type": "object", "properties": {"name": {"const": n}, "arguments": p}, "required": ["name", "arguments"],
            "additionalProperties": False} for n, p in calls.items()]
    return Constraint("tool", one[0] if len(one) == 1 else {"anyOf": one}, free_text=choice in (None, "auto"))


def _constraint(body: dict) -> Constraint | None:
    json_out, tool = _response_format(body), _tools(body)
    if json_out and tool:
        raise ApiError(400, "'response_format' and a tool call cannot both shape one answer; send one of them",
                       "response_format")
    return json_out or tool


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


ROLES = ("system", "developer", "user", "assistant", "tool")


def parse_chat(body, defaults=None) -> ChatRequest:
    model, stream, usage = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    out, images = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] must be an object with a role of {', '.join(ROLES)}", f"messages[{i}]")
        content = m.get("content")
        extra = _tool_fields(m, i)
        if content is None and "tool_calls" in extra:
            text = ""
        elif isinstance(content, str):
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
        out.append({"role": role, "content": text, **extra})
    return ChatRequest(model, out, images, _sampling(body, defaults), stream, usage, _constraint(body),
                       body.get("tools") or [])


def _tool_fields(m: dict, i: int) -> dict:
    """An assistant message's tool_calls, a tool message's tool_call_id: checked, kept for the chat template."""
    extra = {}
    if m["role"] == "tool":
        if not isinstance(m.get("tool_call_id"), str):
            raise ApiError(400, f"messages[{i}]: a 'tool' message needs the 'tool_call_id' it answers", f"messages[{i}]")
        extra["tool_call_id"] = m["tool_call_id"]
    calls = m.get("tool_calls")
    if calls is not None:
        ok = m["role"] == "assistant" and isinstance(calls, list) and all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
            and isinstance(c["function"].get("arguments", ""), str) for c in calls)
        if not ok:
            raise ApiError(400, f"messages[{i}].tool_calls must be an assistant's list of {{\"function\": {{\"name\", "
                           "\"arguments\"}}}}", f"messages[{i}]")
        extra["tool_calls"] = calls
    return extra


def parse_completion(body, defaults=None) -> CompletionRequest:
    model, stream, usage = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                   for t in prompt):
        return CompletionRequest(model, list(prompt), _sampling(body, defaults), stream, usage)  # token ids (OpenAI)
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string or a list of token ids", "prompt")
    return CompletionRequest(model, prompt, _sampling(body, defaults), stream, usage)
