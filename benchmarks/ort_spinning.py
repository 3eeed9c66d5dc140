"""ONNX Runtime's idle spinning: what it costs the cores between requests, and what turning
it off costs a call.

ONNX Runtime's intra-op threads busy-wait ("spin") for a while after each call, so that
the next call starts sooner; in a server the time between calls belongs to decoding and
encoding other requests, on the same cores.  This times batch-1 calls of an ONNX export
with spinning on (ONNX Runtime's default) and off, in interleaved rounds, with a gap of
``--gap-ms`` between calls (a server's host work), and reports per call: the wall time,
and the process CPU time spent during the gap (what spinning takes from the host path).

    python benchmarks/ort_spinning.py ONNX_EXPORT_DIR [--rounds 5] [--gap-ms 20]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    import onnxruntime as ort
    import server_bench

    from model.inference import formats
    from model.inference.contract import INPUT_IMAGES, INPUT_SIZES, ModelMetadata

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="calls per round and setting")
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    size = ModelMetadata.read(args.model).input_size
    sessions = {}
    for spinning in ("1", "0"):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        sessions[spinning] = ort.InferenceSession(
            str(formats.model_file(args.model, formats.ONNX)), options,
            providers=["CPUExecutionProvider"])
    feed = {INPUT_IMAGES: np.random.default_rng(0).integers(0, 255, (1, size, size, 3),
                                                             dtype=np.uint8),
            INPUT_SIZES: np.array([[size, size]], np.int32)}
    for session in sessions.values():
        session.run(None, feed)
    wall: dict[str, list[float]] = {k: [] for k in sessions}
    gap_cpu: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for spinning, session in sessions.items():
            for _ in range(args.calls):
                start = time.perf_counter()
                session.run(None, feed)
                wall[spinning].append(time.perf_counter() - start)
                cpu = time.process_time()
                time.sleep(args.gap_ms / 1000)  # the host path's turn
                gap_cpu[spinning].append(time.process_time() - cpu)
    result = {"machine": server_bench.machine(), "model": str(args.model), "size": size,
              "gap_ms": args.gap_ms, "onnxruntime": ort.__version__}
    for spinning in sessions:
        name = "spinning on (default)" if spinning == "1" else "spinning off"
        result[name] = {"call_s_median": round(statistics.median(wall[spinning]), 4),
                        "gap_cpu_ms_median": round(1000 * statistics.median(gap_cpu[spinning]), 1)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
