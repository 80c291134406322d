"""The progress display of ``ingest``: a live bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import math
import time

__all__ = ["ProgressDisplay", "PROGRESS_INTERVAL"]

#: Seconds between two plain (non-TTY) progress lines of ``ingest``.
PROGRESS_INTERVAL = 5.0


class ProgressDisplay:
    """Shows the :class:`~lukhas_gpu.ingest.pipeline.Progress` the pipeline reports: a live bar
    on a terminal (tqdm when installed, else a ``\\r`` line with the ETA), plain lines at most
    every :data:`PROGRESS_INTERVAL` seconds otherwise (and the last one always)."""

    def __init__(self, total: int, initial: int, stream):
        self.total, self.done, self.stream = total, initial, stream
        self.last = time.perf_counter()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.bar = None
        if self.tty:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, initial=initial, unit="rec", unit_scale=True, file=stream,
                                desc="ingest", dynamic_ncols=True)

    def update(self, p) -> None:
        n, self.done = p.done - self.done, p.done
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if not self.tty and now - self.last < PROGRESS_INTERVAL and self.done < self.total:
            return
        self.last = now
        line = f"ingested {self.done:,}/{self.total:,} records, {p.rate:,.0f} rec/s"
        if p.merged:
            line += f", {p.merged:,} merged"
        if self.tty:
            eta = f"{p.eta:,.0f} s" if math.isfinite(p.eta) else "?"
            self.stream.write(f"\r{line}, ETA {eta}   ")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.tty:
            self.stream.write("\n")
            self.stream.flush()
            self.tty = False
