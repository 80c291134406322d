"""The GPU path: encoding, exact int8 search of GPU-resident vectors, latency, filters; CPU beside it.

    python -m benchmarks.bench_gpu                          # CUDA, then the CPU path on the same machine
    python -m benchmarks.bench_gpu --device cpu --n 100000  # the CPU path alone

What it measures, each as a median over repeats, with ``torch.cuda.synchronize()`` around every
timed call on CUDA:

* encoding ``D=1024 -> 512`` int8 (:meth:`Encoder.encode_resident`) of inputs already on the
  device, beside the float32 projection alone (the GEMM every encoder pays);
* ingest into a ``gpu_resident="on"`` :class:`MemoryIndex` (device tensors in);
* exact int8 search of ``n x dim`` resident vectors, batches of ``--batch`` queries, ``k``:
  QPS through ``MemoryIndex.search`` and of the bare scan kernel (:func:`exact.scan`), recall@k
  against float32 ground truth, and the achieved int8 rate as a fraction of the device's int8
  GEMM rate -- measured here with a large ``torch._int_mm``, and the datasheet's where known;
* single-query latency p50 / p99 (one query per call);
* filtered search at 1% and 10% selectivity (a ``since`` filter over shuffled timestamps);
* the same on the CPU path (``backend="cpu"``, same rows, same code), side by side.

Data: the built-in synthetic model (fitted to MiniLM/WordNet, 384-d) lifted to ``dim`` by a
random orthonormal map plus 2% isotropic energy, generated on the device with torch.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lukhas_gpu import Filter, IndexConfig, MemoryIndex
from lukhas_gpu.tools.synthetic import builtin_model
from lukhas_gpu.vectors import exact
from lukhas_gpu.vectors.encoder import Encoder

from .common import machine, markdown_table, today, write_results

#: Dense int8 tensor-core peak from the vendors' datasheets (TOPS, no sparsity).
DATASHEET_INT8_TOPS = {"H100 PCIe": 1513.0, "H100 NVL": 1671.0, "H100": 1979.0, "H200": 1979.0,
                       "A100": 624.0, "L40S": 733.0, "L4": 242.5}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, device, repeat: int, warmup: int = 1) -> tuple[float, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


class Data:
    """Embedding-like unit vectors of any dimension, generated on a torch device, reproducible."""

    def __init__(self, dim: int, device: torch.device, seed: int = 0):
        m = builtin_model()
        g = torch.Generator().manual_seed(seed)

        def as_t(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

        self.centers, self.scales = as_t(m.centers), as_t(m.scales)
        self.mix = as_t(m.basis * m.sqrt_eig)  # (384, r): z @ mix.T is a residual
        self.weights = torch.from_numpy(m.weights).to(device, torch.float32)
        self.query_spread = m.query_spread
        src = m.dim
        if dim >= src:
            q, _ = torch.linalg.qr(torch.randn(dim, src, generator=g, dtype=torch.float64))
            self.lift = q.to(device, torch.float32)  # (dim, 384), orthonormal columns
        else:
            self.lift = torch.eye(src, dtype=torch.float32, device=device)[:dim]
        self.dim, self.device, self.seed = dim, device, seed

    def rows(self, n: int, stream: int, spread: float = 1.0, chunk: int = 1 << 17) -> torch.Tensor:
        out = torch.empty((n, self.dim), dtype=torch.float32, device=self.device)
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + stream)
        for a in range(0, n, chunk):
            m = min(chunk, n - a)
            c = torch.multinomial(self.weights, m, replacement=True, generator=g)
            z = torch.randn((m, self.mix.shape[1]), generator=g, device=self.device)
            x = self.centers[c] + (spread * self.scales[c, None]) * (z @ self.mix.T)
            x = torch.nn.functional.normalize(x, dim=1) @ self.lift.T
            x += (0.15 / self.dim ** 0.5) * torch.randn((m, self.dim), generator=g, device=self.device)
            out[a: a + m] = torch.nn.functional.normalize(x, dim=1)
        return out

    def queries(self, nq: int) -> torch.Tensor:
        return self.rows(nq, stream=1, spread=self.query_spread)


def ground_truth(xq: torch.Tensor, xb: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> np.ndarray:
    """Exact float32 top-k ids (inner product), in chunks of the database."""
    best_s = best_i = None
    step = max(4096, (1 << 26) // max(len(xq), 1))
    for a in range(0, len(xb), step):
        s = xq @ xb[a: a + step].T
        if mask is not None:
            s.masked_fill_(~mask[a: a + step].unsqueeze(0), -float("inf"))
        top = torch.topk(s, min(k, s.shape[1]), dim=1)
        best_s, best_i = exact.merge_topk(best_s, best_i, top.values, top.indices + a, k)
    return best_i.cpu().numpy()


def recall(found, truth: np.ndarray) -> float:
    f = found.cpu().numpy() if isinstance(found, torch.Tensor) else np.asarray(found)
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(a[a >= 0], b)) / k for a, b in zip(f[:, :k], truth)]))


def int8_peak_tops(device: torch.device, size: int, repeat: int = 5) -> float:
    """The device's int8 GEMM rate as torch reaches it: ``_int_mm`` on a large square problem."""
    a = torch.randint(-127, 128, (size, size), dtype=torch.int8, device=device)
    b = torch.randint(-127, 128, (size, size), dtype=torch.int8, device=device)
    t, _ = median_time(lambda: torch._int_mm(a, b.T), device, repeat)
    return 2 * size ** 3 / t / 1e12


