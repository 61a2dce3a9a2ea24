"""benchmarks/speed.py: one tiny matrix through the parent API, the meter, the markdown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _speed():
    spec = importlib.util.spec_from_file_location("kaizen_speed_benchmark", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speed():
    return _speed()


def test_matrix_classical_two_sizes(speed, tmp_path):
    """Fresh child processes for the classical engine at 128² and 256², one repeat, one thread."""
    out = tmp_path / "speed_cpu.json"
    speed.run_matrix(["classical"], [128, 256], [1], repeats=1, device="cpu", work=tmp_path / "fields", out=out,
                     timeout=600, matmul_n=256, verbose=False)
    result = json.loads(out.read_text())
    m = result["matrix"]
    assert m["finished"] and m["machine"]["cpu_count"] >= 1 and m["machine"]["torch"]
    assert len(m["runs"]) == 2
    assert not [r for r in m["runs"] if "error" in r], [r.get("error") for r in m["runs"]]
    for r in m["runs"]:
        assert r["steady_s"] > 0 and r["first_s"] > 0 and r["n_objects"] > 0
        assert r["torch_threads"] == 1 and r["input"] == "nuclei"
        assert 0 < r["rss_before_gib"] <= r["peak_rss_gib"] < 64
        assert r["load_model_s"] is None and "network_share" not in r  # no network in the classical engine
        assert set(r["load_average_1min"]) == {"start", "end"}
    assert m["matmul_gflops_per_s"]["1"] > 0
    (row,) = m["summary"]["rows"]
    assert row["engine"] == "classical" and row["threads"] == 1
    assert isinstance(row["exponent"], float) and 0 < row["exponent"] < 5  # two sizes: a slope
    assert row["cells"]["256"]["s_per_mpx"] > 0
    assert m["fields"]["256"]["n_nuclei"] > 0
    md = tmp_path / "speed.md"
    md.write_text("# Speed\n\n<!-- speed-table:cpu -->\n(run `python benchmarks/speed.py` to fill)\n"
                  "<!-- /speed-table:cpu -->\n\n## What each change bought\n")
    speed.write_markdown(md, "cpu", speed.render_markdown(result))
    text = md.read_text()
    assert "| classical | 1 |" in text and "to fill" not in text and text.endswith("## What each change bought\n")
    speed.write_markdown(md, "cpu", speed.render_markdown(result))  # a rerun replaces, not appends
    assert md.read_text() == text


def test_network_meter_times_outermost_calls(speed):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.b(self.a(x))

        def predict(self, x):
            return self.b(x)

    net, x = Net(), torch.zeros(2, 8)
    with speed.NetworkMeter([Net]) as meter:
        net(x)
        net.predict(x)
    assert meter.outer_calls == 2 and meter.module_calls == 5 and meter.seconds > 0
    with speed.NetworkMeter([Net], flops=True) as counter:
        net(x)
        net(x)  # same shapes: counted from the cache
    assert counter.flops == 2 * (2 * 2 * 8 * 8 * 2)
    assert torch.nn.Module.__call__.__name__ != "wrapper" and "wrapper" not in Net.predict.__qualname__


def test_exponent(speed):
    assert speed.exponent([(512, 1.0), (1024, 4.0)]) == pytest.approx(1.0)
    assert speed.exponent([(512, 1.0)]) is None
