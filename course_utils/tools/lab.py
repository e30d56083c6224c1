"""The JupyterLab command behind ``make lab``: safe by default, and usable as root (every container).

    python -m course_utils.tools.lab                       # 127.0.0.1:8888, token auth, serves notebooks/
    python -m course_utils.tools.lab --ip 0.0.0.0          # a container: reachable from outside, token still on
    LAB_IP=0.0.0.0 make lab                          # the same through make

What the command does and why:

- ``--allow-root`` only when running as uid 0: JupyterLab refuses to start as root without it, and a
  container runs as root. A normal user does not get it.
- Token auth stays on. The command never passes a token or password, so JupyterLab generates a random
  token and prints the ``…/lab?token=…`` URL; options that would empty the token or password are refused.
- It binds to ``127.0.0.1`` unless asked otherwise (``LAB_IP`` / ``--ip``). A container user passes
  ``LAB_IP=0.0.0.0`` explicitly; the token is then the only thing between the port and a Python shell.
- It serves ``notebooks/`` (``--notebook-dir``), not the repository root: the notebooks need nothing outside
  it, since their concept images are cell attachments written from ``images/`` by
  ``python -m course_utils.tools.course images`` (a ``../images/`` link would 404 here, and on Colab).
- No "Would you like to get notified about official Jupyter news?" toast (it covers the chat's Send button on
  first start): ``course_utils/tools/lab_settings/overrides.json`` sets the notification defaults to "never fetch
  news" and no update check, and ``--LabApp.news_url=None`` stops the server fetching the feed at all. A
  learner can still change both in Settings → Notifications.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

LAB_SETTINGS_DIR = Path(__file__).resolve().parent / "lab_settings"
DEFAULT_IP = "127.0.0.1"
DEFAULT_PORT = 8888
DEFAULT_ROOT = "notebooks"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# Options that would switch authentication off; refused in ``extra`` (an empty value or disabling a check).
_AUTH_OPTIONS = ("token", "password", "hashed_password")


def is_root() -> bool:
    """True when running as uid 0 (``os.geteuid`` does not exist on Windows: never root there)."""
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


def _has_display() -> bool:
    if sys.platform != "linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _check_extra(extra: Sequence[str]) -> None:
    """Refuse extra options that would turn token/password auth off."""
    for arg in extra:
        name, _, value = arg.partition("=")
        key = name.lstrip("-").lower()
        if any(key.endswith(f".{opt}") or key == opt for opt in _AUTH_OPTIONS) and value.strip("'\" ") == "":
            raise ValueError(f"{arg!r} would switch JupyterLab's authentication off; the kit keeps it on")
        if key.endswith("disable_check_xsrf") or key.endswith("allow_unauthenticated_access"):
            if value.strip().lower() not in ("false", "0"):
                raise ValueError(f"{arg!r} would weaken JupyterLab's authentication; the kit keeps it on")


def resolve_ip(ip: str | None = None) -> str:
    """The address to listen on: ``ip`` if given, else ``$LAB_IP``, else loopback."""
    return ip or os.environ.get("LAB_IP") or DEFAULT_IP


def lab_command(ip: str | None = None, port: int | str | None = None, root: str | os.PathLike | None = None,
                *, open_browser: bool | None = None, jupyter: str | None = None,
                extra: Sequence[str] = ()) -> list[str]:
    """The ``jupyter lab`` argv that ``make lab`` runs.

    ``ip``: the address to listen on; ``None`` → ``$LAB_IP`` or ``127.0.0.1``. ``port``: ``None`` →
    ``$LAB_PORT`` or 8888 (JupyterLab moves to the next free port when it is taken). ``root``: the folder the
    server shows (``--notebook-dir``), default ``notebooks``. ``open_browser``: ``None`` → only where there is a
    display (a container or SSH session has none, and a text browser would take over the terminal).
    ``extra``: further JupyterLab options; ones that would switch auth off raise ``ValueError``.
    """
    ip = resolve_ip(ip)
    port = int(port or os.environ.get("LAB_PORT") or DEFAULT_PORT)
    root = os.fspath(root if root is not None else DEFAULT_ROOT)
    if open_browser is None:
        open_browser = _has_display()
    _check_extra(extra)
    if jupyter is None:
        jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or "jupyter"
    cmd = [jupyter, "lab",
           f"--notebook-dir={root}",
           f"--ServerApp.ip={ip}",
           f"--ServerApp.port={port}",
           f"--LabApp.app_settings_dir={LAB_SETTINGS_DIR}",
           "--LabApp.news_url=None"]
    if not open_browser:
        cmd.append("--ServerApp.open_browser=False")
    if is_root():
        cmd.append("--allow-root")
    cmd.extend(extra)
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.tools.lab", description=__doc__.splitlines()[0],
                                     epilog="Any further options are passed to `jupyter lab`.")
    parser.add_argument("--ip", default=None, help=f"address to listen on (default $LAB_IP or {DEFAULT_IP})")
    parser.add_argument("--port", default=None, help=f"port (default $LAB_PORT or {DEFAULT_PORT})")
    parser.add_argument("--notebook-dir", default=None, help=f"folder the server shows (default {DEFAULT_ROOT})")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    args, extra = parser.parse_known_args(argv)
    try:
        cmd = lab_command(args.ip, args.port, args.notebook_dir, extra=extra)
    except ValueError as e:
        print(f"course_utils.tools.lab: {e}", file=sys.stderr)
        return 2
    ip = resolve_ip(args.ip)
    if ip not in LOOPBACK:
        print(f"course_utils.tools.lab: listening on {ip}: anyone who can reach this port gets the login page; "
              "the token JupyterLab prints below is required to get in. Keep it secret.", flush=True)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    os.execvp(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
