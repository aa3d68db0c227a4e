"""runtime/ imports only protos, itself, gRPC and the standard library (never torch, never a daemon)."""
import ast
import pathlib
import sys

RUNTIME = pathlib.Path(__file__).resolve().parent.parent / "runtime"
ALLOWED = {"protos", "runtime", "grpc", "grpc_health", "grpc_reflection", "google"}


def imported_packages(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__"}


def test_runtime_imports_only_protos_and_grpc():
    found = {path.name: imported_packages(path) - ALLOWED for path in sorted(RUNTIME.glob("*.py"))}
    assert set(found) >= {"errors.py", "kvstore_client.py", "listen.py", "logs.py", "server.py",
                          "sizes.py", "token.py"}
    assert {name: extra for name, extra in found.items() if extra} == {}
