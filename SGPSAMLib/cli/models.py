"""``sgpsam models``: the known models, whether each is present, where, and its licence."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .. import models
from .download import _directory

__all__ = ["register"]


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``models`` sub-command."""
    listing = commands.add_parser(
        "models", parents=[common], help="list the known models, their licences and files",
        description="List the known models: whether each is present, where, its source and "
                    "its licence. Files without a verification record are reported as "
                    "'unverified' unless --verify re-hashes them.")
    listing.add_argument("--cache-dir", metavar="DIR",
                         help="look in DIR instead of the cache folder")
    listing.add_argument("--verify", action="store_true",
                         help="re-compute the SHA-256 of downloaded files")
    listing.set_defaults(handler=_models, uses_itk=False)


def _models(args: argparse.Namespace) -> int:
    directory = _directory(args)
    statuses = [models.model_status(name, verify=args.verify, directory=directory)
                for name in models.KNOWN_MODELS]
    if args.json:
        print(json.dumps({"cache_dir": str(directory), "models": statuses}))
        return 0
    lines = [f"cache folder: {directory}"
             + ("" if os.environ.get("SGPSAM_CACHE_DIR") or args.cache_dir
                else " (set SGPSAM_CACHE_DIR to change)")]
    for status in statuses:
        size = models.format_size(status["approx_bytes"]) if status["approx_bytes"] else "-"
        if status["present"]:
            where = status["path"]
        elif status["downloadable"]:
            where = f"not downloaded: run `sgpsam download {status['name']}`"
            if status["state"] == "corrupt":
                where = (f"{status['expected_path']} fails its SHA-256: run "
                         f"`sgpsam download {status['name']} --force`")
        else:
            where = f"not installed (expected {status['expected_path']})"
        lines.append(f"{status['name']:<18} {status['state']:<11} {size:>8}  "
                     f"{status['licence']:<11} {where}")
        lines.append(f"{'':<18} {status['title']}; licence: {status['licence_url']}")
    print("\n".join(lines))
    return 0
