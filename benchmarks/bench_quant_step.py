"""Cost of fake quantization in a training step, and recompilation across subnets.

ResNet-20, batch 128, 32x32, one forward+backward (no optimiser step), on N CPU threads:
- float model,
- eqtools' elastic supernet (8 forms: granularity x weight symmetry x activation symmetry) at
  4-bit per-channel symmetric weights and 4-bit asymmetric activations (the int8 runtimes' form),
- the same model quantized with PyTorch's built-in learnable fake-quant ops
  (torch._fake_quantize_learnable_per_{channel,tensor}_affine),
each eager and under torch.compile. Variants are timed in interleaved rounds and the median is
reported, because throughput on a small shared machine drifts. Also counts compilations while
switching between 24 random subnets after warm-up (three of each of the 8 forms), times the
compiled step in each form, and times ``eqtools --help``.

Run: MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 \
     python benchmarks/bench_quant_step.py --record
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine_line, record

from eqtools.models import get_model
from eqtools.quant import quantize_model


class _BuiltinQuant(nn.Module):
    """A Conv2d/Linear with PyTorch's learnable fake-quant ops on input (per-tensor) and weight (per-channel)."""

    def __init__(self, layer: nn.Module, bits: int) -> None:
        super().__init__()
        self.layer = layer
        c = layer.weight.shape[0]
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.aqmax = 2**bits - 1
        w = layer.weight.detach().reshape(c, -1)
        self.w_scale = nn.Parameter(w.abs().amax(1) / self.qmax)
        self.w_zero = nn.Parameter(torch.zeros(c))
        self.a_scale = nn.Parameter(torch.tensor([0.05]))
        self.a_zero = nn.Parameter(torch.zeros(1))
        self.grad_factor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch._fake_quantize_learnable_per_tensor_affine(x, self.a_scale, self.a_zero, -128, 127, self.grad_factor)
        w = torch._fake_quantize_learnable_per_channel_affine(
            self.layer.weight, self.w_scale, self.w_zero, 0, self.qmin, self.qmax, self.grad_factor
        )
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return F.linear(x, w, self.layer.bias)


def builtin_model(bits: int) -> nn.Module:
    model = get_model("resnet20")
    for name, module in list(model.named_modules()):
        if type(module) in (nn.Conv2d, nn.Linear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, _BuiltinQuant(module, bits))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--no-compile", action="store_true", help="eager variants only")
    parser.add_argument("--record", action="store_true", help="write the result to benchmarks/results/ (rendered into BENCHMARKS.md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(128, 3, 32, 32)
    y = torch.randint(0, 10, (128,))

    fp = get_model("resnet20")
    eq = quantize_model(get_model("resnet20"), {}, x[:1])
    eq.init_from_data([x[:64]])
    eq.train()
    eq.apply(eq.space.uniform(4, 4, "per-channel", "sym", "asym"))
    builtin = builtin_model(4)
    variants: dict[str, nn.Module] = {"fp eager": fp, "eqtools eager": eq, "builtin eager": builtin}

    compile_s: dict[str, float] = {}
    compiles = {"n": 0}

    def counting_backend(gm, example_inputs):
        compiles["n"] += 1
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs)

    def step(model: nn.Module) -> None:
        F.cross_entropy(model(x), y).backward()

    if not args.no_compile:
        for name, model in (("fp", fp), ("eqtools", eq), ("builtin", builtin)):
            compiled = torch.compile(model, backend=counting_backend)
            start = time.perf_counter()
            try:
                step(compiled)
                step(compiled)
            except Exception as exc:  # a variant that does not compile is reported, not fatal
                print(f"{name} compiled failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            compile_s[name] = time.perf_counter() - start
            variants[f"{name} compiled"] = compiled

    for model in variants.values():
        step(model)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, model in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model)
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    median = {name: statistics.median(v) for name, v in times.items()}

    recompiles = None
    per_form: dict[str, float] = {}
    forms = eq.space.conditions
    if "eqtools compiled" in variants:
        before = compiles["n"]
        rng = random.Random(0)
        for i in range(3 * len(forms)):
            eq.apply(eq.space.random(rng, *forms[i % len(forms)]))
            step(variants["eqtools compiled"])
        for form in forms:  # the compiled step in every form, uniform 4-bit
            eq.apply(eq.space.uniform(4, 4, *form))
            start = time.perf_counter()
            for _ in range(args.steps):
                step(variants["eqtools compiled"])
            per_form[eq.space.uniform(4, 4, *form).label] = (time.perf_counter() - start) / args.steps * 1000
        recompiles = compiles["n"] - before

    help_times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "eqtools", "--help"], capture_output=True, check=True)
        help_times.append(time.perf_counter() - start)
    help_s = statistics.median(help_times)

    lines = ["| variant | ms / step (median) | vs fp eager | vs fp compiled |", "|---|---|---|---|"]
    for name, ms in median.items():
        vs_c = f"{ms / median['fp compiled']:.2f}x" if "fp compiled" in median else "-"
        lines.append(f"| {name} | {ms:.0f} | {ms / median['fp eager']:.2f}x | {vs_c} |")
    notes = [
        f"- compile time (first two steps): {', '.join(f'{k} {v:.0f} s' for k, v in compile_s.items()) or 'not run'}",
        f"- forms in the space: {len(forms)}; recompilations over {3 * len(forms)} random subnets (3 per form) and "
        f"the {len(forms)} uniform 4-bit forms after warm-up: {recompiles if recompiles is not None else 'not run'}",
        *([f"- compiled step per form (uniform W4A4, ms, vs fp compiled {median['fp compiled']:.0f} ms): " + ", ".join(
            f"{k} {v:.0f} ({v / median['fp compiled']:.2f}x)" for k, v in per_form.items())] if per_form else []),
        f"- `python -m eqtools --help` wall time: {help_s:.2f} s (median of 5)",
    ]
    body = "\n".join([*lines, "", *notes])
    print(body)
    if args.record:
        record(
            "Fake-quant training step (ResNet-20, batch 128, 32x32)",
            f"MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 python benchmarks/bench_quant_step.py "
            f"--threads {args.threads} --rounds {args.rounds} --steps {args.steps}" + (" --no-compile" if args.no_compile else ""),
            machine_line(args.threads),
            body,
        )


if __name__ == "__main__":
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
    main()
