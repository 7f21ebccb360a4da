"""KPR inference throughput on one device: eager backbone, eager KPR, the optimised path, ONNX Runtime, part distance.

See bench/README.md. Each measurement ("figure") is one path x dtype x batch; a figure that fails is recorded
in ``failures`` and the others still run. ``--merge`` combines the result files of several runs (the GPU check
runs each measurement in its own process, under its own timeout) into one. Examples, from the repository root:
    .venv/bin/python -m bench.kpr_throughput --preset demo --device cpu --measure kpr optimised compiled onnx
    bash bench/gpu_check.sh    # the prepared GPU check (SOLIDER Swin-B at 384x128)
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench.part_distance_memory import _random_parts, _random_visibility
from bench.results_io import RESULTS, command_line, write_result
from kpr_model.backbone import build_adapter
from kpr_model.config import KPRConfig
from kpr_model.distance import part_distance
from kpr_model.fast_inference import autocast_for, optimised_kpr
from kpr_model.model import KPR
from kpr_model.prompts import keypoints_to_prompt

NOT_PRESETS = {"from_dict"}
MODEL_PATHS = ("backbone", "kpr", "optimised", "compiled", "onnx")
MEASURES = MODEL_PATHS + ("distance",)
FIGURE_NAMES = {"backbone": "backbone_eager", "kpr": "kpr_eager", "optimised": "kpr_optimised",
                "compiled": "kpr_compiled", "onnx": "kpr_onnxruntime"}


def preset_names() -> list[str]:
    """Names accepted by --preset: "default" (KPRConfig()) and every config-building classmethod of KPRConfig."""
    methods = [name for name, value in vars(KPRConfig).items() if isinstance(value, classmethod)]
    return ["default"] + sorted(set(methods) - NOT_PRESETS)


def build_config(preset: str, backbone: str | None = None, image_size: tuple[int, int] | None = None) -> KPRConfig:
    """The preset's config with the optional backbone / image size overrides."""
    if preset not in preset_names():
        raise ValueError(f"unknown preset {preset!r}; known: {preset_names()}")
    config = KPRConfig() if preset == "default" else getattr(KPRConfig, preset)()
    changes = {k: v for k, v in (("backbone", backbone), ("image_size", image_size)) if v is not None}
    return config.with_updates(**changes)


def parse_size(text: str) -> tuple[int, int]:
    """"AxB" -> (A, B): an image size HxW or a query x gallery count."""
    try:
        first, second = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected two integers like 384x128, got {text!r}") from exc
    return first, second


def bare_backbone(config: KPRConfig) -> tuple[str, nn.Module, Callable[[torch.Tensor], object]]:
    """(description, module, forward) of ``config``'s backbone alone, built with random weights.

    For timm backbones this is the timm model's ``forward_features``; backbones that are not timm
    models (SOLIDER Swin) run their adapter's stem and all stages instead.
    """
    adapter = build_adapter(config)
    for module in adapter.modules():
        if callable(getattr(module, "forward_features", None)):
            return f"timm {config.backbone} forward_features", module, module.forward_features
    return (f"{config.backbone} stem + all stages", adapter,
            lambda images: adapter.stages(adapter.stem(images), upto=len(adapter.stage_channels)))


