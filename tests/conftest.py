"""Test-wide settings. Set before any test module imports torch or triton."""
import os

# OpenMP's busy-wait default makes torch 5-70x slower on a 2-core machine shared
# with other processes; one passive thread per process is the measured best here.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Triton kernels run on the CPU through the interpreter (there is no GPU here).
os.environ.setdefault("TRITON_INTERPRET", "1")


# --- Shared tiny checkpoints (built once per test session; see tests/checkpoints.py) ---
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from checkpoints import train_tokenizer

    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _checkpoint(tmp_path_factory, tokenizer_dir, arch):
    from checkpoints import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp(arch), arch, tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer_dir):
    return _checkpoint(tmp_path_factory, tokenizer_dir, "llama")


@pytest.fixture(scope="session")
def mistral_dir(tmp_path_factory, tokenizer_dir):
    return _checkpoint(tmp_path_factory, tokenizer_dir, "mistral")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory, tokenizer_dir):
    return _checkpoint(tmp_path_factory, tokenizer_dir, "qwen2")


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory, tokenizer_dir):
    return _checkpoint(tmp_path_factory, tokenizer_dir, "qwen3")


# --- `./dev test --compose`: the tests that build the image and run compose.yaml under Docker ---
def pytest_addoption(parser):
    parser.addoption("--compose", action="store_true",
                     help="also run the tests marked compose (build the image, docker compose up; ~15 min "
                          "the first time on 2 cores)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--compose"):
        return
    skip = pytest.mark.skip(reason="builds the image and runs docker compose: ./dev test --compose")
    for item in items:
        if item.get_closest_marker("compose"):
            item.add_marker(skip)
