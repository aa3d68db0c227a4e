"""The `strata` command: one subcommand per daemon plus the user-facing tools.

Each daemon subcommand lives in the package that owns it and is imported only when
chosen, so `strata scheduler` never imports torch and `strata kvstore` never
imports the model code.
"""
import importlib
import sys

SUBCOMMANDS = {
    "up": ("strata.launcher", "start all daemons on this machine and serve"),
    "demo": ("strata.launcher", "start all daemons, stream one completion, stop"),
    "generate": ("strata.client", "stream a completion from a running server"),
    "gateway": ("strata.gateway.server", "serve the OpenAI-compatible HTTP API in front of a scheduler"),
    "metrics": ("strata.metrics", "print a running server's Prometheus metrics"),
    "scheduler": ("scheduler.daemon", "run the scheduler daemon alone"),
    "executor": ("executor.daemon", "run the executor daemon alone"),
    "kvstore": ("kvstore.daemon", "run the kvstore daemon alone"),
    "token": ("strata.token_file", "write the internal token file the daemons read"),
    "bench": ("bench.serve", "benchmark a server through the public API"),
}


def usage() -> str:
    lines = ["usage: strata COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "Run `strata COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"strata: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    entry = getattr(module, "demo_main" if name == "demo" else "main")
    return entry(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
