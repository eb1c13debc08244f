"""``lineguard bench engine --openvino``: ONNX Runtime's CPU provider against OpenVINO's, same graphs, one run.

Each graph (a model folder's ``model.onnx`` and, with ``--int8``, its ``model.int8.onnx``) is timed by
:mod:`lineguard.benchmarks.engine_speed` in three subprocesses, one per leg:

* ``cpu``: the CPU provider of this environment's onnxruntime (the `cpu` flavour a line PC gets);
* ``openvino-cpu``: the CPU provider of the onnxruntime-openvino build, in its own venv
  (:mod:`.openvino_venv`): the same ORT version as the next leg, so the ratio between them is the
  provider's alone;
* ``openvino``: the OpenVINO provider (device CPU), ORT's CPU provider taking the nodes it leaves.

The figure compared is engine images/s (uint8 images -> preprocessing -> graph), best and median of the
trials. The legs of a graph run back to back, their order reversed from one graph to the next and from one
round to the next, so a neighbour's burst of load does not always fall on the same leg.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lineguard.engines.manifest import INT8_FILE, ONNX_FILE

from .openvino_venv import PROVIDER, default_venv, ensure_venv
from .report import write_report

CPU = "CPUExecutionProvider"
# (leg, which python, providers in order)
LEGS = (("cpu", "main", [CPU]), ("openvino-cpu", "openvino", [CPU]), ("openvino", "openvino", [PROVIDER, CPU]))
BASELINE, SAME_BUILD, CANDIDATE = "cpu", "openvino-cpu", "openvino"


def _leg(python: str, model: str, onnx_file: str, providers: list[str], batches: tuple[int, ...], threads: int,
         trials: int, seconds_per_trial: float, data: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "leg.json"
        cmd = [python, "-m", "lineguard.benchmarks.engine_speed", "--model", model, "--onnx-file", onnx_file,
               "--providers", ",".join(providers), "--threads", str(threads), "--trials", str(trials),
               "--seconds-per-trial", str(seconds_per_trial), "--out", str(out),
               *[a for b in batches for a in ("--batch", str(b))], *(["--data", data] if data else [])]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONNOUSERSITE": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One leg's rounds as one: the best of the bests, the median of the medians (per batch size)."""
    first = dict(runs[0])
    first["batches"] = {}
    for batch in runs[0]["batches"]:
        rows = [r["batches"][batch]["engine_images_per_s"] for r in runs]
        medians = sorted(r["median"] for r in rows)
        first["batches"][batch] = {"best": max(r["best"] for r in rows), "median": medians[len(medians) // 2],
                                   "graph_cpu_ms_per_image": min(r["batches"][batch]["graph_cpu_ms_per_image"]
                                                                 for r in runs)}
    first["load_s"] = min(r["load_s"] for r in runs)
    return first


def run(model_dirs: list[str], *, int8: bool = False, batches: tuple[int, ...] = (1, 16), threads: int = 0,
        trials: int = 5, seconds_per_trial: float = 1.0, data: str | None = None, rounds: int = 1,
        venv: Path | None = None) -> dict[str, Any]:
    pythons = {"main": sys.executable, "openvino": str(ensure_venv(venv or default_venv()))}
    graphs = [(str(m), f) for m in model_dirs
              for f in ([ONNX_FILE] + ([INT8_FILE] if int8 and (Path(m) / INT8_FILE).exists() else []))]
    result: dict[str, Any] = {"cpu_count": os.cpu_count(), "threads": threads or os.cpu_count(),
                              "load_average_1m_before": round(os.getloadavg()[0], 2), "legs": [l[0] for l in LEGS],
                              "graphs": []}
    measured: dict[tuple[int, str], list[dict[str, Any]]] = {}
    turn = 0
    for _ in range(rounds):
        for g, (model, onnx_file) in enumerate(graphs):
            order = LEGS if turn % 2 == 0 else LEGS[::-1]
            turn += 1
            for name, which, providers in order:
                one = _leg(pythons[which], model, onnx_file, providers, batches, threads, trials,
                           seconds_per_trial, data)
                measured.setdefault((g, name), []).append(one)
    for g, (model, onnx_file) in enumerate(graphs):
        legs = {name: _combine(measured[(g, name)]) for name, _, _ in LEGS}
        ratios = {}
        for batch in legs[CANDIDATE]["batches"]:
            ov = legs[CANDIDATE]["batches"][batch]
            ratios[batch] = {f"vs_{ref}": {k: round(ov[k] / legs[ref]["batches"][batch][k], 3)
                                           for k in ("best", "median")}
                             for ref in (BASELINE, SAME_BUILD)}
        result["graphs"].append({
            "model": model, "onnx_file": onnx_file, "kind": legs[BASELINE]["kind"],
            # The provider that really took the graph: ORT falls back to CPU silently when one cannot load.
            "providers": {name: leg["providers"] for name, leg in legs.items()},
            "onnxruntime": {name: leg["onnxruntime"] for name, leg in legs.items()},
            "load_s": {name: leg["load_s"] for name, leg in legs.items()},
            "engine_images_per_s": {name: leg["batches"] for name, leg in legs.items()},
            "openvino_ratio": ratios,
        })
    every = [r[f"vs_{BASELINE}"]["best"] for g in result["graphs"] for r in g["openvino_ratio"].values()]
    # One number for the decision: the geometric mean of OpenVINO / CPU provider over every graph and batch.
    result["openvino_vs_cpu_geomean"] = round(math.exp(sum(map(math.log, every)) / len(every)), 3) if every else None
    result["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    result["rounds"], result["trials"], result["seconds_per_trial"] = rounds, trials, seconds_per_trial
    return result


def _cell(r: dict[str, Any]) -> str:
    return f"{r['best']:.1f} ({r['median']:.1f})"


def markdown(result: dict[str, Any]) -> str:
    first = result["graphs"][0] if result["graphs"] else {"onnxruntime": {}}
    heads = [f"{name} (ORT {first['onnxruntime'].get(name, '?')})" for name in result["legs"]]
    out = [f"Engine images/s, best (median) of {result['trials']} trials x {result['rounds']} round(s), "
           f"{result['threads']} threads; load average {result['load_average_1m_before']} → "
           f"{result['load_average_1m_after']}.", "",
           "| model | graph | batch | " + " | ".join(heads) + " | openvino / cpu | openvino / openvino-cpu |",
           "| --- | --- | ---: | " + " | ".join("---:" for _ in heads) + " | ---: | ---: |"]
    for g in result["graphs"]:
        for batch, ratio in g["openvino_ratio"].items():
            cells = [_cell(g["engine_images_per_s"][name][batch]) for name in result["legs"]]
            out.append(f"| {g['kind']} | `{g['onnx_file']}` | {batch} | " + " | ".join(cells) + " | "
                       + " | ".join(f"{ratio[f'vs_{ref}']['best']:.2f}x ({ratio[f'vs_{ref}']['median']:.2f}x)"
                                    for ref in (BASELINE, SAME_BUILD)) + " |")
    out += ["", "Load (session + warm-up), s: " + "; ".join(
        f"{g['kind']} {g['onnx_file']}: " + ", ".join(f"{n} {s}" for n, s in g["load_s"].items())
        for g in result["graphs"])]
    fallen = [f"{g['kind']} {g['onnx_file']}" for g in result["graphs"] if g["providers"][CANDIDATE][0] != PROVIDER]
    if fallen:
        out.append(f"\n**OpenVINO did not take** {', '.join(fallen)}: ORT fell back to its CPU provider.")
    if result["openvino_vs_cpu_geomean"] is not None:
        out.append(f"\nOpenVINO / CPU provider, geometric mean over every graph and batch (best): "
                   f"{result['openvino_vs_cpu_geomean']:.2f}x")
    return "\n".join(out)


def write_outputs(result: dict[str, Any], json_path: str | None) -> None:
    write_report(result, json_path, markdown)
