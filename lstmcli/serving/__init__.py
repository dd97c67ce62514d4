"""`lstmcli serve`: a loaded model behind HTTP. app.py is the FastAPI application (routes, limits, auth,
errors as one-line JSON); batcher.py gathers concurrent requests into micro-batches that one inference
thread runs; server.py binds the socket and runs it under uvicorn with a graceful stop. Needs the `serve`
extra (FastAPI, uvicorn)."""
