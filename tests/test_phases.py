"""The phase table: phases in the order they ran, time outside them, the total."""

import time

from sparse_coding.runtime.phases import PhaseTimer


def test_phases_add_up_in_order_and_the_rest_is_other():
    timer = PhaseTimer()
    with timer.phase("load"):
        time.sleep(0.02)
    with timer.phase("compute"):
        time.sleep(0.01)
    with timer.phase("load"):  # a phase that runs twice adds up
        time.sleep(0.02)
    time.sleep(0.02)
    assert list(timer.seconds) == ["load", "compute"]
    assert timer.seconds["load"] >= 0.04 and timer.seconds["compute"] >= 0.01
    rows = timer.table().splitlines()
    assert [row.split()[0] for row in rows] == ["load", "compute", "other", "total"]
    seconds = [float(row.split()[1].rstrip("s")) for row in rows]
    assert seconds[2] >= 0.015 and abs(sum(seconds[:3]) - seconds[3]) < 0.02


def test_a_phase_that_raises_is_still_timed():
    timer = PhaseTimer()
    try:
        with timer.phase("write"):
            raise OSError("disk full")
    except OSError:
        pass
    assert "write" in timer.metadata()


def test_the_done_line_names_peak_gpu_memory_only_after_cuda_was_used(monkeypatch):
    """benchmarks/bench_e2e.py reads this line for the run's peak GPU memory."""
    import torch

    from sparse_coding import cli

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert cli._peak_gpu_memory() == ""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 3 * 2**30)
    assert cli._peak_gpu_memory() == " (peak GPU memory 3.00 GiB)"


def test_the_summary_line_comes_last_and_the_phase_table_only_with_v(tmp_path, capsys):
    import logging

    from sparse_coding import cli

    (tmp_path / "c.yaml").write_text("SEED: 1\n")

    def main(config, args):
        with args.phases.phase("compute"):
            logging.getLogger("sparse_coding.test").info("working")
        return "script.py: the summary"

    root, package = logging.getLogger(), logging.getLogger("sparse_coding")
    handlers, level = list(root.handlers), package.level
    try:
        for argv, table in (
            (["--config", str(tmp_path / "c.yaml")], False),
            (["--config", str(tmp_path / "c.yaml"), "-v"], True),
        ):
            root.handlers = [logging.StreamHandler()]  # basicConfig adds none while one is there
            root.setLevel(logging.INFO)
            cli.run_script(main, "test", argv)
            out, err = capsys.readouterr()
            assert out == "script.py: the summary\n"
            assert "Done in" in err and ("Wall time by phase" in err) == table
            package.setLevel(logging.NOTSET)
    finally:
        root.handlers, package.level = handlers, level
