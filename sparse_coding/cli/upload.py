"""`sparse-coding upload FILE [--dry-run]`: put a <stem>.neuronpedia.json on NEURONPEDIA_URL."""

import argparse
import os
from pathlib import Path

from sparse_coding.cli import build_parser
from sparse_coding.config import Config, redact_url
from sparse_coding.errors import ConfigError
from sparse_coding.sharing.upload import api_base, check_file, upload

DESCRIPTION = "Upload a Neuronpedia graph file (<stem>.neuronpedia.json) with NEURONPEDIA_API_KEY."


def main(config: Config, args: argparse.Namespace) -> str:
    path = Path(args.file)
    data, metadata = check_file(path)
    base = api_base(config.NEURONPEDIA_URL)
    if args.dry_run:
        return (
            f"upload --dry-run: {path} ({len(data)} bytes, slug {metadata['slug']}, scan {metadata['scan']}) "
            f"would go to {redact_url(base)}; nothing sent"
        )
    api_key = os.environ.get("NEURONPEDIA_API_KEY")
    if not api_key:
        raise ConfigError(
            "NEURONPEDIA_API_KEY is unset; set it to your Neuronpedia API key (or use --dry-run)"
        )
    reply = upload(path, base_url=base, api_key=api_key)
    return f"upload: {path.name} saved on {redact_url(base)}: {reply.get('url') or reply}"


def command_line(prog: str | None = None) -> argparse.ArgumentParser:
    parser = build_parser(DESCRIPTION, prog, section="Sharing graphs")
    parser.add_argument("file", help="a <stem>.neuronpedia.json file (sparse-coding export --to neuronpedia)")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the file and say where it would go; send nothing"
    )
    return parser
