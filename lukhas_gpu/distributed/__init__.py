"""Scale-out on Ray (the ``ray`` extra): distributed batch ingestion into shard stores and search
over them.

* :mod:`.layout` -- a sharded root on disk (``shards.json`` + ``shard-NNNNN/`` stores) and the
  global ids (shard number in the bits above the 32-bit row id); imports no Ray.

Importing this package imports no Ray.
"""
