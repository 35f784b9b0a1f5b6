"""A throwaway PostgreSQL server on 127.0.0.1 for the shared-storage tests (Debian's `postgresql` binaries).

    python3 tests/postgres.py start DIR     initdb + start in DIR, print the server's URL (used by .ci/run)
    python3 tests/postgres.py stop DIR

Standard library only, so .ci/run can call it before the project's environment exists. As root the server
runs as the `postgres` user (PostgreSQL refuses root). Trust authentication, loopback only.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

USER = "postgres"


def binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", USER, "--", *argv] if os.geteuid() == 0 else argv


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(folder: Path) -> str:
    """Start a new server in `folder`; returns postgresql://postgres@127.0.0.1:PORT (raises why it cannot)."""
    initdb, pg_ctl = binary("initdb"), binary("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl); apt-get install postgresql")
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, USER)
    data, port = folder / "data", free_port()
    run = lambda argv: subprocess.run(as_server_user(argv), capture_output=True, text=True, timeout=120)
    done = run([initdb, "-D", str(data), "-A", "trust", "-U", USER])
    if done.returncode:
        raise RuntimeError(f"initdb failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
    done = run([pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w", "start"])
    if done.returncode:
        raise RuntimeError(f"pg_ctl start failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    (folder / "url").write_text(f"postgresql://{USER}@127.0.0.1:{port}")
    return (folder / "url").read_text()


def stop(folder: Path) -> None:
    pg_ctl = binary("pg_ctl")
    if pg_ctl and (folder / "data").exists():
        subprocess.run(as_server_user([pg_ctl, "-D", str(folder / "data"), "-m", "fast", "stop"]),
                       capture_output=True, timeout=120)


if __name__ == "__main__":
    action, where = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        print(start(where))
    else:
        stop(where)
