"""The report of ``lineguard bench anomalib``: the side-by-side Markdown table and the result files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import write_report


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def delta(a: float | None, b: float | None) -> float | None:
    return round(a - b, 4) if a is not None and b is not None else None


def _num(value: float | int | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    lg, an = result["lineguard"], result["anomalib"]
    rows = [
        ("image AUROC", lg["image_auroc"], an["image_auroc"], 4, "delta"),
        ("pixel AUROC", lg["pixel_auroc"], an["pixel_auroc"], 4, "delta"),
        ("PRO (30% FPR)", lg["pro"], an["pro"], 4, "delta"),
        ("images/s, batch 1 (best)", lg["images_per_s_b1"], an["images_per_s_b1"], 1, "ratio"),
        ("images/s, batch 16 (best)", lg["images_per_s_b16"], an["images_per_s_b16"], 1, "ratio"),
        ("images/s, batch 16 (median)", lg["throughput"]["16"]["median"], an["throughput"]["16"]["median"], 1,
         "ratio"),
        ("images/s, batch 16, with pre-processing", lg["throughput_with_preprocessing"]["16"]["best"],
         an["throughput_with_preprocessing"]["16"]["best"], 1, "ratio"),
        ("CPU ms per image, batch 16", lg["cpu_ms_per_image_b16"], an["cpu_ms_per_image_b16"], 1, "ratio"),
        ("fit time (s)", lg["fit_s"], an["fit_s"], 2, "ratio"),
        ("peak RSS, fit process (MB)", lg["fit_peak_rss_mb"], an["fit_peak_rss_mb"], 0, "ratio"),
        ("peak RSS, scoring process (MB)", lg["score_peak_rss_mb"], an["score_peak_rss_mb"], 0, "ratio"),
        ("memory bank (patches)", lg["config"]["memory_bank_size"], an["config"]["memory_bank_size"], 0, "ratio"),
        ("fit images", lg["config"]["n_fit_images"], an["config"]["n_fit_images"], 0, "ratio"),
    ]
    lines = [f"### PatchCore: lineguard vs anomalib {an['config']['versions']['anomalib']} on `{result['data']}`", "",
             f"MobileNetV2 ({', '.join(lg['config']['layers'])}), {lg['config']['input_size'][0]} px, "
             f"coreset {lg['config']['coreset_ratio']:.0%}; lineguard: {lg['config']['runtime']}; "
             f"anomalib: {an['config']['runtime']}.", "",
             "| | lineguard | anomalib | lineguard / anomalib |", "| --- | ---: | ---: | ---: |"]
    for name, a, b, digits, kind in rows:
        compare = f"{delta(a, b):+.4f}" if kind == "delta" and a is not None and b is not None else (
            f"{ratio(a, b):.2f}x" if kind == "ratio" and ratio(a, b) is not None else "n/a")
        lines.append(f"| {name} | {_num(a, digits)} | {_num(b, digits)} | {compare} |")
    onnx = an.get("onnx_runtime_throughput")
    if onnx and "error" not in onnx:
        lines.append(f"\nanomalib's fitted model exported to ONNX and run in the same ONNX Runtime settings: "
                     f"{onnx['1']['best']:.1f} images/s at batch 1, {onnx['16']['best']:.1f} at batch 16 "
                     f"(lineguard / that: {ratio(lg['images_per_s_b16'], onnx['16']['best'])}x at batch 16).")
    elif onnx:
        lines.append(f"\nanomalib ONNX export failed: {onnx['error']}")
    acc = result["acceptance"]
    verdict = "met" if acc["passed"] else "NOT met"
    lines += ["", f"Acceptance (>= 2x images/s at batch 16, image and pixel AUROC not lower): **{verdict}** "
                  f"(batch-16 ratio {result['throughput_ratio_b16']}x, "
                  f"image AUROC {_signed(result['image_auroc_delta'])}, "
                  f"pixel AUROC {_signed(result['pixel_auroc_delta'])}). Load average (1 min) "
                  f"{result['load_average_1m_before']} before, {result['load_average_1m_after']} after, "
                  f"{result['cpu_count']} CPUs.", ""]
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def write_outputs(result: dict[str, Any], json_path: str | Path | None) -> None:
    write_report(result, json_path, markdown)


