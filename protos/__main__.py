"""Generate the Python stubs of every proto under protos/v1: `python -m protos`."""
import pathlib
import sys

from grpc_tools import protoc


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    sources = sorted(str(p.relative_to(root)) for p in (root / "protos" / "v1").glob("*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{root}", f"-I{include}", f"--python_out={root}", f"--pyi_out={root}",
            f"--grpc_python_out={root}", *sources]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
