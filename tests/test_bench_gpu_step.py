"""bench/gpu_step.py in its CPU mode: tiny shapes, both engines, one warm-up and one timed step each; what the
GPU mode runs, minus the device. Its numbers are not checked (timings belong to benches), its shape is."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_step_bench_runs_both_engines_in_cpu_mode(tmp_path):
    out = tmp_path / "rows.json"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_step.py"), "--cpu-tiny", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())
    assert [(r["policy"], r["G"], r["engine"]) for r in rows] == [("tiny", 2, "fast"), ("tiny", 2, "trl")]
    for row in rows:
        assert "refused" not in row
        assert row["s_step"] > 0 and row["s_generate"] > 0 and row["s_fwd_bwd"] > 0 and row["tok_per_s"] > 0
        assert row["s_generate"] + row["s_fwd_bwd"] <= row["s_step"] * 1.05
    assert "| tiny | 2 | trl |" in proc.stdout  # the table the docs quote
