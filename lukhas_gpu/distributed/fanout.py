"""How a :class:`~.sharded.ShardedIndex` reaches its shards: threads over local
:class:`~.shard.ShardHost` objects, or one Ray actor per shard.

Both run a list of calls ``(position, method, args)`` on the shards in parallel and return the
answers in order; the first failure is raised as the shard raised it (an actor's exception is
unwrapped from Ray's ``RayTaskError``), with the shard named in a note. Ray is imported only by
:class:`ActorFan` and :func:`actor_options`.
"""
from __future__ import annotations

import concurrent.futures
import logging

from . import rootfiles
from .shard import ShardHost
from .stages import ray_fraction

log = logging.getLogger(__name__)

__all__ = ["LocalFan", "ActorFan", "actor_options", "MAX_THREADS"]

#: Threads of a local fan-out (a search uses the cores through FAISS and torch already).
MAX_THREADS = 32


class LocalFan:
    """Shards opened in this process, called from a thread pool (one call runs inline)."""

    def __init__(self, hosts: list[ShardHost]):
        self.hosts = hosts
        self._pool = concurrent.futures.ThreadPoolExecutor(min(len(hosts), MAX_THREADS),
                                                          thread_name_prefix="lukhas-shard")

    @classmethod
    def open(cls, root, shards: list[int], mode: str, verify: bool) -> "LocalFan":
        with concurrent.futures.ThreadPoolExecutor(min(len(shards), MAX_THREADS)) as pool:
            futures = [pool.submit(ShardHost, root, s, mode, verify) for s in shards]
            hosts, error = [], None
            for f in futures:
                try:
                    hosts.append(f.result())
                except Exception as e:  # keep the first error, close what did open
                    error = error or e
        if error is not None:
            for h in hosts:
                h.close(checkpoint=False)
            raise error
        return cls(hosts)

    def run(self, calls: list[tuple[int, str, tuple]]) -> list:
        if len(calls) == 1:
            pos, name, args = calls[0]
            return [_named(self.hosts[pos].shard, lambda: getattr(self.hosts[pos], name)(*args))]
        futures = [(self.hosts[pos].shard, self._pool.submit(getattr(self.hosts[pos], name), *args))
                   for pos, name, args in calls]
        return [_named(shard, f.result) for shard, f in futures]

    def close(self, checkpoint: bool = True) -> None:
        try:
            self.run([(i, "close", (checkpoint,)) for i in range(len(self.hosts))])
        finally:
            self._pool.shutdown(wait=True)


class ActorFan:
    """One Ray actor per shard, each holding its shard's :class:`ShardHost`."""

    def __init__(self, actors: list, shards: list[int], started_ray: bool):
        self.actors, self.shards, self._started_ray = actors, shards, started_ray

    @classmethod
    def open(cls, root, shards: list[int], mode: str, verify: bool, address=None) -> "ActorFan":
        import ray

        started = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False)
            started = True
        remote = ray.remote(ShardHost).options(**actor_options(len(shards)))
        root = str(root)
        actors = [remote.remote(root, s, mode, verify, True) for s in shards]
        fan = cls(actors, shards, started)
        try:
            fan.run([(i, "opened", ()) for i in range(len(shards))])  # every actor opened its shard
        except BaseException:
            fan._kill()
            raise
        return fan

    def run(self, calls: list[tuple[int, str, tuple]]) -> list:
        import ray

        refs = [(self.shards[pos], getattr(self.actors[pos], name).remote(*args)) for pos, name, args in calls]
        return [_named(shard, lambda r=ref: _unwrap(ray, r)) for shard, ref in refs]

    def close(self, checkpoint: bool = True) -> None:
        try:
            self.run([(i, "close", (checkpoint,)) for i in range(len(self.actors))])
        finally:
            self._kill()

    def _kill(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self._started_ray:
            ray.shutdown()


def _unwrap(ray, ref):
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise
    except ray.exceptions.RayActorError as e:
        raise RuntimeError(f"a shard actor died: {e}") from None


def _named(shard: int, fn):
    """``fn()``, its exception noting the shard it came from."""
    try:
        return fn()
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"(in {rootfiles.shard_name(shard)})")
        raise


def actor_options(n_actors: int) -> dict:
    """Resources of one shard actor, sized from the cluster: an equal share of the CPUs (at
    most 1; fractional on small nodes -- Ray's default of one CPU per actor deadlocks a 2-CPU
    node with more actors than CPUs) keeping one share free for the driver's tasks, and of the
    GPUs where the cluster has any (at most 1 each)."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
    out = {"num_cpus": ray_fraction(min(1.0, cpus / (n_actors + 1)))}
    if gpus > 0:
        out["num_gpus"] = ray_fraction(min(1.0, gpus / max(n_actors, 1)))
    return out
