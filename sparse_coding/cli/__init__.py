"""The one entry every script runs through: its command line, `--config`, logging, clean errors.

The front doors (`pipe.py`, `fast.py`, `val.py`, `hist.py`, `steer.py`,
`trace.py`) and the `sparse-coding SCRIPT` console command all call `main`.
Each script's own part is one module here (`sparse_coding.cli.fast`, ...):
its `command_line` (options, description, --help) and its `main(config, args)`,
which runs its preflight checks and imports its pipeline, so `--help` and config
errors never wait for torch. User-fixable problems (`SparseCodingError`, and a
full disk, read-only mount or missing permission) become one paragraph on
stderr and exit status 1; anything else is a bug and keeps its traceback.
"""

import argparse
import errno
import importlib
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from sparse_coding.config import DEFAULT_CONFIG_PATH, FIELDS, PACKAGE_DIR, Config, load_config
from sparse_coding.config.schema import script_keys
from sparse_coding.errors import SparseCodingError
from sparse_coding.files.storage import (
    FULL_DISK_ERRNOS,
    NOT_WRITABLE_ERRNOS,
    exit_cleanly_on_sigterm,
    full_disk_text,
)
from sparse_coding.runtime import distributed
from sparse_coding.runtime.allocator import keep_freed_memory
from sparse_coding.runtime.phases import PhaseTimer

logger = logging.getLogger("sparse_coding")

# OSErrors that come from the machine, not from a bug: a full disk or quota,
# a read-only mount, missing permissions. Any other OSError keeps its traceback.
ENVIRONMENT_ERRNOS = FULL_DISK_ERRNOS | NOT_WRITABLE_ERRNOS | {errno.EROFS}

# The commands of `sparse-coding`: each a module sparse_coding.cli.<name> with `command_line` and `main`,
# but the demo, which writes a config and runs fast, pipe and val on it.
SCRIPTS = ("pipe", "fast", "val", "hist", "steer", "trace", "demo", "export", "upload")


def build_parser(
    description: str,
    prog: str | None = None,
    *,
    graph_output: bool = False,
    dataset_passes: bool = False,
    outputs: Sequence[str] = (),
    script: str | None = None,
    section: str | None = None,
) -> argparse.ArgumentParser:
    """An argument parser with the `--config PATH` and `-q` every script takes.

    Args:
        prog: the program name in usage lines (``sparse-coding pipe``).
        graph_output: add `--new-graph` (pipe.py, fast.py).
        dataset_passes: add `--resume` and `--timeout`: the script's passes over data run
            under torchrun and resume from checkpoints (pipe.py, fast.py, val.py, hist.py).
        outputs: what the script writes, shown under --help.
        script: its name (``fast``): the config keys that shape its result are shown under --help.
        section: the README section that explains it.
    """
    epilog = [
        f"writes (under DATA_DIR/<model>/): {', '.join(outputs)}" if outputs else "",
        f"config keys that matter: {', '.join(script_keys(FIELDS, script))} (and those of every script)"
        if script
        else "",
        f'README: section "{section}"' if section else "",
    ]
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="\n".join(textwrap.fill(line, 79, subsequent_indent="  ") for line in epilog if line) or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG_PATH})")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", help="log warnings only, no progress bars")
    loudness.add_argument(
        "-v", "--verbose", action="store_true", help="log details too, e.g. the wall time of every phase"
    )
    if dataset_passes:
        _add_dataset_pass_options(parser)
    if graph_output:
        parser.add_argument(
            "--new-graph",
            action="store_true",
            help="start a new graph instead of merging into the stored one (its files are renamed "
            "<name>.before-<run id>.*, not deleted)",
        )
    return parser


def _add_dataset_pass_options(parser: argparse.ArgumentParser) -> None:
    """`--resume` (checkpoints) and `--timeout` (torchrun) for the scripts with dataset passes."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the dataset passes of a killed run from their checkpoint (CHECKPOINT_EVERY; "
        'README "Scaling out"); without it a run starts over',
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=distributed.DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="under torchrun: seconds a rank waits for the others before the run ends (default: %(default)s)",
    )


def run_script(
    main: Callable[[Config, argparse.Namespace], str],
    description: str,
    argv: Sequence[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> None:
    """Parse arguments, load the config, run `main`; exit 1 with a message on user errors.

    `main` returns the run's summary line, printed last, after the log's
    closing line (its phase timings are logged with ``-v``).
    """
    parser = parser or build_parser(description)
    args = parser.parse_args(argv)
    from tqdm.contrib.logging import logging_redirect_tqdm  # after --help, which stays instant

    main_rank = distributed.launched_rank() == 0  # under torchrun the other ranks log errors only
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO if main_rank else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.verbose and main_rank:
        logger.setLevel(logging.DEBUG)
    args.phases = PhaseTimer()
    args.config_given = args.config is not None
    keep_freed_memory()  # batched CPU work reuses freed blocks instead of re-faulting them
    exit_cleanly_on_sigterm()  # docker stop / kill: unwind like Ctrl-C, removing temp files
    try:
        if not hasattr(args, "timeout") and distributed.launched_world_size() > 1:
            raise SparseCodingError(
                f"{parser.prog} runs as one process; start it without torchrun (torchrun shares the "
                f"dataset passes of pipe.py, fast.py, val.py and hist.py)"
            )
        with distributed.session(getattr(args, "timeout", None)), logging_redirect_tqdm():
            # a log line during a progress bar gets a line of its own
            line = main(load_config(args.config or DEFAULT_CONFIG_PATH), args)
    except SparseCodingError as e:
        _fail(str(e))
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            _claim_failure()
            raise
        _fail(_environment_error(e))
    except KeyboardInterrupt:
        if distributed.first_failure():
            print("interrupted; existing graph files were left as they were", file=sys.stderr)
        sys.exit(130)
    except Exception:
        _claim_failure()
        raise
    if main_rank:
        logger.info("Done in %.1fs%s", args.phases.total(), _peak_gpu_memory())
        logger.debug("Wall time by phase:\n%s", args.phases.table())
        print(line)


def _claim_failure() -> None:
    """Under torchrun, count this rank's bug as the run's failure, so the ranks it takes down stay
    quiet and its traceback is the one printed."""
    if distributed.launched_world_size() > 1:
        distributed.first_failure()


def _environment_error(e: OSError) -> str:
    """A full disk, read-only mount or missing permission, in words: the file, its folder, the space free."""
    where = Path(e.filename) if e.filename else None
    space = ""
    if where is not None and e.errno in FULL_DISK_ERRNOS:
        space = f"; {full_disk_text(where.parent, None)} in its folder {where.parent}"
    return (
        f"{where or 'a file'}: {e.strerror}{space}; files already there were left as they were. "
        f"Free space or set DATA_DIR to a folder you can write"
    )


def _peak_gpu_memory() -> str:
    """' (peak GPU memory X GiB)' when the run used CUDA, else ''; never imports torch itself."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return ""
    return f" (peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB)"


