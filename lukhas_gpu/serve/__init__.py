"""``lukhas-gpu serve``: a retrieval server over one store, for GPU inference servers.

* :mod:`.options` -- :class:`ServeOptions` (every flag of ``lukhas-gpu serve``, with its bound);
* :mod:`.wire` -- the JSON and binary forms of vectors, filters and rankings (shared with the client);
* :mod:`.batcher` -- the dynamic batcher: concurrent searches merged into one ``search`` call;
* :mod:`.limits` -- the ASGI guard: API key, body size, bodies in flight, body timeout;
* :mod:`.conns` -- the protocol-level guard: header timeout, connection caps (in all, per address);
* :mod:`.metrics` -- the Prometheus metrics; :mod:`.traffic` -- the ring of recent searches;
* :mod:`.dashboard` -- the page at ``/ui`` (static files in ``ui/``) and its JSON endpoints;
* :mod:`.models` -- the request and response schemas (OpenAPI);
* :mod:`.app` -- the FastAPI application; :mod:`.server` -- the socket, uvicorn, the workers;
* :mod:`.client` -- :class:`~.client.Client` (stdlib HTTP, no server dependency).

Only :mod:`.options`, :mod:`.wire` and :mod:`.client` import without the ``serve`` extra
(``pip install 'lukhas-gpu[serve]'``); importing this package imports none of them.
"""
