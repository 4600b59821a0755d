"""Several ranks, one result: hist.py, fast.py and val.py under torch.distributed (gloo, CPU).

The equivalence and resume tests fork their ranks from one driver process
(tests/rank_driver.py, torch.multiprocessing), so a launch costs about a
second; the torchrun tests start the real launcher. The reference is always
the same scripts run by one plain process.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CORPUS, tiny_config_dict
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "rank_driver.py"
WORDS = "When Mary and John went to the store , John gave a drink to Mary".split()
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def write_config(tmp_path, tiny_model_dir, sae_templates):
    """write_config(name, **overrides) -> a YAML config whose outputs go to tmp_path/name."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{text} ({i})" for i in range(3) for text in CORPUS) + "\nThe end.\n")
    pairs = tmp_path / "pairs.jsonl"
    rows = []
    for n in range(5, 14):  # prefixes of 5..13 words: padded batches of mixed lengths
        clean = " ".join(WORDS[:n])
        patch = " ".join({"Mary": "John", "John": "Mary"}.get(word, word) for word in WORDS[:n])
        rows.append(
            {"clean_prefix": clean, "patch_prefix": patch, "clean_answer": " to", "patch_answer": " the"}
        )
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def write(name: str, **overrides) -> Path:
        values = tiny_config_dict(tmp_path, tiny_model_dir, sae_templates) | {
            "DATA_DIR": str(tmp_path / name),
            "DATASET": str(corpus),
            "MAX_SEQ_LEN": 16,
            "BATCH_SIZE": 2,
            "NUM_CLUSTERS": 3,
            "KEEPER_CLUSTER_INDEX": 0,
            "THRESHOLD_PERCENTILE": 100,
            "CHECKPOINT_EVERY": 4,
            "VALIDATION_DIMS_PINNED": {"resid_1": [1, 2], "mlp_2": [3]},
            "NUM_DOWN_NODES": 2,
            "NUM_UP_NODES": 2,
            "SEQ_PER_DIM_CAP": 3,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values | overrides))
        return path

    write.pairs = pairs
    return write


def run_launches(tmp_path: Path, plan: list[dict]) -> list[dict]:
    """Run the driver on `plan`; one {"world", "exit"} per launch."""
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / "plan.json")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    launches = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"world"')]
    for launch in launches:
        launch["stderr"] = done.stderr[-4000:]
    return launches


def outputs(data_dir: Path) -> Path:
    return next(p for p in data_dir.iterdir() if p.is_dir())


def assert_same_thresholds(a: Path, b: Path) -> None:
    first, second = load_file(str(a / "thresholds.safetensors")), load_file(str(b / "thresholds.safetensors"))
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_allclose(first[key], second[key], rtol=1e-6, atol=1e-7, err_msg=key)
    meta = [json.loads((d / "thresholds.json").read_text()) for d in (a, b)]
    for key in ("n_sequences", "n_tokens", "n_kept", "cluster_sizes"):
        assert meta[0][key] == meta[1][key], key


def assert_same_graph(a: Path, b: Path) -> None:
    first, second = (json.loads((d / "grads_graph.json").read_text()) for d in (a, b))
    nodes = [{n["id"]: n for n in g["nodes"]} for g in (first, second)]
    assert sorted(nodes[0]) == sorted(nodes[1])  # the same selection
    for node_id, node in nodes[0].items():
        other = nodes[1][node_id]
        for key in ("attribution", "activation"):
            assert node.get(key) == pytest.approx(other.get(key), rel=1e-6, abs=1e-7), (node_id, key)
        assert node.get("contexts") == other.get("contexts"), node_id
    edges = [{(e["source"], e["target"]): e["effect"] for e in g["edges"]} for g in (first, second)]
    assert sorted(edges[0]) == sorted(edges[1])
    for pair, effect in edges[0].items():
        assert effect == pytest.approx(edges[1][pair], rel=1e-6, abs=1e-7), pair
    exact = [g["metadata"]["runs"][-1]["exact"]["effects"] for g in (first, second)]
    assert exact[0] == pytest.approx(exact[1], rel=1e-6, abs=1e-7)


def assert_same_report(a: Path, b: Path) -> None:
    first, second = (json.loads((d / "validation.json").read_text()) for d in (a, b))
    for key in first.keys() - {"config", "world_size"}:
        assert first[key] == pytest.approx(second[key], rel=1e-6, abs=1e-9), key


def assert_same_contexts(a: Path, b: Path) -> None:
    with np.load(a / "contexts" / "top_contexts.npz") as x, np.load(b / "contexts" / "top_contexts.npz") as y:
        assert sorted(x.files) == sorted(y.files)
        for name in x.files:
            if name.endswith(("/act", "/window")):
                np.testing.assert_allclose(x[name], y[name], rtol=1e-6, atol=1e-7, err_msg=name)
            elif name != "header":
                np.testing.assert_array_equal(x[name], y[name], err_msg=name)  # the same sequences, positions


