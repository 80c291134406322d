"""``lukhas_gpu.client.Client``: the HTTP client of ``lukhas-gpu serve`` (standard library + numpy).

See :mod:`lukhas_gpu.serve.client`.
"""
from .serve.client import BadRequest, Client, Overloaded, RemoteSearchResult, ServerError, Unauthorized

__all__ = ["Client", "RemoteSearchResult", "ServerError", "BadRequest", "Unauthorized", "Overloaded"]
