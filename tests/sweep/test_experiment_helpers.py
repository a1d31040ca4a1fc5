"""slm_jax/sweep/experiment.py: what the reproduction scripts read from finished runs."""

import json
import math
from pathlib import Path

from slm_jax.sweep.experiment import finished, mean_std, val_curve


def test_val_curve_reads_every_evaluation_and_skips_training_lines(tmp_path):
    lines = [
        {"step": 10, "loss": 3.0},
        {"step": 25, "val_loss": 2.5, "val_accuracy": 0.3},
        {"step": 50, "val_loss": 2.1},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert val_curve(tmp_path) == {25: 2.5, 50: 2.1}
    assert val_curve(tmp_path, "val_accuracy") == {25: 0.3}


def test_mean_std_and_a_missing_run():
    assert mean_std([1.0, 2.0, 3.0]) == "2.0000 +- 1.0000"
    single = mean_std([1.5], digits=2).split(" +- ")
    assert single[0] == "1.50" and math.isnan(float(single[1]))
    assert not finished(Path("/nonexistent/run"), 10)
