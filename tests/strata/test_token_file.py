"""`strata token PATH`: a new random token in a 0600 file, kept when the file holds one, replaced
by STRATA_INTERNAL_TOKEN when that is set (compose's token service runs it)."""
import stat

from runtime.token import read_token_file
from strata import token_file


def test_strata_token_writes_keeps_or_replaces_the_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "secrets" / "internal-token"
    monkeypatch.delenv(token_file.TOKEN_ENV, raising=False)
    assert token_file.main([str(path)]) == 0
    first = read_token_file(path)
    assert len(first) >= 43 and stat.S_IMODE(path.stat().st_mode) == 0o600   # 32 random bytes
    assert token_file.main([str(path)]) == 0 and read_token_file(path) == first
    monkeypatch.setenv(token_file.TOKEN_ENV, "configured")
    assert token_file.main([str(path)]) == 0 and read_token_file(path) == "configured"
    assert capsys.readouterr().out.splitlines() == [
        f"{path}: a new random token", f"{path}: holds a token already; kept",
        f"{path}: the configured token (STRATA_INTERNAL_TOKEN)"]
