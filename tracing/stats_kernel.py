"""The fused C kernel behind ``tracing.attention_stats`` (``stats_kernel.c``).

The chunked torch path computes the statistics exactly but writes each
chunk's scores to memory and reads them back some ten times (the softmax,
the entropy's dot product, the span and WAAD sums, the FAI and mass
products): about 5x the time of sdpa's fused attention at 4k tokens on CPU.
The kernel takes four query rows at a time (each key loaded once for the
four), keeps each row's scores in cache and reduces every statistic in the
pass that computes its exponentials: 15-20 ms a layer at 4k tokens on
tiny-llava-next with 2 threads, near sdpa's own fused attention of that layer
(~17 ms), which also computes every score and its exponential
(``bench/attention.py`` has the whole forwards).

It is built on first use by the system's C compiler (``$CC``, else ``cc`` or
``gcc``) into ``$CHRONOLENS_KERNEL_CACHE`` (default
``~/.cache/chronolens/kernels``), one file per source, flags and CPU, and
loaded with ctypes; the call releases the GIL, and the (batch, head) pairs
are split over ``torch.get_num_threads()`` threads of a pool kept for the
process. Where no compiler
is found, the build fails, the cache cannot be written or the library does
not load, ``library()`` returns None, says why once, and the torch path runs
instead (the same numbers to float32 rounding).

It covers sdpa's plain case: a causal forward with no attention mask (one
sequence, or a batch without padding), on CPU. Masks (eager's, padding) take
the torch path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("stats_kernel.c")
# no -ffast-math: it would link crtfastmath, which sets flush-to-zero for the whole process
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-shared", "-fPIC")
if platform.machine().lower() in ("x86_64", "amd64"):
    # gcc's tuning keeps AVX-512 CPUs to 256-bit vectors; the full width was 10-20% faster here
    # (bench.attention; without AVX-512 the flag changes nothing). x86 only: other compilers' targets reject it.
    FLAGS += ("-mprefer-vector-width=512",)

_state: dict = {}  # "lib": the loaded library, or "why": why there is none
_pools: dict[int, ThreadPoolExecutor] = {}  # workers -> a pool kept for the process's later calls
_pools_lock = threading.Lock()


def _forget_pools() -> None:
    """In a forked child: the parent's pool threads do not exist there, and a
    pool that believes it has them would never run the work."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` kept between calls: starting and joining
    threads for every layer cost ~1 ms a call, as much as the kernel itself
    on a short sequence."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="chronolens-stats")
        return _pools[workers]


