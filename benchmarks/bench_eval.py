"""Streaming evaluation throughput: loopback HTTP vs local files, and scoring vs inference time.

    python benchmarks/bench_eval.py                    # synthetic mini_val, tiny model (random init)
    python benchmarks/bench_eval.py --predictor oracle # no model: the transport + decode + scoring path

A synthetic nuScenes-format world (``shards.synth``, the real mini_val scene names) is built into
mini_val shards (cached under ``--work``). The same evaluation runs twice in one process, first from
the local shard directory, then from a real HTTP server on 127.0.0.1 serving that directory
(``tests.servers.http_server``): sidecars -> ground truth, the pipeline's eval-mode stream through the
predictor (``eval.inference.stream_predictions``), nuScenes scoring (``eval.metrics.evaluate``). A
warm-up pass over the first samples runs first so one-time costs (numba, first conv) are not
charged to either transport. Printed: samples/s of each transport and their ratio (target >= 0.9),
and the split of the time into sidecars, data wait, inference and scoring.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



def Oracle():
    """No model: GT boxes (bev_aug undone) with 0.3 m token-seeded noise (eval.baselines.NoisyOracle)."""
    from eval.baselines import NoisyOracle

    return NoisyOracle(xy_sigma=0.3)


def build_data(work: Path, frames: int, image_wh: tuple[int, int]) -> Path:
    from shards.build import build_shards
    from shards.synth import synthesize

    root = work / f"nuscenes_f{frames}_{image_wh[0]}x{image_wh[1]}"
    shards = work / f"shards_f{frames}_{image_wh[0]}x{image_wh[1]}" / "mini_val"
    if not (root / "v1.0-mini").is_dir():
        print(f"synthesizing {root} ...", flush=True)
        synthesize(root, "v1.0-mini", frames_per_scene=frames, image_size=image_wh, seed=0, lidar=True,
                   progress=False)
    if not (shards / "manifest.json").is_file():
        print(f"building {shards} ...", flush=True)
        build_shards(root, "v1.0-mini", "mini_val", shards, clip_frames=8, max_shard_mb=16, progress=False)
    return shards


def evaluate_once(spec: str, predictor, args) -> dict:
    """One full evaluation from ``spec``; returns timings and the NDS."""
    from eval.gt import load_ground_truth
    from eval.inference import eval_loader_config, stream_predictions
    from eval.metrics import evaluate
    from eval.submission import make_submission
    from pipeline.loader import build_loader
    from pipeline.meta import open_sidecar_table
    from pipeline.urls import IOOptions, expand_shard_urls

    t0 = time.perf_counter()
    io = IOOptions()
    gt = load_ground_truth([open_sidecar_table(s.sidecar_url, io) for s in expand_shard_urls(spec, io_opts=io)])
    t1 = time.perf_counter()
    cfg = eval_loader_config(spec, {"image_size": args.image_size}, num_workers=args.workers)
    st = stream_predictions(build_loader(cfg), predictor, gt, max_samples=args.max_samples, progress=False)
    if st.error is not None:
        raise RuntimeError(f"stream from {spec} failed: {st.error}")
    t2 = time.perf_counter()
    tokens = [t for t in gt.order if t in st.results]
    result = evaluate(make_submission(st.results), gt, sample_tokens=tokens)
    t3 = time.perf_counter()
    n = len(tokens)
    return {"n": n, "sidecars": t1 - t0, "stream": t2 - t1, "wait": st.seconds_load, "infer": st.seconds_infer,
            "score": t3 - t2, "total": t3 - t0, "sps": n / (t3 - t0), "nds": result.summary["nd_score"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_out/eval"))
    ap.add_argument("--frames", type=int, default=10, help="keyframes per scene (mini_val has 2 scenes)")
    ap.add_argument("--source-size", type=int, nargs=2, default=(800, 450), metavar=("W", "H"))
    ap.add_argument("--image-size", type=int, nargs=2, default=[128, 352], metavar=("H", "W"),
                    help="decoded image size")
    ap.add_argument("--predictor", choices=("tiny", "oracle"), default="tiny")
    ap.add_argument("--max-samples", type=int, default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs per transport, interleaved local/http; the fastest of each is reported")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    shards = build_data(args.work, args.frames, tuple(args.source_size))
    if args.predictor == "tiny":
        from bev_model import build_model, get_preset
        from eval.inference import ModelPredictor

        torch.manual_seed(0)
        model = build_model(get_preset("tiny")).eval()
        make = lambda: ModelPredictor(model)  # noqa: E731 - a fresh BEVHistory per run
    else:
        make = Oracle

    from tests.servers import http_server

    size = sum(p.stat().st_size for p in shards.glob("*.tar"))
    print(f"mini_val shards: {shards} ({size / 1e6:.1f} MB), predictor {args.predictor}, "
          f"images {args.image_size[0]}x{args.image_size[1]}, {args.workers} loader worker(s)", flush=True)
    warm = argparse.Namespace(**{**vars(args), "max_samples": 2})
    evaluate_once(str(shards), make(), warm)
    rows: dict[str, dict] = {}
    with http_server(shards) as url:
        for _ in range(args.repeats):
            for name, spec in (("local", str(shards)), ("http", f"{url}/manifest.json")):
                r = evaluate_once(spec, make(), args)
                if name not in rows or r["sps"] > rows[name]["sps"]:
                    rows[name] = r

    print(f"\n{'source':<8}{'samples':>8}{'samples/s':>11}{'total s':>9}{'sidecars':>10}{'data wait':>11}"
          f"{'inference':>11}{'scoring':>9}{'NDS':>9}")
    for name, r in rows.items():
        print(f"{name:<8}{r['n']:>8}{r['sps']:>11.3f}{r['total']:>9.2f}{r['sidecars']:>10.2f}{r['wait']:>11.2f}"
              f"{r['infer']:>11.2f}{r['score']:>9.2f}{r['nds']:>9.4f}")
    ratio = rows["http"]["sps"] / rows["local"]["sps"]
    print(f"\nHTTP (loopback) / local samples/s: {ratio:.3f}  (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    data = {k: r["n"] / (r["total"] - r["infer"]) for k, r in rows.items()}
    print(f"without inference (sidecars + data wait + scoring): local {data['local']:.2f} samples/s, "
          f"http {data['http']:.2f} samples/s, ratio {data['http'] / data['local']:.3f}")
    for name, r in rows.items():
        print(f"{name}: scoring {r['score']:.2f} s vs inference {r['infer']:.2f} s "
              f"(scoring = {r['score'] / max(r['infer'], 1e-9):.3f} x inference; "
              f"{1000 * r['score'] / r['n']:.1f} ms/sample vs {1000 * r['infer'] / r['n']:.1f} ms/sample)")
    if rows["http"]["nds"] != rows["local"]["nds"]:
        raise SystemExit("HTTP and local evaluations disagree")


if __name__ == "__main__":
    main()
