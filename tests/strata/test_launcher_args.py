"""`strata up`'s flags as its children's argv, and the flag combinations it refuses (no
process is started: the real-process tests are in tests/system/test_launcher.py)."""
import pytest


def test_child_argv_carry_the_kv_dtype_and_the_no_reuse_baseline(tmp_path):
    from strata.launcher import build_parser, child_specs

    def specs(*flags: str) -> dict[str, list[str]]:
        args = build_parser("strata up").parse_args(["--data-dir", str(tmp_path), *flags])
        args.data_dir = tmp_path
        return {spec.name: spec.argv for spec in child_specs(args, tmp_path)}

    default = specs()
    assert list(default) == ["kvstore", "executor", "scheduler", "gateway"]
    assert default["executor"][default["executor"].index("--kv-cache-dtype") + 1] == "auto"
    assert "--kvstore" in default["scheduler"] and "--no-prefix-caching" not in default["scheduler"]
    baseline = specs("--no-prefix-caching", "--kv-cache-dtype", "float16")
    assert list(baseline) == ["executor", "scheduler", "gateway"]   # no reuse: no kvstore either
    assert "--no-prefix-caching" in baseline["scheduler"] and "--kvstore" not in baseline["scheduler"]
    assert baseline["executor"][baseline["executor"].index("--kv-cache-dtype") + 1] == "float16"


def test_scheduler_refuses_no_prefix_caching_with_a_kvstore(capsys):
    from scheduler.daemon import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--executor", "unix:x", "--kvstore", "unix:y", "--no-prefix-caching"])
    assert "--no-prefix-caching turns off every KV reuse; drop it or drop --kvstore" in capsys.readouterr().err


def test_kv_cache_memory_reaches_the_executor_in_bytes_and_excludes_a_block_count(tmp_path, capsys):
    from strata.launcher import build_parser, child_specs

    parser = build_parser("strata up")
    args = parser.parse_args(["--data-dir", str(tmp_path), "--kv-cache-memory", "64MiB"])
    args.data_dir = tmp_path
    executor = next(spec.argv for spec in child_specs(args, tmp_path) if spec.name == "executor")
    assert executor[executor.index("--kv-cache-memory") + 1] == str(64 << 20)
    assert "--num-device-blocks" not in executor
    with pytest.raises(SystemExit):
        parser.parse_args(["--kv-cache-memory", "64MiB", "--num-device-blocks", "8"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--kv-cache-memory", "lots"])
    assert "not a byte size: 'lots'" in capsys.readouterr().err


def test_every_child_gets_the_runs_token_file_and_the_executor_maps_only_the_kvstores_dir(tmp_path):
    from strata.launcher import TOKEN_FILE, build_parser, child_specs

    args = build_parser("strata up").parse_args(["--data-dir", str(tmp_path)])
    args.data_dir = tmp_path
    argv = {spec.name: spec.argv for spec in child_specs(args, tmp_path)}

    def value(name: str, flag: str) -> str:
        return argv[name][argv[name].index(flag) + 1]
    token_file = str(tmp_path / TOKEN_FILE)
    assert value("kvstore", "--token-file") == value("executor", "--token-file") == token_file
    assert value("scheduler", "--internal-token-file") == token_file
    assert value("executor", "--arena-dir") == value("kvstore", "--shm-dir")
    assert not any("--insecure" in child for child in argv.values())


def test_the_gateway_child_reaches_the_scheduler_on_its_unix_socket_and_http_port_0_turns_it_off(tmp_path):
    from strata.launcher import build_parser, child_specs

    def gateway_argv(*flags: str) -> list[str] | None:
        args = build_parser("strata up").parse_args(["--data-dir", str(tmp_path), *flags])
        args.data_dir = tmp_path
        return next((spec.argv for spec in child_specs(args, tmp_path) if spec.name == "gateway"), None)

    scheduler_socket = f"unix:{tmp_path}/scheduler.sock"
    assert gateway_argv() == ["gateway", "--scheduler", scheduler_socket, "--host", "127.0.0.1",
                              "--port", "8000"]
    assert gateway_argv("--host", "0.0.0.0", "--port", "6000", "--http-host", "10.0.0.5", "--http-port",
                        "9000", "--model-name", "m") == [
        "gateway", "--scheduler", scheduler_socket, "--host", "10.0.0.5", "--port", "9000",
        "--model-name", "m"]
    assert gateway_argv("--http-port", "0") is None


def test_tls_and_api_keys_reach_the_scheduler_and_the_gateway_presents_the_files_first_key(
        tmp_path, monkeypatch):
    from strata.launcher import build_parser, child_specs

    monkeypatch.delenv("STRATA_API_KEY", raising=False)
    (tmp_path / "keys").write_text("# KEY SALT\nk-alice tenant-a\nk-bob\n")
    args = build_parser("strata up").parse_args([
        "--data-dir", str(tmp_path), "--tls-cert", "c.pem", "--tls-key", "k.pem",
        "--api-key-file", str(tmp_path / "keys")])
    args.data_dir = tmp_path
    specs = {spec.name: spec for spec in child_specs(args, tmp_path)}
    scheduler = specs["scheduler"].argv
    assert scheduler[scheduler.index("--tls-cert"):scheduler.index("--kvstore")] == [
        "--tls-cert", "c.pem", "--tls-key", "k.pem", "--api-key-file", str(tmp_path / "keys")]
    assert specs["scheduler"].health_target == f"unix:{tmp_path}/scheduler.sock"
    assert specs["gateway"].env == {"STRATA_SCHEDULER_API_KEY": "k-alice"}
    monkeypatch.setenv("STRATA_API_KEY", "k-env")   # inherited: it serves both
    assert next(s for s in child_specs(args, tmp_path) if s.name == "gateway").env == {}


def test_up_refuses_a_non_loopback_host_without_tls_or_insecure(tmp_path):
    from strata.launcher import build_parser, parse_up_args

    with pytest.raises(SystemExit, match=r"refusing plain TCP on 0.0.0.0:50051: give --tls-cert PEM "
                                         r"--tls-key PEM \(or --insecure to serve plain TCP to other hosts\)"):
        parse_up_args(build_parser("strata up"), ["--host", "0.0.0.0"])
    with pytest.raises(SystemExit, match="give --tls-cert and --tls-key together"):
        parse_up_args(build_parser("strata up"), ["--tls-cert", "c.pem"])
    assert parse_up_args(build_parser("strata up"), ["--host", "0.0.0.0", "--insecure"]).insecure
    assert parse_up_args(build_parser("strata up"), ["--host", "0.0.0.0", "--tls-cert", "c", "--tls-key", "k"])


def test_kvstore_backing_reaches_the_kvstore_as_its_backing(tmp_path):
    from strata.launcher import build_parser, child_specs

    def kvstore_argv(*flags: str) -> list[str]:
        args = build_parser("strata up").parse_args(["--data-dir", str(tmp_path), *flags])
        args.data_dir = tmp_path
        return next(spec.argv for spec in child_specs(args, tmp_path) if spec.name == "kvstore")

    assert "--backing" not in kvstore_argv()
    shared = kvstore_argv("--kvstore-backing", "redis://cache:6379")
    assert shared[shared.index("--backing") + 1] == "redis://cache:6379"
