"""``sgpsam info CKPT``: architecture, SGPM blocks, parameters, provenance, size and SHA-256."""
from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register"]


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``info`` sub-command."""
    info = commands.add_parser(
        "info", parents=[common], help="describe a checkpoint",
        description="Architecture, SGPM blocks, parameter count, provenance, size and SHA-256 "
                    "of a checkpoint.")
    info.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or model name")
    info.set_defaults(handler=_info, uses_itk=False)


def _info(args: argparse.Namespace) -> int:
    from ..build import describe_checkpoint
    from ..models import resolve_model

    description = describe_checkpoint(resolve_model(args.checkpoint, option="CKPT"))
    if args.json:
        print(json.dumps(description))
        return 0
    sgpm = description["sgpm_blocks"]
    config = description["config"]
    lines = [
        f"file:        {description['path']} ({description['file_bytes'] / 1e6:.1f} MB)",
        f"sha256:      {description['sha256']}",
        f"format:      {description['format']}",
        f"preset:      {description['preset']} (config {description['config_source']})",
        f"SGPM:        {'blocks ' + ', '.join(map(str, sgpm)) if sgpm else 'none'}",
        f"parameters:  {description['num_parameters']:,} in {description['num_tensors']} tensors",
        "config:",
        *(f"  {key}: {value}" for key, value in config.items()),
    ]
    metadata = description["metadata"]
    if metadata:
        lines.append("metadata:")
        lines.extend(f"  {key}: {value}" for key, value in metadata.items())
    print("\n".join(lines))
    return 0
