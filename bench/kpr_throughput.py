"""KPR inference throughput (crops/s) with keypoint prompts vs the eager timm backbone alone, in one run.

See bench/README.md. Example (the target figure: SOLIDER Swin-B at 384x128 on a GPU), from the repository root:
    .venv/bin/python -m bench.kpr_throughput --preset solider_swin_base --device cuda --dtype bf16 --batch 256
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import timm
import torch
from torch import nn

from bench.results_io import RESULTS, write_or_fail
from kpr_model.config import KPRConfig, KPRModelError
from kpr_model.export import KPRInferenceGraph
from kpr_model.model import KPR
from kpr_model.prompts import keypoints_to_prompt

NOT_PRESETS = {"from_dict"}


def preset_names() -> list[str]:
    """Names accepted by --preset: "default" (KPRConfig()) and every config-building classmethod of KPRConfig."""
    methods = [name for name, value in vars(KPRConfig).items() if isinstance(value, classmethod)]
    return ["default"] + sorted(set(methods) - NOT_PRESETS)


def build_config(preset: str, backbone: str | None, image_size: tuple[int, int] | None) -> KPRConfig:
    """The preset's config with the optional backbone / image size overrides."""
    if preset not in preset_names():
        raise ValueError(f"unknown preset {preset!r}; known: {preset_names()}")
    config = KPRConfig() if preset == "default" else getattr(KPRConfig, preset)()
    changes = {k: v for k, v in (("backbone", backbone), ("image_size", image_size)) if v is not None}
    return config.with_updates(**changes)


def parse_image_size(text: str) -> tuple[int, int]:
    """"HxW" -> (H, W)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"image size must look like 384x128 (HxW), got {text!r}") from exc
    return height, width


def bare_backbone(model: KPR) -> tuple[str, nn.Module, Callable[[torch.Tensor], object]]:
    """(description, module, forward) of KPR's backbone alone: no prompt tokenizer, fusion or heads.

    For timm backbones this is ``forward_features`` of the very timm model inside KPR; backbones that
    are not timm models (SOLIDER Swin) run their adapter's stem and all stages instead.
    """
    adapter = model.backbone.features
    for module in adapter.modules():
        if callable(getattr(module, "forward_features", None)):
            return "timm forward_features", module, module.forward_features
    return ("adapter stem + all stages", adapter,
            lambda images: adapter.stages(adapter.stem(images), upto=len(adapter.stage_channels)))


def sample_inputs(config: KPRConfig, batch: int, device: torch.device,
                  channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised images and prompts built from random target + negative skeletons."""
    rng = np.random.default_rng(0)
    height, width = config.image_size
    skeletons = rng.uniform(0, 1, size=(batch, 2, 17, 3)).astype(np.float32) * [width, height, 1.0]
    prompts = keypoints_to_prompt(list(skeletons[:, 0]), list(skeletons[:, 1:]), config.image_size, config)
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return (images.to(device, memory_format=memory_format),
            prompts.to(device, memory_format=memory_format))


def measure(run: Callable[[], object], device: torch.device, warmup: int, iters: int) -> tuple[float, float | None]:
    """(seconds per call, peak GPU memory in GiB or None on CPU) of ``run`` after ``warmup`` untimed calls."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        run()
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(iters):
            run()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0 / iters, torch.cuda.max_memory_allocated(device) / 2**30
    begin = time.perf_counter()
    for _ in range(iters):
        run()
    return (time.perf_counter() - begin) / iters, None


def device_name(device: torch.device) -> str:
    """Human-readable name of the device measured."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run_benchmark(args: argparse.Namespace) -> dict[str, object]:
    """Measure KPR and the bare backbone under the same settings; return the result record."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KPRModelError("--device cuda asked for, but torch sees no CUDA device")
    config = build_config(args.preset, args.backbone, args.image_size)
    torch.manual_seed(0)
    model = KPR(config).eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    baseline, backbone, backbone_forward = bare_backbone(model)
    graph = KPRInferenceGraph(model).eval()
    kpr_forward = torch.compile(graph) if args.compile else graph
    images, prompts = sample_inputs(config, args.batch, device, args.channels_last)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext())

    with torch.inference_mode(), autocast:
        backbone_s, backbone_mem = measure(lambda: backbone_forward(images), device, args.warmup, args.iters)
        kpr_s, kpr_mem = measure(lambda: kpr_forward(images, prompts), device, args.warmup, args.iters)

    def gib(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    kpr_rate, backbone_rate = args.batch / kpr_s, args.batch / backbone_s
    return {
        "device": device.type,
        "device_name": device_name(device),
        "preset": args.preset,
        "backbone": config.backbone,
        "image_size": list(config.image_size),
        "batch": args.batch,
        "dtype": args.dtype,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "warmup": args.warmup,
        "iters": args.iters,
        "kpr_crops_per_s": round(kpr_rate, 1),
        "backbone_eager_crops_per_s": round(backbone_rate, 1),
        "backbone_baseline": baseline,
        "ratio": round(kpr_rate / backbone_rate, 3),
        "kpr_ms_per_batch": round(kpr_s * 1000, 2),
        "backbone_eager_ms_per_batch": round(backbone_s * 1000, 2),
        "peak_gpu_mem_gb": gib(kpr_mem),
        "backbone_peak_gpu_mem_gb": gib(backbone_mem),
        "kpr_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "backbone_params_m": round(sum(p.numel() for p in backbone.parameters()) / 1e6, 2),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see bench/README.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help=f"KPRConfig preset, one of {preset_names()}")
    parser.add_argument("--backbone", help="override the preset's timm backbone name")
    parser.add_argument("--image-size", type=parse_image_size, help="override the preset's input size, HxW")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = torch.autocast bfloat16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the KPR graph (backbone stays eager)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights and inputs")
    parser.add_argument("--batch", type=int, default=64, help="crops per forward pass")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before timing")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--note", default="", help="free text stored in the result")
    parser.add_argument("--output", default=RESULTS / "kpr_throughput.json", help="result JSON path ('-': print only)")
    args = parser.parse_args(argv)
    for name in ("batch", "iters"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the result and write it to --output."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return write_or_fail(args.output, "bench.kpr_throughput", argv, args.note, lambda: run_benchmark(args),
                         (KPRModelError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