def run_as_program(run: Callable[[], None], *programs: str) -> None:
    """A front door's `__main__`: `run`, then end the process at once, with run's exit status,
    if the process was started to run one of `programs` (the front door's file and module).

    Python's teardown of an imported torch is a noticeable part of a short run
    (docs/benchmarks.md). When a script returns or exits with a message, every
    output file is committed and closed, so only stdio and logging are left to flush. A run
    inside another program (a notebook's `%run`, runpy in a test) returns or
    raises as usual, since ending there would end the notebook's kernel.
    """
    try:
        run()
    except SystemExit as e:
        if not _started_as(programs):
            raise
        status = e.code
    else:
        if not _started_as(programs):
            return
        status = 0
    if isinstance(status, str):  # sys.exit("message"): Python prints it and exits 1
        print(status, file=sys.stderr)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status if isinstance(status, int) else int(status is not None))


def _started_as(programs: Sequence[str]) -> bool:
    """Whether the interpreter's own command line (`sys.orig_argv`) ran one of `programs`:
    a script file (compared resolved, or by name for a console command) or a `-m` module,
    and no interactive prompt follows it (`python3 -i`, PYTHONINSPECT)."""
    if sys.flags.inspect:
        return False
    args = iter(getattr(sys, "orig_argv", [])[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None) in programs
        if arg in ("-X", "-W"):
            next(args, None)
        elif arg == "-c" or arg == "-":
            return False
        elif not arg.startswith("-"):
            script = Path(arg)
            return any(script.name == name or script.resolve() == Path(name).resolve() for name in programs)
    return False


def _fail(message: str) -> NoReturn:
    """One paragraph on stderr, exit status 1; under torchrun, from the first rank that fails only."""
    if distributed.first_failure():
        print(f"error: {distributed.failure_prefix()}{' '.join(message.split())}", file=sys.stderr)
    sys.exit(1)


def run(script: str, argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Parse `script`'s arguments (`argv`, default sys.argv[1:]) and run it, without ending the process
    (the demo and tests call this; `main` is the programs' entry)."""
    if script == "demo":
        importlib.import_module("sparse_coding.demo.run").run(argv, prog)
        return
    command = importlib.import_module(f"sparse_coding.cli.{script}")
    run_script(command.main, command.DESCRIPTION, argv, parser=command.command_line(prog))


def main(script: str | None = None, argv: Sequence[str] | None = None) -> None:
    """Run `script` (a front door's ``main("fast")``), or the one the first argument names (the
    `sparse-coding SCRIPT [--config PATH] ...` console command), then end the process when it was
    started as that program (`run_as_program`)."""
    # A front door run as a file put its folder on sys.path, where the package's folders and modules
    # (config, trace, ...) would shadow top-level modules of those names.
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != PACKAGE_DIR]
    argv = list(sys.argv[1:] if argv is None else argv)
    if script is not None:
        programs, prog = (str(PACKAGE_DIR / f"{script}.py"), f"sparse_coding.{script}"), None
    elif argv and argv[0] in SCRIPTS:
        programs, prog = ("sparse-coding", "sparse_coding"), f"sparse-coding {argv[0]}"
        script, argv = argv[0], argv[1:]
    else:
        names = "|".join(SCRIPTS)
        print(f"usage: sparse-coding {{{names}}} [--config PATH] [-q] [-v] [...]", file=sys.stderr)
        print(
            "  pipe|fast|val|hist|steer|trace: the scripts; demo: the offline demo into a folder; "
            "export: a graph to Neuronpedia's format or tables; upload: a Neuronpedia graph file; "
            "'sparse-coding SCRIPT --help' says more",
            file=sys.stderr,
        )
        sys.exit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    run_as_program(lambda: run(script, argv, prog), *programs)
