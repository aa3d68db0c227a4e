"""`strata token PATH`: write the internal token file that the executor and the kvstore require
(`--token-file`) and the scheduler presents (`--internal-token-file`). compose.yaml's `token`
service runs it once before the daemons start; run it by hand for daemons started one by one
(`strata up` makes its own per-run token).

    strata token /secrets/internal-token      a new random token, unless the file holds one
    STRATA_INTERNAL_TOKEN=T strata token F    the configured token T (replacing the file's)
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from runtime.token import new_token, write_token_file

TOKEN_ENV = "STRATA_INTERNAL_TOKEN"


def holds_token(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except FileNotFoundError:
        return False


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="strata token", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="the token file (mode 0600; its directory is created)")
    args = parser.parse_args(argv)
    configured = os.environ.get(TOKEN_ENV, "").strip()
    args.path.parent.mkdir(parents=True, exist_ok=True)
    if configured:
        write_token_file(args.path, configured)
        print(f"{args.path}: the configured token ({TOKEN_ENV})")
    elif holds_token(args.path):
        print(f"{args.path}: holds a token already; kept")
    else:
        write_token_file(args.path, new_token())
        print(f"{args.path}: a new random token")
    return 0
