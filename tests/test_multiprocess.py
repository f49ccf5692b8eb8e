"""Two real JAX processes on this machine (coordinator on 127.0.0.1, gloo collectives, 4 CPU
devices each) train, evaluate and dissect a tiny model and explain a folder with it; the numbers
and maps equal one process with 8 devices. Deselect with `-m "not multiprocess"`."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import multiprocess_job

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_train_evaluate_and_dissect_as_one(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    flags = os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=4")  # conftest's
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "JOB_CACHE": ""}
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multiprocess_job.py"),
                               str(two), "2", str(i), coordinator], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    # The reference runs here, in this process's 8 devices, while the two processes run.
    multiprocess_job.main(str(one), 1, 0, "")
    logs = [p.communicate(timeout=600)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], "\n".join(f"--- process {i} (exit {c}):\n{log[-2500:]}"
                                       for i, (c, log) in enumerate(zip(codes, logs)))
    a = json.loads((one / "job.json").read_text())
    b = json.loads((two / "job.json").read_text())
    assert (a["processes"], a["devices"], b["processes"], b["devices"]) == (1, 8, 2, 8)
    # Only process 0 wrote: one job.json, one evaluation file, one results file.
    assert sorted(os.listdir(two)) == ["eval", "explain", "images", "job.json", "train"]
    # Training: the same global batches, so the same losses and weights up to the order of the
    # cross-device sums (measured: relative differences below 2e-5).
    for h1, h2 in zip(a["history"], b["history"]):
        assert h1["step"] == h2["step"]
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-5)
    for x, y in zip(a["params"], b["params"]):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-5)
    for k in a["auroc"]:
        assert a["auroc"][k] == pytest.approx(b["auroc"][k], abs=1e-6, nan_ok=True)
    # Evaluation and dissection on those weights.
    assert a["counts"] == b["counts"] and sum(a["counts"].values()) > 0
    for m in a["pointing_game"]:
        assert a["pointing_game"][m] == pytest.approx(b["pointing_game"][m], abs=1e-9)
    np.testing.assert_allclose(a["thresholds"], b["thresholds"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["iou"], b["iou"], atol=1e-3)
    # The explain command: the two processes split the 8 files, 7 explained and the broken one
    # skipped and reported once; each map equals the one-process map of the same file (the
    # weights differ by the training's float rounding only).
    assert b["explain_processes"] == 2 and a["explain_processes"] == 1
    assert a["explain_counts"] == b["explain_counts"]
    assert b["explain_counts"]["explained"] == 7 and b["explain_skipped"] == ["broken.png"]
    names = sorted(f for f in os.listdir(one / "explain" / "maps"))
    assert names == sorted(os.listdir(two / "explain" / "maps")) and len(names) == 7
    for name in names:
        m1, m2 = (np.load(d / "explain" / "maps" / name) for d in (one, two))
        assert m1.files == m2.files
        for k in m1.files:
            if m1[k].dtype.kind in "fc":
                np.testing.assert_allclose(m1[k], m2[k], rtol=1e-3, atol=1e-4)
            elif k == "path":  # each job reads its own copy of the folder
                assert os.path.basename(str(m1[k])) == os.path.basename(str(m2[k])) == name[:-4]
            else:
                np.testing.assert_array_equal(m1[k], m2[k])
    assert (two / "explain" / "results.json").exists()
    assert not [f for f in os.listdir(two / "explain") if f.startswith(".share_")]
