"""Load check of `scalestyle serve` on localhost: N concurrent stylize requests (gradio_client, the queue
API) to a server on the bundled demo with a bounded queue; every request must come back with an image or
with Gradio's queue-full refusal, none lost. Prints the counts, the wall time and the server's peak RSS
(VmHWM of its process, which is the server alone: the model runs in it).

    python tools/ui_load.py                       # 20 requests, --queue-size 8, --concurrency 1
    python tools/ui_load.py --requests 20 --queue-size 30 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image
from tests.ui_harness import Server


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def run(requests: int, queue_size: int, concurrency: int, timeout: float) -> dict[str, object]:
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref = root / "ref.png"
        Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(ref)
        server = Server(root, extra=["--queue-size", str(queue_size), "--concurrency", str(concurrency)])
        server.start()
        assert server.proc is not None
        try:
            client = Client(server.url, verbose=False)
            # one request first, so that the model is loaded and the RSS baseline is the loaded server
            warm_start = time.perf_counter()
            client.predict(*_inputs(handle_file(str(ref)), 0), api_name="/on_stylize")
            warm_s = time.perf_counter() - warm_start
            rss_loaded = peak_rss_mb(server.proc.pid)
            start = time.perf_counter()
            jobs = [
                client.submit(*_inputs(handle_file(str(ref)), i + 1), api_name="/on_stylize")
                for i in range(requests)
            ]
            answered, refused, other = 0, 0, []
            for job in jobs:
                try:
                    job.result(timeout=timeout)
                    answered += 1
                except Exception as err:  # gradio_client raises its own error types per version
                    if "queue is full" in str(err).lower():
                        refused += 1
                    else:
                        other.append(f"{type(err).__name__}: {err}")
            wall = time.perf_counter() - start
            rss_peak = peak_rss_mb(server.proc.pid)
            written = len(list(server.outputs.glob("*.png")))
        finally:
            server.kill()
    return {
        "requests": requests,
        "queue_size": queue_size,
        "concurrency": concurrency,
        "answered": answered,
        "refused_queue_full": refused,
        "other_errors": other,
        "lost": requests - answered - refused - len(other),
        "images_written": written - 1,
        "first_request_s": round(warm_s, 2),
        "wall_s": round(wall, 2),
        "peak_rss_mb_after_first": round(rss_loaded, 1),
        "peak_rss_mb": round(rss_peak, 1),
    }


def _inputs(ref: object, seed: int) -> list[object]:
    # the Stylize tab's inputs in order: style, text_only, prompt, style_prompt, method, ablation,
    # key_steps, fine_steps, steps_convention, seed, cfg, tau, top_k, top_p, aspect
    return [ref, False, "a house", "", "training-free", "d", "2,3", "", "B", seed, 3.0, 0.5, 900, 0.97, "1:1"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--queue-size", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for any one answer")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    report = run(args.requests, args.queue_size, args.concurrency, args.timeout)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    ok = report["lost"] == 0 and not report["other_errors"] and report["images_written"] == report["answered"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
