"""JupyterLab opens the MyST text notebooks as notebooks (jupytext's contents manager).

A real JupyterLab server is started on the loopback interface with a random
token, and its contents API is asked for ``notebooks/01_data.md``: jupytext
must serve it as a notebook whose cells include the ``parameters`` cell. The
request only reads; nothing is written to the repository.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/01_data.md"
STARTUP_SECONDS = 40.0

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, token: str, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    """A JupyterLab server on 127.0.0.1 serving the repository; stopped afterwards."""
    tmp_path = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "lab.log"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}  # no server files left in the home folder
    command = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={REPO}",
        "--allow-root",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {process.returncode}:\n{_log_tail(log)}")
            try:
                status, _ = _get(f"{base}/api/status", token, timeout=2.0)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within {STARTUP_SECONDS:.0f} s:\n{_log_tail(log)}")
            time.sleep(0.5)
        yield {"base": base, "token": token, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def test_lab_serves_the_text_notebook_as_a_notebook(lab):
    status, body = _get(f"{lab['base']}/api/contents/{NOTEBOOK}?content=1", lab["token"])
    assert status == 200, f"contents API answered {status}: {body[:500]!r}\n{_log_tail(lab['log'])}"
    model = json.loads(body)
    assert model["type"] == "notebook", f"{NOTEBOOK} is served as {model['type']!r}: is jupytext's server extension enabled?"
    assert model["format"] == "json"
    cells = model["content"]["cells"]
    assert any(c["cell_type"] == "code" for c in cells)
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "the parameters cell must reach JupyterLab with its tag"
    assert "preset" in "".join(tagged[0]["source"])
    assert model["content"]["metadata"]["kernelspec"]["name"] == "python3"


def test_lab_refuses_requests_without_the_token(lab):
    status, _ = _get(f"{lab['base']}/api/contents/{NOTEBOOK}", token="wrong")
    assert status == 403
