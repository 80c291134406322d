"""The report of a distributed ingest (:func:`lukhas_gpu.distributed.ingest`)."""
from __future__ import annotations

import dataclasses

__all__ = ["IngestReport", "STAGES"]

#: The stages timed, in pipeline order. ``read`` is the time the driver waited for prepared
#: batches (reading, encoding and checking upstream, as far as they held the pipeline up);
#: ``encode`` and ``prepare`` are the seconds their tasks spent, summed over the pool; ``open``,
#: ``write``, ``train`` and ``checkpoint`` are the slowest shard's.
STAGES = ("read", "encode", "prepare", "open", "write", "train", "checkpoint")


@dataclasses.dataclass
class IngestReport:
    """What an ingest did, and what the shards hold at its end.

    Attributes
    ----------
    root : str
    shards, dim : int
    rows : int
        Rows of the input.
    written : int
        Memories this run added.
    resumed : int
        Memories the shards held when this run began (an interrupted run's, not added again).
    seconds : float
        Wall time of the run.
    stages : dict
        Seconds per stage (:data:`STAGES`).
    shard_rows, shard_resumed : list of int
        Per shard: the rows it holds at the end, and those it held at the start.
    shard_nlist : list of (int or None)
        Per shard: its IVF's lists (None: below its training threshold, searched exactly).
    ram_bytes, disk_bytes : int
        Over all shards: RAM of an open shard (anonymous plus mapped, as ``stats()`` counts it)
        and bytes on disk.
    shard_stats : list of dict
        Each shard's own figures (``rows``, ``written``, ``nlist``, ``bytes_per_memory``,
        ``disk_bytes``, the writer's ``rss_anon``, its ``seconds`` per stage).

    A report is returned only when every row is in its shard and ``shards.json`` says
    ``"complete"``; an ingest that stops raises instead.
    """

    root: str
    shards: int
    dim: int
    rows: int
    written: int
    resumed: int
    seconds: float
    stages: dict
    shard_rows: list
    shard_resumed: list
    shard_nlist: list
    ram_bytes: int
    disk_bytes: int
    shard_stats: list = dataclasses.field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        """Memories added per second of wall time by this run."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_memory(self) -> float:
        """RAM per memory over the shards (``ram_bytes / rows``)."""
        total = sum(self.shard_rows)
        return self.ram_bytes / total if total else 0.0

    @property
    def disk_bytes_per_memory(self) -> float:
        total = sum(self.shard_rows)
        return self.disk_bytes / total if total else 0.0

    def to_dict(self) -> dict:
        """Plain JSON values, the derived rates included."""
        d = dataclasses.asdict(self)
        d.update(rows_per_second=self.rows_per_second, bytes_per_memory=self.bytes_per_memory,
                 disk_bytes_per_memory=self.disk_bytes_per_memory)
        return d

    def summary(self) -> str:
        """One line for a terminal."""
        resumed = f", {self.resumed:,} held before (resumed)" if self.resumed else ""
        stages = ", ".join(f"{k} {self.stages.get(k, 0.0):.1f}" for k in STAGES)
        nl = sorted({n for n in self.shard_nlist}, key=lambda v: (v is None, v or 0))
        return (f"{self.root}: ingested {self.written:,} of {self.rows:,} rows into {self.shards} shards in "
                f"{self.seconds:.1f} s ({self.rows_per_second:,.0f} rows/s){resumed}; "
                f"{self.bytes_per_memory:,.0f} B RAM and {self.disk_bytes_per_memory:,.0f} B disk per memory; "
                f"nlist {', '.join('exact' if n is None else str(n) for n in nl)}; seconds: {stages}")
