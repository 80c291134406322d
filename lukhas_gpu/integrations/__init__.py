"""Adapters for agent frameworks, each an optional extra: ``lukhas_gpu.integrations.langchain``
(``[langchain]``), ``.llama_index`` (``[llama-index]``), ``.mem0`` (``[mem0]``). They use the
public :class:`~lukhas_gpu.MemoryIndex` only (external ids, free metadata, ``Filter(meta=...)``);
importing ``lukhas_gpu`` imports none of them."""
