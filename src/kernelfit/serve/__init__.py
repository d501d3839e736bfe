"""serve: an OpenAI-compatible HTTP endpoint over a model loaded with kernelfit's plan (protocol.py: requests
and errors as OpenAI shapes them; engine.py: one worker that batches concurrent requests; app.py: the ASGI
app; FastAPI + uvicorn)."""