def sample_inputs(config: KPRConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised images and prompts built from random target + negative skeletons, on ``device``."""
    rng = np.random.default_rng(0)
    height, width = config.image_size
    skeletons = rng.uniform(0, 1, size=(batch, 2, 17, 3)).astype(np.float32) * [width, height, 1.0]
    prompts = keypoints_to_prompt(list(skeletons[:, 0]), list(skeletons[:, 1:]), config.image_size, config, device)
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    return images.to(device), prompts


def measure(run: Callable[[], object], device: torch.device, warmup: int,
            iters: int) -> tuple[float, float | None, float | None]:
    """(seconds per call, peak GPU memory in GiB or None on CPU, CPU seconds of this process per call or None on
    CUDA) of ``run`` after ``warmup`` untimed calls. Other processes' load inflates the CPU seconds less than the
    wall time (threads waiting at a barrier still count)."""
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
        return start.elapsed_time(end) / 1000.0 / iters, torch.cuda.max_memory_allocated(device) / 2**30, None
    begin, cpu_begin = time.perf_counter(), time.process_time()
    for _ in range(iters):
        run()
    return (time.perf_counter() - begin) / iters, None, (time.process_time() - cpu_begin) / iters


def device_name(device: torch.device) -> str:
    """Human-readable name of the device measured."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def one_line(exc: BaseException) -> str:
    """An exception as one short line for the result file."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Run:
    """One benchmark run: the model under test, its inputs per batch size, and the record being filled."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.config = build_config(args.preset, args.backbone, args.image_size)
        self.baseline_config = build_config(args.baseline or args.preset, None, self.config.image_size)
        torch.manual_seed(0)
        self.model = KPR(self.config).eval().to(self.device)
        self.record: dict = {"figures": {}, "failures": {}, "parity": {}}

    def figure(self, name: str, batch: int, run: Callable[[], object]) -> None:
        """Time ``run`` (one forward pass of ``batch`` crops) into ``figures[name]``; a failure is recorded."""
        key = f"{name}_b{batch}"
        print(f"measuring {key}", file=sys.stderr, flush=True)
        try:
            seconds, memory, cpu_seconds = measure(run, self.device, self.args.warmup, self.args.iters)
            if self.args.profile:
                self.profile(key, run)
        except Exception as exc:  # a failed figure (out of memory, compile error) must not stop the others
            self.record["failures"][key] = one_line(exc)
            return
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.record["figures"][key] = {
            "crops_per_s": round(batch / seconds, 2),
            "ms_per_batch": round(seconds * 1000, 2),
            "peak_gpu_mem_gb": None if memory is None else round(memory, 3),
            "cpu_s_per_batch": None if cpu_seconds is None else round(cpu_seconds, 3),
        }

    def profile(self, key: str, run: Callable[[], object]) -> None:
        """Append the operator / kernel time table of two passes of ``run`` to --profile (where the time goes)."""
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(2):
                run()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=100)
        with open(self.args.profile, "a", encoding="utf-8") as out:
            out.write(f"== {key}: two passes\n{table}\n")

    def measure_models(self, path: str) -> None:
        """Every figure of one model path (``MODEL_PATHS``) at each --dtypes and --batches."""
        forward = self.forward_of(path)
        dtypes = ["fp32"] if path == "onnx" else self.args.dtypes
        for batch in self.args.batches:
            images, prompts = sample_inputs(self.config, batch, self.device)
            for dtype in dtypes:
                name = f"{FIGURE_NAMES[path]}_{dtype}"
                with torch.inference_mode(), autocast_for(self.device, dtype):
                    self.figure(name, batch, lambda: forward(images, prompts))
                    if path in ("optimised", "compiled") and batch == min(self.args.batches):
                        self.parity(name, forward, images, prompts)

    def forward_of(self, path: str) -> Callable[[torch.Tensor, torch.Tensor], object]:
        """The callable (images, prompts) -> outputs that ``path`` times."""
        if path == "backbone":
            description, module, forward = bare_backbone(self.baseline_config)
            module.eval().to(self.device)
            self.record["baseline"] = description
            return lambda images, prompts: forward(images)
        if path == "kpr":
            return self.model.forward_reid
        if path == "onnx":
            return self.onnx_forward()
        backend = self.args.compile_backend if path == "compiled" else None
        graph = optimised_kpr(self.model, self.device, channels_last=True, compile_backend=backend)
        return lambda images, prompts: graph(images.contiguous(memory_format=torch.channels_last),
                                             prompts.contiguous(memory_format=torch.channels_last))

    def onnx_forward(self) -> Callable[[torch.Tensor, torch.Tensor], object]:
        """ONNX Runtime session of the exported inference graph (``kpr_model.export``), on the CPU."""
        # Imported here: the export needs the onnx package, which a GPU machine running the check may lack.
        from kpr_model.export import export_onnx
        from kpr_model.onnx_format import INPUT_NAMES
        from kpr_model.onnx_session import open_onnx_session

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "kpr.onnx"
            export_onnx(self.model, self.config, path)
            session = open_onnx_session(path, "cpu", threads=torch.get_num_threads())
        return lambda images, prompts: session.run(None, dict(zip(INPUT_NAMES, (images.cpu().numpy(),
                                                                                prompts.cpu().numpy()))))

    def parity(self, name: str, forward: Callable, images: torch.Tensor, prompts: torch.Tensor) -> None:
        """Worst agreement of ``forward``'s outputs with the eager fp32 model's on the same batch."""
        try:
            got = forward(images, prompts)
            with torch.autocast(self.device.type, enabled=False):
                want = self.model.forward_reid(images, prompts)
        except Exception as exc:  # recorded like a failed figure
            self.record["failures"][f"{name}_parity"] = one_line(exc)
            return
        cosine = [torch.nn.functional.cosine_similarity(g.float(), w.float(), dim=-1).min().item()
                  for g, w in zip(got[:2], want[:2])]
        self.record["parity"][name] = {
            "batch": len(images),
            "min_cosine_global": round(cosine[0], 6),
            "min_cosine_parts": round(cosine[1], 6),
            "max_abs_visibility": round((got[2].float() - want[2].float()).abs().max().item(), 6),
        }

    def measure_distance(self) -> None:
        """One ``part_distance`` call of Q x G random part embeddings (K + 1 entries each) on the device."""
        queries, gallery = self.args.distance
        rng = np.random.default_rng(0)
        parts, dim = self.config.num_parts + 1, self.config.embed_dim
        qf, gf = _random_parts(rng, queries, parts, dim), _random_parts(rng, gallery, parts, dim)
        qv, gv = _random_visibility(rng, queries, parts), _random_visibility(rng, gallery, parts)
        print(f"measuring part distance {queries} x {gallery}", file=sys.stderr, flush=True)
        try:
            part_distance(qf[:64], qv[:64], gf[:4096], gv[:4096], device=self.device)  # warm-up
            seconds, memory, _ = measure(lambda: part_distance(qf, qv, gf, gv, device=self.device), self.device, 0, 1)
        except Exception as exc:  # recorded like a failed figure
            self.record["failures"]["part_distance"] = one_line(exc)
            return
        self.record["part_distance"] = {
            "queries": queries, "gallery": gallery, "parts": parts, "dim": dim, "seconds": round(seconds, 3),
            "pairs_per_s": round(queries * gallery / seconds), "peak_gpu_mem_gb": None if memory is None else
            round(memory, 3),
        }

    def result(self) -> dict:
        """Run every --measure and return the record with the run's facts."""
        for path in self.args.measure:
            if path == "distance":
                self.measure_distance()
                continue
            try:
                self.measure_models(path)
            except Exception as exc:  # building a path failed: its figures are missing, the others still run
                self.record["failures"][path] = one_line(exc)
        params = sum(p.numel() for p in self.model.parameters())
        return facts(self.args, self.device, self.config, self.baseline_config, params) | self.record