def datasheet_tops(name: str | None) -> float | None:
    if not name:
        return None
    for key, tops in DATASHEET_INT8_TOPS.items():  # the more specific names come first
        if all(part in name for part in key.split()):
            return tops
    return None


def bench_encode(device: torch.device, n: int, d_in: int, d_out: int, repeat: int) -> dict:
    data = Data(d_in, device, seed=7)
    x = data.rows(n, stream=0)
    enc = Encoder(d_in, dim_out=d_out).to(device).fit(x[: min(n, 65536)])
    t_enc, codes = median_time(lambda: enc.encode_resident(x), device, repeat)
    w = enc.components
    t_proj, _ = median_time(lambda: torch.nn.functional.normalize(x, dim=1) @ w.T, device, repeat)
    assert codes.dtype == torch.int8 and codes.shape == (n, d_out)
    return {"n": n, "d_in": d_in, "d_out": d_out, "vectors_per_s": n / t_enc,
            "projection_only_per_s": n / t_proj, "ratio_vs_projection": t_proj / t_enc,
            "gb_per_s_in": n * d_in * 4 / t_enc / 1e9}


def bench_search(device: torch.device, xb: torch.Tensor, xq: torch.Tensor, truth: np.ndarray, *,
                 k: int, batch: int, repeat: int, single: int, filters: list[float], peak: float,
                 sheet: float | None, ts_perm: np.ndarray, fl_truth: dict) -> list[dict]:
    n, dim = xb.shape
    cfg = IndexConfig(backend=device.type, gpu_resident="on", train_threshold=n + 1, seed=3)
    index = MemoryIndex(dim, cfg)
    step = 65536
    ts = 1.7e9 + ts_perm.astype(np.float64)
    t0 = time.perf_counter()
    for a in range(0, n, step):
        index.add(xb[a: a + step], timestamps=ts[a: a + step])
    sync(device)
    ingest = n / (time.perf_counter() - t0)
    q = xq[:batch]
    t_search, res = median_time(lambda: index.search(q, k), device, repeat)
    assert index.stats()["gpu_resident"]
    rows = []
    base = {"device": device.type, "n": n, "dim": dim, "k": k}
    rows.append({**base, "what": f"search, batch {batch}", "qps": batch / t_search,
                 "recall": recall(res.ids, truth[:batch]), "ingest_per_s": ingest})
    # the bare kernel: the scan of the resident codes for 2k + 16 candidates, no rerank
    res_v = index.parts.mirror
    qr = index.encoder.resident_query_weights(q)
    t_scan, _ = median_time(lambda: exact.scan(qr, res_v.rows, 2 * k + 16, kernel=exact.int8_kernel), device, repeat)
    tops = 2 * batch * n * dim / t_scan / 1e12
    rows.append({**base, "what": f"scan kernel only, batch {batch}", "qps": batch / t_scan, "int8_tops": tops,
                 "of_measured_peak": tops / peak, "of_datasheet": tops / sheet if sheet else None})
    # one query per call
    lat = []
    for i in range(single + 5):
        t0 = time.perf_counter()
        index.search(xq[i], k)
        sync(device)
        lat.append(time.perf_counter() - t0)
    lat = np.array(lat[5:]) * 1e3
    rows.append({**base, "what": "single query", "qps": 1e3 / float(np.median(lat)),
                 "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))})
    for sel in filters:
        since = 1.7e9 + n * (1 - sel)
        where = Filter(since=since)
        t_f, res_f = median_time(lambda: index.search(q, k, where=where), device, repeat)
        rows.append({**base, "what": f"filtered {sel:.0%}, batch {batch}", "qps": batch / t_f,
                     "recall": recall(res_f.ids, fl_truth[sel][:batch])})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--single", type=int, default=500, help="single queries timed")
    ap.add_argument("--encode-n", type=int, default=None, help="rows encoded (default: n)")
    ap.add_argument("--encode-dim", type=int, default=1024)
    ap.add_argument("--cpu-batch", type=int, default=256, help="queries per batch on the CPU path")
    ap.add_argument("--cpu-single", type=int, default=50)
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU path beside CUDA")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tag", default="gpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda: torch sees no CUDA device")
    devices = [torch.device("cuda")] if cuda else []
    if not cuda or not args.no_cpu:
        devices.append(torch.device("cpu"))
    name = torch.cuda.get_device_name(0) if cuda else None
    print(f"# bench_gpu {today()}: {name or 'no CUDA device'}; CPU {machine()}, "
          f"{torch.get_num_threads()} torch threads; torch {torch.__version__}", flush=True)

    rows, enc_rows = [], []
    filters = [0.01, 0.10]
    perm = np.random.default_rng(11).permutation(args.n)
    for device in devices:
        on_gpu = device.type == "cuda"
        batch = args.batch if on_gpu else min(args.batch, args.cpu_batch)
        n_enc = args.encode_n or (args.n if on_gpu else min(args.n, 200_000))
        e = bench_encode(device, n_enc, args.encode_dim, 512, args.repeat)
        enc_rows.append({"device": device.type, **e})
        print(markdown_table([enc_rows[-1]]), flush=True)
        data = Data(args.dim, device, seed=5)
        xb = data.rows(args.n, stream=0)
        xq = data.queries(max(batch, args.single + 5))
        truth = ground_truth(xq[:batch], xb, args.k)
        ts_rank = torch.from_numpy(perm).to(device)
        fl_truth = {s: ground_truth(xq[:batch], xb, args.k, mask=ts_rank >= args.n * (1 - s)) for s in filters}
        peak = int8_peak_tops(device, 8192 if on_gpu else 1024)
        sheet = datasheet_tops(name) if on_gpu else None
        r = bench_search(device, xb, xq, truth, k=args.k, batch=batch, repeat=args.repeat if on_gpu else 3,
                         single=args.single if on_gpu else args.cpu_single, filters=filters, peak=peak,
                         sheet=sheet, ts_perm=perm, fl_truth=fl_truth)
        for row in r:
            row["int8_peak_measured_tops"] = peak
        rows += r
        print(markdown_table(r), flush=True)
        del xb, xq
        if on_gpu:
            torch.cuda.empty_cache()
    cols = ["device", "what", "n", "dim", "k", "qps", "recall", "p50_ms", "p99_ms", "int8_tops",
            "of_measured_peak", "of_datasheet", "ingest_per_s"]
    table = (f"Device: {name or 'none (CPU only)'}; CPU: {machine()}; {today()}\n\n"
             + markdown_table(enc_rows) + "\n\n" + markdown_table(rows, cols))
    print("\n" + table)
    write_results(f"bench_{args.tag}", {"device": name, "cpu": machine(), "date": today(), "args": vars(args),
                                        "encode": enc_rows, "search": rows}, table)


if __name__ == "__main__":
    main()
