"""Serving over HTTP: the FastAPI app, its JSON codec, and the uvicorn runner."""