def facts(args: argparse.Namespace, device: torch.device, config: KPRConfig, baseline: KPRConfig,
          params: int) -> dict:
    """What was measured, where and with what software."""
    return {
        "device": device.type,
        "device_name": device_name(device),
        "preset": args.preset,
        "backbone": config.backbone,
        "baseline_backbone": baseline.backbone,
        "image_size": list(config.image_size),
        "batches": args.batches,
        "dtypes": args.dtypes,
        "compile_backend": args.compile_backend,
        "warmup": args.warmup,
        "iters": args.iters,
        "kpr_params_m": round(params / 1e6, 2),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def with_ratios(record: dict) -> dict:
    """``record`` plus ``ratios`` per batch and ``ratio`` at the largest batch: the fastest optimised KPR (compiled,
    else not) in bf16 over the eager bf16 backbone; None where a figure is missing."""
    figures = record.get("figures", {})
    ratios = {}
    for batch in record.get("batches", []):
        base = figures.get(f"backbone_eager_bf16_b{batch}")
        fast = [figures[k] for k in (f"kpr_compiled_bf16_b{batch}", f"kpr_optimised_bf16_b{batch}") if k in figures]
        best = max((f["crops_per_s"] for f in fast), default=None)
        ratios[f"b{batch}"] = round(best / base["crops_per_s"], 3) if base and best else None
    largest = f"b{max(record['batches'])}" if record.get("batches") else None
    return record | {"ratios": ratios, "ratio": ratios.get(largest) if largest else None,
                     "ratio_of": "fastest optimised KPR bf16 (kpr_compiled or kpr_optimised) / backbone_eager_bf16, "
                                 "crops/s at the largest batch"}


def merge(paths: list[Path]) -> dict:
    """One record from several runs' result files: facts of the first, figures / failures / parity of all."""
    merged: dict = {"figures": {}, "failures": {}, "parity": {}, "part_distance": None}
    for path in paths:
        part = json.loads(path.read_text())
        for key in ("figures", "failures", "parity"):
            merged[key].update(part.pop(key, {}))
        merged["part_distance"] = part.pop("part_distance", None) or merged["part_distance"]
        merged = part | merged
    return merged


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see bench/README.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help=f"KPRConfig preset, one of {preset_names()}")
    parser.add_argument("--baseline", help="preset whose backbone alone is the eager baseline (default: --preset)")
    parser.add_argument("--backbone", help="override the preset's timm backbone name")
    parser.add_argument("--image-size", type=parse_size, help="override the preset's input size, HxW")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1")
    parser.add_argument("--measure", nargs="+", choices=MEASURES, default=["backbone", "kpr", "optimised"],
                        help="what to measure (the model paths at each dtype and batch; distance once)")
    parser.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                        help="fp32, and/or bf16 = torch.autocast bfloat16")
    parser.add_argument("--batches", nargs="+", type=int, default=[64], help="crops per forward pass")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of 'compiled'")
    parser.add_argument("--distance", type=parse_size, default=(10_000, 100_000), help="part distance QxG")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before timing")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--note", default="", help="free text stored in the result")
    parser.add_argument("--profile", type=Path, help="append each figure's operator / kernel time table to this file")
    parser.add_argument("--merge", nargs="+", type=Path, help="combine these result files into --output instead")
    parser.add_argument("--output", default=RESULTS / "kpr_throughput.json", help="result JSON path ('-': print only)")
    args = parser.parse_args(argv)
    if min(args.batches) <= 0 or args.iters <= 0 or min(args.distance) <= 0:
        parser.error("--batches, --iters and --distance must be > 0")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.preset not in preset_names() or (args.baseline or args.preset) not in preset_names():
        parser.error(f"unknown preset; known: {preset_names()}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or merge results), print the record and write it to --output."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:
        missing = [str(p) for p in args.merge if not p.is_file()]
        record = merge([p for p in args.merge if p.is_file()])
        record["failures"].update({f"missing result {name}": "the run wrote no result file" for name in missing})
        record["note"] = args.note or record.get("note", "")
    else:
        record = Run(args).result() | {"command": command_line("bench.kpr_throughput", argv), "note": args.note}
    write_result(args.output, with_ratios(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
