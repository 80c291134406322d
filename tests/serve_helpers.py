"""Start a real ``lukhas-gpu serve`` in a subprocess on loopback, for the server tests."""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[1]


def env() -> dict:
    # one thread per library: the suite shares two cores
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "LUKHAS_GPU_BACKEND": "cpu"}


@contextlib.contextmanager
def server(store, *args, ready: bool = True, timeout: float = 90.0, log: list | None = None):
    """Yield the base URL of a server on ``store`` (``args``: more CLI flags); stopped with SIGTERM.
    ``log``: a list the server's stderr (after its first line) is appended to once it stopped."""
    cmd = [sys.executable, "-c", "import sys; from lukhas_gpu.cli import main; sys.exit(main())",
           "serve", str(store), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env(), text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert m, f"no address announced: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        url = m.group(1)
        deadline = time.monotonic() + timeout
        headers = {}
        if "--api-key-file" in args:
            key_file = pathlib.Path(args[args.index("--api-key-file") + 1])
            headers["Authorization"] = "Bearer " + key_file.read_text().strip()
        while ready:
            assert proc.poll() is None, f"the server exited: {proc.stderr.read()}"
            try:
                if httpx.get(url + "/readyz", headers=headers, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log is not None:
            log.append(proc.stderr.read())
        proc.stderr.close()
