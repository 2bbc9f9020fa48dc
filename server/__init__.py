"""cast.server: the control plane (FastAPI app, run queue, storage)."""
