"""The machine a run is timed on: its speed on a fixed reference, whether its CPU has native bf16, and a clock
that splits a run's wall time into named parts.

A demo that takes 10 minutes here may take 16 on another laptop; the reference speed (GFLOP/s of one 1024x1024
fp32 matmul) says how much of that is the machine.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch

# flags of a CPU that multiplies bf16 matrices natively (x86: AVX512-BF16 or AMX; ARM: BF16 / SVE-BF16)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags: torch's runtime detection where torch has it, else /proc/cpuinfo (Linux)."""
    if hasattr(torch.cpu, "get_capabilities"):
        return {k for k, v in torch.cpu.get_capabilities().items() if v is True}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, ARM
            flags |= set(line.split(":", 1)[1].split())
    return flags


def native_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (without them bf16 autocast only emulates, slowly)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def choose_bf16(fp32_s: float | None, bf16_s: float | None, margin: float = 0.9) -> bool:
    """bf16 autocast for the decoder's training only where the CPU has it natively AND a step was measured faster by
    more than a shared machine's noise (bf16_s < margin * fp32_s: two benches here differed by a few per cent)."""
    return native_bf16() and fp32_s is not None and bf16_s is not None and bf16_s < margin * fp32_s


def matmul_gflops(n: int = 1024, repeats: int = 5) -> dict:
    """The machine's speed on a fixed reference: GFLOP/s of an (n, n) @ (n, n) fp32 matmul (2 n^3 flops), the best
    of ``repeats`` after one warm-up, with torch's thread count."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return {"matmul": f"{n}x{n} fp32", "gflops": round(2 * n**3 / best / 1e9, 1), "threads": torch.get_num_threads(),
            "best_of": repeats}


class PartClock:
    """Wall time per named part of a run, on one clock: every second since the start is charged to exactly one
    part (``other`` when none is named), so the parts sum to the total."""

    def __init__(self):
        self.start = self.mark = time.perf_counter()
        self.current = "other"
        self.parts: dict[str, float] = {}

    def switch(self, name: str) -> None:
        """Charge the time since the last switch to the current part, then time ``name``."""
        now = time.perf_counter()
        self.parts[self.current] = self.parts.get(self.current, 0.0) + now - self.mark
        self.current, self.mark = name, now

    @contextmanager
    def part(self, name: str):
        before = self.current
        self.switch(name)
        try:
            yield
        finally:
            self.switch(before)

    def table(self) -> dict[str, float]:
        """Seconds per part in the order first timed, ``other`` last, then ``total``."""
        self.switch(self.current)
        total = self.mark - self.start
        parts = {k: round(v, 2) for k, v in self.parts.items() if k != "other"}
        parts["other"] = round(self.parts.get("other", 0.0), 2)
        return {**parts, "total": round(total, 2)}


def format_parts(parts: dict[str, float], speed: dict) -> str:
    width = max(map(len, parts))
    lines = ["Wall time per part of the demo (a stage's name: its training):"]
    lines += [f"  {name:<{width}} {s:8.1f} s" for name, s in parts.items()]
    lines.append(f"Machine: {speed['gflops']:.1f} GFLOP/s on a {speed['matmul']} matmul (best of {speed['best_of']}, "
                 f"{speed['threads']} thread(s))")
    return "\n".join(lines)
