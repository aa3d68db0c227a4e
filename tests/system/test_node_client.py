"""The Node.js client (clients/node) against `strata up`: its own `node --test` suite, given the
server's address and the greedy tokens the Python client got, must pass with nothing skipped.

The first run installs the client's dependencies with `npm ci` (from the npm registry or npm's
cache); later runs skip it while node_modules matches package-lock.json.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from greedy_parity import generate_tokens
from protos.v1 import generation_pb2
from servers import start_up

pytestmark = pytest.mark.system

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
MIN_NODE_MAJOR = 20
# A prompt on which the tiny random Llama's greedy tokens differ from one another ([5, 6, 7, 8, 9]
# gives one token 8 times), so that matching them checks every position.
PROMPT = [300, 17, 42, 99, 250, 7]
MAX_TOKENS = 8
# Written by install_dependencies after a successful `npm ci`: the lockfile's hash it installed.
STAMP = CLIENT_DIR / "node_modules" / ".strata-lock-sha256"


def node_major() -> int | None:
    """Node's major version, or None without node and npm on PATH."""
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30).stdout
    return int(version.lstrip("v").split(".")[0])


def lock_hash() -> str:
    return hashlib.sha256((CLIENT_DIR / "package-lock.json").read_bytes()).hexdigest()


def install_dependencies() -> None:
    """`npm ci` unless node_modules already holds what package-lock.json pins."""
    expected = lock_hash()
    if STAMP.exists() and STAMP.read_text() == expected:
        return
    # --ignore-scripts: no dependency needs its install script (protobufjs's only checks versions).
    result = subprocess.run(["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts"],
                            cwd=CLIENT_DIR, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"npm ci failed in {CLIENT_DIR}:\n{result.stdout}\n{result.stderr}"
    STAMP.write_text(expected)


def write_expected(path: Path, stub) -> None:
    tokens, reason = generate_tokens(stub, PROMPT, MAX_TOKENS)
    assert len(tokens) == MAX_TOKENS and reason == generation_pb2.FINISH_REASON_LENGTH
    assert len(set(tokens)) > 1, f"a repetitive reference would check little: {tokens}"
    path.write_text(json.dumps({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "tokens": tokens}))


def run_node_tests(address: str, expected_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, STRATA_ADDRESS=address, STRATA_EXPECTED=str(expected_path))
    return subprocess.run(["node", "--test", "--test-reporter=tap"], cwd=CLIENT_DIR, env=env,
                          capture_output=True, text=True, timeout=120)


def tap_count(output: str, name: str) -> int:
    """A count from the TAP summary (`# pass 5`)."""
    match = re.search(rf"^# {name} (\d+)$", output, re.MULTILINE)
    assert match, f"no '# {name}' line in node's output:\n{output}"
    return int(match.group(1))


@pytest.mark.skipif((node_major() or 0) < MIN_NODE_MAJOR,
                    reason=f"needs node >= {MIN_NODE_MAJOR} and npm on PATH for clients/node")
def test_node_client_streams_the_python_tokens_reports_errors_and_frees_on_cancel(llama_dir, tmp_path):
    install_dependencies()
    expected_path = tmp_path / "expected.json"
    with start_up(["--model", str(llama_dir), "--num-device-blocks", "64",
                   "--data-dir", str(tmp_path / "data"), "--kvstore-ram", "64MiB",
                   "--kvstore-disk", "0"]) as server:
        write_expected(expected_path, server.stub)
        result = run_node_tests(server.address, expected_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test failed:\n{output}"
    # A skip would mean the server tests did not run (they skip without STRATA_ADDRESS).
    assert tap_count(output, "skipped") == 0, output
    assert tap_count(output, "pass") == tap_count(output, "tests"), output
