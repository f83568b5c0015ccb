"""``marft report``: every plot and transcripts in one self-contained page, several runs overlaid."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from marft.reporting.report import write_report
from marft.trainer.trainer import Trainer
from tests.conftest import small_config

PLOTS = ("return", "policy_loss", "approx_kl", "entropy", "value_loss", "time", "memory")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = []
    for name, algo in (("appo", "appo"), ("grpo", "grpo")):
        cfg = small_config(
            "run.iterations=3", f"algorithm.name={algo}", "algorithm.group_size=4", "run.report=true"
        )
        trainer = Trainer(cfg, root / name)
        trainer.setup()
        result = trainer.train()
        assert result.report == root / name / "report.html"  # written at the end of training
        out.append(root / name)
    return out


def test_the_page_holds_every_plot_and_transcripts(runs):
    page = (runs[0] / "report.html").read_text()
    for key in PLOTS:
        assert re.search(rf'id="plot-{key}"><svg', page), key
    assert page.count('class="transcript"') >= 1
    assert '<div class="role">speaker</div>' in page and '<div class="role">listener</div>' in page
    assert "Best episodes" in page and "Worst episodes" in page
    assert "algorithm:" in page and "name: appo" in page  # the resolved config
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page


def test_several_runs_are_overlaid_on_the_same_axes(runs, tmp_path):
    out = write_report(runs, tmp_path / "cmp.html")
    page = out.read_text()
    ret = page.split('id="plot-return"')[1].split("</svg>")[0]
    assert "appo" in ret and "grpo" in ret  # both runs in one legend
    assert 'id="plot-value_loss"' in page  # from the run that has a critic
    assert page.count("<h2>Transcripts:") == 2


def test_cli_report_and_bad_input(runs, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "marft.cli", "report", *map(str, runs), "--out", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"report: {tmp_path / 'r.html'}")
    proc = subprocess.run(
        [sys.executable, "-m", "marft.cli", "report", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no metrics.jsonl" in proc.stderr


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)",
)
def test_the_page_renders_in_headless_chromium(runs, tmp_path):
    page = runs[0] / "report.html"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    shot = tmp_path / "page.png"
    proc = subprocess.run(
        [*cmd, f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert shot.stat().st_size > 20_000  # a real rendering, not a blank page
    assert "Uncaught" not in proc.stderr and "CONSOLE" not in proc.stderr
    dom = subprocess.run([*cmd, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and all(f'id="plot-{k}"' in dom.stdout for k in PLOTS)
    assert dom.stdout.count("<svg") >= len(PLOTS)


def test_a_routing_run_gets_a_route_plot_and_routes_in_its_transcripts(tmp_path):
    import json

    run = tmp_path / "routed"
    run.mkdir()
    rows = [
        {"iteration": 0, "episode_return": 0.1, "route_share/lead": 1.0},
        {
            "iteration": 1,
            "episode_return": 0.2,
            "route_share/lead": 0.25,
            "route_share/lead>solver>lead": 0.75,
        },
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    turn = {
        "step": 0,
        "reward": 1.0,
        "route": "lead>solver>lead",
        "agents": [{"role": "lead", "response": "4"}],
    }
    (run / "transcripts.jsonl").write_text(
        json.dumps({"iteration": 1, "env": 0, "episode_return": 1.0, "turns": [turn]}) + "\n"
    )
    page = write_report([run]).read_text()
    assert "Nested groups" not in page
    assert "Routes taken per iteration" in page and "route lead&gt;solver&gt;lead" in page
    from marft.reporting.report import _route_series

    assert _route_series(rows, "lead>solver>lead") == ([0, 1], [0.0, 0.75])  # not taken: share 0


def test_a_nested_groups_run_gets_its_per_depth_plot(tmp_path):
    import json

    run = tmp_path / "nested"
    run.mkdir()
    rows = [
        {
            "iteration": i,
            "episode_return": 0.1 * i,
            "nested_effect/depth0": 0.5,
            "nested_effect/depth1": 0.25,
            "answer_change/depth0": 0.6 - 0.1 * i,
            "answer_change_within/depth0": 0.3,
        }
        for i in range(3)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_report([run]).read_text()
    plot = page.split('id="plot-nested"><svg')[1].split("</svg>")[0]
    assert "depth0" in plot and "depth1" in plot  # a panel per depth
    assert "answer differs across these actions" in plot and "answer differs under one action" in plot