def cache_dir() -> Path:
    env = os.environ.get("CHRONOLENS_KERNEL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chronolens" / "kernels"


def _cpu() -> str:
    """The CPU's model name and feature flags: -march=native code is only valid
    on CPUs with the features it was built for (a cache shared between hosts
    keeps one library per kind of CPU)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    first = {}
    for line in lines:
        name = line.split(":")[0].strip()
        if name in ("model name", "flags") and name not in first:
            first[name] = line
    return "\n".join(first.values()) or platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def library() -> ctypes.CDLL | None:
    """The built kernel, or None (and ``why()`` says why) where it cannot be built or loaded."""
    if "lib" in _state or "why" in _state:
        return _state.get("lib")
    cc = _compiler()
    if not cc:
        _state["why"] = "no C compiler ($CC, cc or gcc) was found"
        return None
    src = SOURCE.read_bytes()
    key = hashlib.sha1(b"\0".join([src, " ".join(FLAGS).encode(), cc.encode(), platform.machine().encode(),
                                   _cpu().encode()])).hexdigest()[:16]
    so = cache_dir() / f"stats_kernel-{key}.so"
    if not so.is_file():
        try:
            so.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _state["why"] = f"its cache {so.parent} cannot be made ({e}); set CHRONOLENS_KERNEL_CACHE"
            return None
        tmp = so.with_name(f"{so.stem}.{os.getpid()}.tmp.so")  # built aside, then renamed: no half-written library
        try:
            done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(tmp), "-lm"], capture_output=True, text=True,
                                  timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            tmp.unlink(missing_ok=True)
            _state["why"] = f"{cc} could not run: {e}"
            return None
        if done.returncode:
            tmp.unlink(missing_ok=True)
            _state["why"] = f"{cc} failed on {SOURCE.name}: {done.stderr.strip()[-500:]}"
            return None
        os.replace(tmp, so)
    try:  # e.g. no libmvec (not glibc): the vectorised expf it was built against is missing
        lib = ctypes.CDLL(str(so))
    except OSError as e:
        _state["why"] = f"{so} does not load: {e}"
        return None
    P, I = ctypes.c_void_p, ctypes.c_int
    lib.row_stats.restype = I
    lib.row_stats.argtypes = [P, P, I, I, I, I, I, I, P, I, P, P, I, P, P, I, I, P, P, P, P, P]
    _state["lib"] = lib
    return lib


def why() -> str | None:
    """Why ``library()`` gave None (None when it has not been asked, or it is there)."""
    return _state.get("why")


def warn_unavailable() -> None:
    """Say once per process that the torch path runs instead, and why."""
    if not _state.get("warned"):
        _state["warned"] = True
        warnings.warn(f"attention statistics: the fused C kernel is unavailable ({why()}); the chunked torch path "
                      f"runs instead (the same statistics; forwards 2-4x slower)", stacklevel=3)


def row_stats(query: torch.Tensor, key: torch.Tensor, scaling: float, window: int, rows: torch.Tensor,
              horizons: list[tuple[int, int | None]], groups: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """query [B, H, T, d], key [B, Hkv, T, d] (causal, no mask) -> float32
    span_term, waad, entropy [B, H, T]; fai_sum [n_horizons, B, H, T] (the
    sums over each key's rows, not yet divided by the counts); mass [B, H, G, G]."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the fused attention-statistics kernel is unavailable: {why()}")
    B, H, T, D = query.shape
    Hkv = key.shape[1]
    q = (query.float() * scaling).contiguous()  # scaled as the torch path does: equal to float32 rounding
    kt = key.float().transpose(-1, -2).contiguous()  # [B, Hkv, d, T]: a row's scores vectorise over keys
    rows8 = rows.to(torch.uint8).contiguous()
    lo = torch.tensor([a for a, _ in horizons] or [0], dtype=torch.int32)
    hi = torch.tensor([-1 if b is None else b for _, b in horizons] or [0], dtype=torch.int32)
    g0 = torch.tensor([a for a, _ in groups] or [0], dtype=torch.int32)
    g1 = torch.tensor([b for _, b in groups] or [0], dtype=torch.int32)
    G = len(groups)
    out = {n: torch.empty(B, H, T) for n in ("span_term", "waad", "entropy")}
    fai = torch.zeros(max(1, len(horizons)), B, H, T)
    mass = torch.zeros(B, H, G, G)

    def run(bh0: int, bh1: int) -> int:
        return lib.row_stats(q.data_ptr(), kt.data_ptr(), B, H, Hkv, T, D, window, rows8.data_ptr(), len(horizons),
                             lo.data_ptr(), hi.data_ptr(), G, g0.data_ptr(), g1.data_ptr(), bh0, bh1,
                             out["span_term"].data_ptr(), out["waad"].data_ptr(), out["entropy"].data_ptr(),
                             fai.data_ptr(), mass.data_ptr())

    n = B * H
    workers = max(1, min(torch.get_num_threads(), n))
    cuts = [round(k * n / workers) for k in range(workers + 1)]
    if workers == 1:
        codes = [run(0, n)]
    else:
        codes = list(_pool(workers).map(run, cuts[:-1], cuts[1:]))
    if any(codes):
        raise MemoryError(f"the attention-statistics kernel could not allocate its row buffers (4 x {T} floats)")
    return {**out, "fai_sum": fai[: len(horizons)], "mass": mass}
