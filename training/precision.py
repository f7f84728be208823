"""Which precision a script runs in on this machine: ``train.py --amp``'s check, ``test.py`` and
``evaluate.py``'s ``--precision``, and the GPU switches (TF32, cuDNN autotuning).

Per hardware (docs/performance.md, "Precision per hardware"):

* a CPU whose oneDNN has bf16 (AVX-512 BF16 or AMX: recent Intel Xeons, AMD Zen 4+): bf16
  products run ~3.6x float32's rate (a 2-core Xeon with AMX, ``bench/cpu_bf16.py``);
  ``--precision auto`` picks bf16 and ``--amp`` is allowed;
* an AVX2-only CPU (no bf16 in oneDNN): torch runs bf16 on a generic fallback, a small Glow's
  training step 17x slower than float32 on a 2-core AMD EPYC; ``auto`` picks float32 and
  ``--amp`` / ``--precision bf16`` are refused with one line;
* a CUDA GPU of compute capability 8.0 or more (Ampere and later): ``auto`` picks bf16; in
  float32, TF32 tensor-core products are on unless ``--no_tf32``;
* anything else: float32.
"""

from __future__ import annotations

import argparse

import torch

from glow.precision import cast_conditioners

PRECISIONS = ("auto", "float32", "bf16")

SLOW_CPU_BF16 = ("this CPU has no bf16 support in oneDNN (it needs AVX-512 BF16 or AMX), so "
                 "torch runs bf16 convolutions and products on a slow fallback (a small Glow's "
                 "training step 17x slower than float32)")


def cpu_has_fast_bf16() -> bool:
    """Whether torch's CPU bf16 convolutions and products go through oneDNN here.

    Without it (an AVX2-only CPU) they take torch's generic fallback: on a 2-core AMD EPYC
    (Zen 3, AVX2; ``bench/cpu_bf16.py``) a 1024^2 bf16 product ran at 0.9 GFLOP/s against 102
    in float32, and a small Glow's training step under bf16 autocast took 16.2 s against
    0.93 s (17x slower; docs/performance.md, round 7).
    """
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and (check is None or check()))


def cuda_has_fast_bf16(device: torch.device) -> bool:
    """bf16 tensor cores: compute capability 8.0 or more (``torch.cuda.is_bf16_supported``
    also says yes where bf16 is only emulated, at float32's speed or worse)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 runs faster than float32 on ``device`` (CPU: oneDNN bf16; CUDA: sm_80+)."""
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    if device.type == "cuda":
        return cuda_has_fast_bf16(device)
    return False


def resolve_precision(choice: str, device: torch.device) -> torch.dtype | None:
    """``--precision`` on ``device`` -> the conditioners' dtype (None: float32).

    ``auto``: bf16 where :func:`has_fast_bf16`, else float32. ``bf16`` where it is slow or
    missing is refused (ValueError, one line), as ``train.py --amp`` is.
    """
    if choice not in PRECISIONS:
        raise ValueError(f"--precision {choice}: use {', '.join(PRECISIONS)}")
    if choice == "float32":
        return None
    fast = has_fast_bf16(device)
    if choice == "auto":
        return torch.bfloat16 if fast else None
    if not fast:
        why = SLOW_CPU_BF16 if device.type == "cpu" else f"{device} has no fast bf16"
        raise ValueError(f"--precision bf16: {why}; use --precision float32 (or auto)")
    return torch.bfloat16


def precision_name(dtype: torch.dtype | None) -> str:
    return "bf16" if dtype == torch.bfloat16 else "float32"


def add_precision_args(parser: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--no_tf32`` for the inference scripts (``test.py``, ``evaluate.py``)."""
    parser.add_argument(
        "--precision", default="auto", choices=list(PRECISIONS),
        help="auto: bf16 where the hardware runs it fast (a CPU with AVX-512 BF16 or AMX, a GPU "
             "of compute capability 8.0+), float32 elsewhere; bf16: the flows' coupling networks "
             "in bf16, everything invertible (ActNorm, 1x1 convs, the coupling update, priors, "
             "log-dets) in float32, so x -> z -> x stays within 1/255 (refused on a CPU without "
             "fast bf16, where it runs many times slower; measured: test.py 1.5x float32's "
             "speed at the thesis size on a 2-core AMD EPYC with AVX-512 BF16); float32: "
             "everything in float32 (default: auto)")
    parser.add_argument(
        "--no_tf32", dest="tf32", action="store_false",
        help="CUDA: keep float32 products in full float32 (by default TF32 tensor cores run "
             "them, ~10 mantissa bits, several times faster on Ampere and later)")


def set_gpu_switches(device: torch.device, tf32: bool = True, benchmark: bool = False) -> list[str]:
    """Set the CUDA switches that are right for this job; returns what was set (for logs).

    ``tf32``: float32 matrix products and convolutions on TF32 tensor cores (torch's default
    is on for convolutions, off for products; both follow the flag). ``benchmark``: cuDNN
    autotunes each convolution shape once; right when shapes repeat (training: a fixed batch
    with ``drop_last``), a loss when they change (``test.py``'s first pass of one frame and
    a last partial chunk would each pay the tuning). A no-op (empty list) off CUDA.
    """
    if device.type != "cuda":
        return []
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = benchmark
    return [f"tf32 {'on' if tf32 else 'off'}", f"cudnn.benchmark {'on' if benchmark else 'off'}"]


def apply_precision(model: torch.nn.Module, dtype: torch.dtype | None, device: torch.device,
                    tf32: bool = True) -> torch.nn.Module:
    """For inference in ``dtype`` (from :func:`resolve_precision`): cast the model's coupling
    conditioners to it (:func:`glow.precision.cast_conditioners`) and set the GPU switches
    (TF32 unless ``tf32=False``; no cuDNN autotuning, since the chunk sizes vary). In place."""
    set_gpu_switches(device, tf32=tf32, benchmark=False)
    return cast_conditioners(model, dtype)