def test_one_two_and_three_ranks_give_the_same_thresholds_graph_report_and_contexts(write_config, tmp_path):
    extra = {"PAIRS_FILE": str(write_config.pairs), "BASELINE": "mean", "NODE_ESTIMATOR": "exact"}
    plan = []
    for world in (1, 2, 3):
        config = str(write_config(f"ranks{world}", **extra))
        commands = [[script, "--config", config, "-q"] for script in ("fast", "hist", "val")]
        plan.append({"world": world, "commands": commands})

    launches = run_launches(tmp_path, plan)

    assert [launch["exit"] for launch in launches] == [[0], [0, 0], [0, 0, 0]], launches[0]["stderr"]
    one = outputs(tmp_path / "ranks1")
    for world in (2, 3):
        many = outputs(tmp_path / f"ranks{world}")
        assert_same_thresholds(one, many)
        assert_same_graph(one, many)
        assert_same_report(one, many)
        assert_same_contexts(one, many)
        runs = json.loads((many / "grads_graph.json").read_text())["metadata"]["runs"]
        assert [run["world_size"] for run in runs] == [world]  # one run, by `world` processes
        assert json.loads((many / "validation.json").read_text())["world_size"] == world
        assert not list(many.rglob("*.ckpt"))  # finished runs remove their checkpoints


def test_sigkill_at_several_points_then_resume_gives_the_uninterrupted_result(write_config, tmp_path):
    def commands(name: str, *scripts: str, resume: bool = False) -> list[list[str]]:
        config = str(write_config(name))
        return [[script, "--config", config, *(["--resume"] if resume else [])] for script in scripts]

    plan = [
        {"world": 1, "commands": commands("reference", "hist", "val")},
        # one process, killed three times: mid-pass before a write, after a pass, mid-pass after a write
        {"world": 1, "commands": commands("one", "hist"), "kill": ["hist: clusters", 8, "before"]},
        {
            "world": 1,
            "commands": commands("one", "hist", resume=True),
            "kill": ["hist: cuts", "done", "after"],
        },
        {
            "world": 1,
            "commands": commands("one", "hist", resume=True),
            "kill": ["hist: top values", 8, "after"],
        },
        {"world": 1, "commands": commands("one", "hist", "val", resume=True)},
        # two ranks, killed in hist.py and in val.py's second pass; resumed by two, then by one
        {"world": 2, "commands": commands("two", "hist"), "kill": ["hist: top values", 4, "after"]},
        {
            "world": 2,
            "commands": commands("two", "hist", "val", resume=True),
            "kill": ["validation", 8, "after"],
        },
        {"world": 1, "commands": commands("two", "val", resume=True)},
    ]

    launches = run_launches(tmp_path, plan)

    exits = [launch["exit"] for launch in launches]
    assert exits[0] == exits[4] == exits[7] == [0], launches[0]["stderr"]
    assert exits[1] == exits[2] == exits[3] == ["SIGKILL"]
    assert exits[5][0] == exits[6][0] == "SIGKILL"
    resumed_from = {
        2: "hist: clusters at batch 4",  # the last checkpoint before the kill
        3: "hist: clusters done, hist: cuts done",
        4: "hist: top values at batch 8",
        6: "hist: top values at batch 4",
        7: "validation at batch 8",
    }
    for index, where in resumed_from.items():
        log = (tmp_path / f"launch{index}.rank0.log").read_text()
        assert "Resuming from checkpoint" in log and where in log, (index, log[-2000:])
    reference = outputs(tmp_path / "reference")
    for name in ("one", "two"):
        resumed = outputs(tmp_path / name)
        assert_same_thresholds(reference, resumed)
        assert_same_report(reference, resumed)
        assert not list(resumed.rglob("*.ckpt"))


def torchrun(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS} | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_runs_fast_py_once_over_two_ranks_and_rank_0_alone_logs_and_writes(write_config, tmp_path):
    config = write_config("torchrun")

    done = torchrun(["-m", "sparse_coding", "fast", "--config", str(config)], cwd=tmp_path)

    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("fast.py: ") == 1  # the closing line, from rank 0 only
    assert done.stderr.count("INFO sparse_coding: Done in") == 1
    assert done.stderr.count("Collecting contexts of") == 1
    graph = json.loads((outputs(tmp_path / "torchrun") / "grads_graph.json").read_text())
    assert [run["world_size"] for run in graph["metadata"]["runs"]] == [2]


def test_a_failing_rank_ends_every_rank_with_one_message_and_no_hang(write_config, tmp_path):
    """Rank 1 fails inside a dataset pass while rank 0 waits for it in a collective."""
    config = write_config("failing")
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(
        "import os, sys\n"
        "from sparse_coding.algorithms import validation\n"
        "from sparse_coding.errors import DatasetError\n"
        "real = validation._add_batch\n"
        "def failing(*args):\n"
        "    if os.environ['RANK'] == '1':\n"
        "        raise DatasetError('sequence 3 of DATASET is broken')\n"
        "    return real(*args)\n"
        "validation._add_batch = failing\n"
        "from sparse_coding import cli\n"
        "cli.main(argv=sys.argv[1:])\n"
    )
    began = time.monotonic()

    done = torchrun([str(script), "val", "--config", str(config), "--timeout", "60"], cwd=tmp_path)

    assert done.returncode != 0
    assert time.monotonic() - began < 60  # torchrun ends rank 0 long before the collective's timeout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: (rank 1 of 2) sequence 3 of DATASET is broken"], done.stderr[-4000:]
    assert "interrupted" not in done.stderr
    assert not (outputs(tmp_path / "failing") / "validation.json").exists()
