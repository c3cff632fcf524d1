"""`deploylab dataloader diagnose | sweep-workers` as a user runs them, on generated data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from deploylab.cli import main
from deploylab.dataloader import DiagnoseReport, SweepReport

PIPELINE = '''
"""A pipeline script: small arrays whose reads wait {delay} s each."""
import io
import time
from pathlib import Path

import numpy as np
import torch

from deploylab.dataloader import Pipeline, StagedDataset, read_bytes


def slow_read(path):
    time.sleep({delay})
    return read_bytes(path)


def decode(raw):
    return np.load(io.BytesIO(raw))


def augment(array):
    return torch.from_numpy(array)


def deploylab_pipeline():
    files = sorted(str(p) for p in Path({root!r}).glob("*.npy"))
    {body}
'''

RETURN_PIPELINE = (
    "return Pipeline(StagedDataset(files, slow_read, decode, augment), "
    "{'batch_size': 4, 'num_workers': 2})"
)


def write_script(tmp_path: Path, arrays: Path, body: str = RETURN_PIPELINE, **kw: object) -> Path:
    text = PIPELINE.format(delay=kw.get("delay", 0.01), root=str(arrays), body=body)
    path = tmp_path / "my_pipeline.py"
    path.write_text(text)
    return path


def deploylab_exe() -> str:
    return str(Path(sys.executable).with_name("deploylab"))


def test_diagnose_end_to_end_writes_table_json_and_chart(
    tmp_path: Path, arrays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path, arrays, delay=0.02)
    out_json, chart = tmp_path / "report.json", tmp_path / "variants.png"
    code = main(
        [
            "dataloader",
            "diagnose",
            str(script),
            "--steps",
            "6",
            "--min-seconds",
            "0.2",
            "--json",
            str(out_json),
            "--chart",
            str(chart),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    report = DiagnoseReport.model_validate_json(out_json.read_text())
    assert report.verdict.bottleneck == "data_access", out
    for word in ("baseline", "no_augmentation", "synthetic_read", "synthetic_decode"):
        assert word in out
    assert "samples/s" in out and "waiting for data" in out
    assert "Verdict: Data access" in out
    assert "Suggestions:" in out
    assert report.loader.batch_size == 4 and report.loader.num_workers == 2
    assert report.chart.png == str(chart) and len(report.chart.y) == 4
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_num_workers_and_batch_size_override(
    tmp_path: Path, arrays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path, arrays, delay=0)
    out_json = tmp_path / "r.json"
    code = main(
        [
            "dataloader",
            "diagnose",
            str(script),
            "--num-workers",
            "0",
            "--batch-size",
            "2",
            "--steps",
            "3",
            "--min-seconds",
            "0",
            "--rounds",
            "1",
            "--no-chart",
            "--json",
            str(out_json),
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads(out_json.read_text())
    assert report["loader"]["num_workers"] == 0 and report["loader"]["batch_size"] == 2
    assert report["chart"]["png"] is None


def test_script_without_the_function(
    tmp_path: Path, arrays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "train.py"
    script.write_text("def make_loader():\n    return None\n")
    assert main(["dataloader", "diagnose", str(script)]) == 2
    err = capsys.readouterr().err
    assert "defines no function `deploylab_pipeline`" in err
    assert "Traceback" not in err


def test_script_returning_the_wrong_thing(
    tmp_path: Path, arrays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path, arrays, body="return files")
    assert main(["dataloader", "diagnose", str(script)]) == 2
    assert "returned list; it must return a Pipeline" in capsys.readouterr().err
    assert main(["dataloader", "diagnose", str(tmp_path / "missing.py")]) == 2
    assert "No pipeline script at" in capsys.readouterr().err


def test_error_in_the_script_is_shown_as_the_users(
    tmp_path: Path, arrays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path, arrays, body="return 1 / 0")
    assert main(["dataloader", "diagnose", str(script)]) == 1
    err = capsys.readouterr().err
    assert "Traceback of the error in your code" in err
    assert "my_pipeline.py" in err and "return 1 / 0" in err
    assert "deploylab_pipeline() in my_pipeline.py raised ZeroDivisionError" in err
    assert "deploylab/dataloader" not in err


@pytest.mark.usefixtures("no_leftover_children")
def test_error_in_a_worker_is_shown_with_its_traceback(
    tmp_path: Path, arrays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = (
        "def broken(raw):\n"
        "        import torch.utils.data as d\n"
        "        if d.get_worker_info() is not None:\n"
        "            raise OSError('disk quota exceeded')\n"
        "        return decode(raw)\n"
        "    return Pipeline(StagedDataset(files, read_bytes, broken, augment), "
        "{'batch_size': 4, 'num_workers': 2})"
    )
    deep = tmp_path / ("a_project_folder_with_a_long_name_" * 3)  # lines past 80 columns
    deep.mkdir()
    script = write_script(deep, arrays, body=body)
    assert main(["dataloader", "diagnose", str(script), "--steps", "2", "--no-chart"]) == 1
    err = capsys.readouterr().err
    assert "in a DataLoader worker process) raised OSError: disk quota exceeded" in err
    assert f'File "{script}", line' in err and "raise OSError" in err  # never wrapped


def test_variants_not_built_say_what_would_enable_them(
    tmp_path: Path, arrays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A dataset that loads its arrays by number: no `transform`, no list of files.
    body = (
        "class ByNumber(torch.utils.data.Dataset):\n"
        "        def __len__(self):\n"
        "            return 8\n"
        "        def __getitem__(self, i):\n"
        "            return torch.from_numpy(np.load(files[i]))\n"
        "    return Pipeline(ByNumber(), {'batch_size': 4})"
    )
    script = write_script(tmp_path, arrays, body=body)
    args = ["dataloader", "diagnose", str(script), "--steps", "10", "--max-seconds", "0.5"]
    assert main([*args, "--no-chart"]) == 0
    out = capsys.readouterr().out
    assert "no_augmentation not built: ByNumber has no `transform` attribute" in out
    assert "synthetic_decode not built: no attribute of ByNumber lists its files" in out
    assert "to enable it: keep the transforms in an attribute, `self.transform = transform`" in out
    assert "to enable it: keep one file path per sample in a list attribute" in out
    assert "How sure:" in out and "Verdict in" in out


def test_empty_dataset_from_a_script(
    tmp_path: Path, arrays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = "return Pipeline(StagedDataset([], read_bytes), {'batch_size': 4})"
    script = write_script(tmp_path, arrays, body=body)
    assert main(["dataloader", "diagnose", str(script)]) == 2
    assert "has length 0" in capsys.readouterr().err


def test_ctrl_c_stops_the_run_and_its_workers(tmp_path: Path, arrays: Path) -> None:
    script = write_script(tmp_path, arrays, delay=0.05)
    proc = subprocess.Popen(
        [deploylab_exe(), "dataloader", "diagnose", str(script), "--steps", "100000", "--no-chart"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 90
        workers: list[psutil.Process] = []
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            workers = parent.children(recursive=True)
        assert len(workers) >= 2, "the DataLoader workers never started"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Interrupted: the DataLoader workers were stopped." in err
    gone, alive = psutil.wait_procs(workers, timeout=5)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"workers left running after Ctrl-C: {alive}"


def test_sweep_workers_marks_the_knee(
    tmp_path: Path, arrays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path, arrays, delay=0.01)
    out_json, chart = tmp_path / "sweep.json", tmp_path / "sweep.png"
    code = main(
        [
            "dataloader",
            "sweep-workers",
            str(script),
            "--workers",
            "0,1,4",
            "--steps",
            "5",
            "--min-seconds",
            "0.2",
            "--rounds",
            "1",
            "--json",
            str(out_json),
            "--chart",
            str(chart),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "<- knee" in out and "Knee: num_workers=" in out
    assert "still rises at the most workers tried" in " ".join(out.split())
    report = SweepReport.model_validate_json(out_json.read_text())
    rates = {p.num_workers: p.measurement.samples_per_s for p in report.points}
    assert list(rates) == [0, 1, 4]
    # Reads that sleep overlap across workers: 4 workers are much faster than none.
    assert rates[4] > 2 * rates[0]
    assert report.knee_num_workers == 4 and report.chart.marked == "4"
    assert chart.read_bytes()[:4] == b"\x89PNG"
    assert main(["dataloader", "sweep-workers", str(script), "--workers", "two"]) == 2
    assert "comma-separated whole numbers" in capsys.readouterr().err
