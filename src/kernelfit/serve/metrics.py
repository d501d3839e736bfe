"""`/metrics` in Prometheus' text format (prometheus_client): what an operator graphs for an LLM server — requests by
endpoint and outcome, the queue and the running batch, prompt / generated / prefix-cache tokens, time to first token,
the latency between tokens, and the requests each decode step held (vLLM's `vllm:` metrics name the same things).

Each app has its own registry, so that several servers in one process (tests) count apart. The engine thread records
tokens and steps, the event loop records requests; prometheus_client's instruments are thread-safe."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - app.py's response type

# seconds: a first token comes after a prompt's prefill (ms to tens of s on a CPU); tokens come 2-100 ms apart here
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)


class Metrics:
    def __init__(self, engine):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("kernelfit_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("kernelfit_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("kernelfit_generation_tokens", "tokens generated", registry=r)
        self.cached_tokens = Counter("kernelfit_prefix_cache_hit_tokens",
                                     "prompt tokens whose keys and values came from the prefix cache", registry=r)
        self.cache_hits = Counter("kernelfit_prefix_cache_hits", "requests that reused a cached prefix", registry=r)
        self.finished = Counter("kernelfit_request_finished", "finished generations by finish reason", ["reason"],
                                registry=r)
        self.ttft = Histogram("kernelfit_time_to_first_token_seconds", "from the request's arrival to its first "
                              "token", buckets=TTFT_BUCKETS, registry=r)
        self.inter_token = Histogram("kernelfit_inter_token_latency_seconds", "between a request's consecutive tokens",
                                     buckets=TOKEN_BUCKETS, registry=r)
        self.batch = Histogram("kernelfit_batch_size", "requests one decode step advanced", buckets=BATCH_BUCKETS,
                               registry=r)
        Gauge("kernelfit_requests_waiting", "requests queued, not yet started", registry=r).set_function(
            lambda: engine.jobs.qsize())
        Gauge("kernelfit_requests_running", "requests being prefilled or decoded", registry=r).set_function(
            lambda: engine.running())
        Gauge("kernelfit_max_batch", "requests that may decode together", registry=r).set_function(
            lambda: engine.max_batch)
        Gauge("kernelfit_kv_cache_bytes", "bytes held by the packed engine's KV caches", registry=r).set_function(
            lambda: engine.kv_bytes())
        if engine.batcher is not None:
            r.register(_StoreCollector(engine.batcher.pool.store))

    def token(self, job, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if job.last_token_at is None:
            self.ttft.observe(now - job.arrived)
        else:
            self.inter_token.observe(now - job.last_token_at)
        job.last_token_at = now
        self.generation_tokens.inc()

    def done(self, job, reason: str) -> None:
        self.finished.labels(reason).inc()
        self.prompt_tokens.inc(len(job.prompt_ids))
        if job.cached:
            self.cache_hits.inc()
            self.cached_tokens.inc(job.cached)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _StoreCollector:
    """The RAM store of evicted prefixes (--cache-ram; engine/sequences.py PrefixStore): what it holds and the
    prompts it served (the prefix-cache counters above count a sequence's own cache and the store together)."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        s = self.store
        yield CounterMetricFamily("kernelfit_prefix_store_hits", "prompts whose prefix was copied back from the RAM "
                                  "store", value=s.hits)
        yield CounterMetricFamily("kernelfit_prefix_store_hit_tokens", "prompt tokens copied back from the RAM store",
                                  value=s.hit_tokens)
        yield GaugeMetricFamily("kernelfit_prefix_store_prompts", "prefixes held in the RAM store",
                                value=len(s.entries))
        yield GaugeMetricFamily("kernelfit_prefix_store_bytes", "bytes the RAM store holds", value=s.nbytes)
