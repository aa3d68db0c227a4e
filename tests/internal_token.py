"""The test process's internal token: every daemon a test starts requires it (`--token-file
TOKEN_FILE`), every test client presents it (TOKEN). One random token per test process, in a
private 0600 file removed at exit."""
import atexit
import shutil
import tempfile
from pathlib import Path

from runtime.token import new_token, write_token_file

TOKEN = new_token()
_TOKEN_DIR = Path(tempfile.mkdtemp(prefix="strata-token-"))
TOKEN_FILE = str(_TOKEN_DIR / "internal.token")
write_token_file(TOKEN_FILE, TOKEN)
atexit.register(shutil.rmtree, _TOKEN_DIR, ignore_errors=True)
