"""Run scripts as N ranks of one process group, forked from this process (torch.multiprocessing).

    python3 tests/rank_driver.py PLAN.json

PLAN is a list of launches, run one after another; each is
``{"world": N, "commands": [["hist", "--config", "c.yaml"], ...], "kill": [PASS, POSITION, WHEN] | null}``.
Each command is run by N fresh processes, as torchrun would start them: the
command through `sparse_coding.cli.main`, torchrun's variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) set when N > 1. ``kill``
SIGKILLs rank 0 when it saves pass PASS's checkpoint at POSITION ("done" for
the pass's last save), "before" or "after" writing it; a command that fails
ends its launch. Each rank's stderr goes to PLAN's folder, launch<i>.rank<r>.log.
Prints one JSON line per launch: {"world", "exit": [the last command's
per-rank exit codes or signal names]}. Forking after one import of
torch keeps a command to about a second on a small machine; the parent runs
no torch op before forking.
"""

import json
import os
import signal
import socket
import sys
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Imported once here, so that each forked rank starts without importing them again.
import sklearn.cluster  # noqa: E402, F401

import sparse_coding.pipelines.fast  # noqa: E402, F401
import sparse_coding.pipelines.hist  # noqa: E402, F401
import sparse_coding.pipelines.val  # noqa: E402, F401
from sparse_coding import cli  # noqa: E402
from sparse_coding.runtime import checkpoints, distributed  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, launch: dict, argv: list[str], port: int, log: str) -> None:
    import faulthandler

    import torch

    with open(log.format(rank=rank), "a") as file:
        os.dup2(file.fileno(), 2)

    faulthandler.dump_traceback_later(120, exit=True)  # a hung rank says where, and ends

    torch.set_num_threads(1)
    if launch["world"] > 1:
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(launch["world"]),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
    if launch.get("kill"):
        kill_when_saving(*launch["kill"])
    try:
        cli.main(argv=argv)
    except SystemExit as e:
        if e.code:
            raise


def kill_when_saving(name: str, position, when: str) -> None:
    save = checkpoints.RunCheckpoint.save

    def saving(self, pass_name, at, state, *, done=False):
        at_point = pass_name == name and (done if position == "done" else at == position and not done)
        hit = at_point and distributed.is_main()  # every rank calls save; rank 0 writes
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        save(self, pass_name, at, state, done=done)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.RunCheckpoint.save = saving


def launch(plan: dict, log: str) -> dict:
    for argv in plan["commands"]:
        args = (plan, argv, free_port(), log)
        context = mp.start_processes(
            rank_main, args=args, nprocs=plan["world"], join=False, start_method="fork"
        )
        try:
            while not context.join():
                pass
        except mp.ProcessExitedException:
            pass
        codes = [p.exitcode for p in context.processes]
        if any(codes):
            break
    return {"world": plan["world"], "exit": [signal.Signals(-c).name if c and c < 0 else c for c in codes]}


if __name__ == "__main__":
    plan_path = Path(sys.argv[1])
    for index, step in enumerate(json.loads(plan_path.read_text())):
        print(json.dumps(launch(step, str(plan_path.parent / f"launch{index}.rank{{rank}}.log"))), flush=True)
