"""`make lab`'s command (course_utils.tools.lab): auth on, loopback by default, --allow-root only as root, no news toast."""

import json
import re
from pathlib import Path

import pytest

from course_utils.tools import lab

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("LAB_IP", "LAB_PORT", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)


def _as(monkeypatch, uid):
    monkeypatch.setattr(lab.os, "geteuid", lambda: uid, raising=False)


def _option(cmd, name):
    values = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times in {cmd}"
    return values[0]


def assert_auth_on(cmd):
    """No option in the command sets a token or password to empty or disables a check."""
    for arg in cmd:
        key, _, value = arg.partition("=")
        key = key.lstrip("-").lower()
        if re.search(r"(^|\.)(token|password)$", key):
            assert value.strip("'\" "), f"{arg} switches auth off"
        assert "disable_check_xsrf" not in key and "allow_unauthenticated_access" not in key, arg
    assert not any(a in ("--no-token", "--NotebookApp.token=", "--ServerApp.token=''") for a in cmd)


def test_default_is_loopback_with_auth_and_no_root_flag(monkeypatch):
    _as(monkeypatch, 1000)
    cmd = lab.lab_command()
    assert cmd[1] == "lab" and Path(cmd[0]).name.startswith("jupyter")
    assert _option(cmd, "ServerApp.ip") == "127.0.0.1"
    assert _option(cmd, "ServerApp.port") == "8888"
    assert _option(cmd, "notebook-dir") == "notebooks"
    assert "--allow-root" not in cmd
    assert_auth_on(cmd)


def test_allow_root_only_as_root(monkeypatch):
    _as(monkeypatch, 0)
    cmd = lab.lab_command()
    assert cmd.count("--allow-root") == 1
    assert _option(cmd, "ServerApp.ip") == "127.0.0.1", "root does not widen the address"
    assert_auth_on(cmd)
    _as(monkeypatch, 501)
    assert "--allow-root" not in lab.lab_command()


def test_no_geteuid_means_not_root(monkeypatch):  # Windows
    monkeypatch.delattr(lab.os, "geteuid", raising=False)
    assert not lab.is_root() and "--allow-root" not in lab.lab_command()


@pytest.mark.parametrize("uid", [0, 1000])
def test_explicit_ip_is_honoured_and_token_stays_on(monkeypatch, uid):
    _as(monkeypatch, uid)
    cmd = lab.lab_command(ip="0.0.0.0", port=9999, root="..")
    assert _option(cmd, "ServerApp.ip") == "0.0.0.0"
    assert _option(cmd, "ServerApp.port") == "9999"
    assert _option(cmd, "notebook-dir") == ".."
    assert_auth_on(cmd)


def test_env_vars_as_make_passes_them(monkeypatch):
    _as(monkeypatch, 1000)
    monkeypatch.setenv("LAB_IP", "0.0.0.0")
    monkeypatch.setenv("LAB_PORT", "8890")
    cmd = lab.lab_command()
    assert _option(cmd, "ServerApp.ip") == "0.0.0.0" and _option(cmd, "ServerApp.port") == "8890"
    assert _option(lab.lab_command(ip="127.0.0.1"), "ServerApp.ip") == "127.0.0.1", "argument beats env"


@pytest.mark.parametrize("bad", ["--ServerApp.token=", "--IdentityProvider.token=''", "--ServerApp.password=",
                                 "--PasswordIdentityProvider.hashed_password=", "--ServerApp.disable_check_xsrf=True",
                                 "--ServerApp.allow_unauthenticated_access=True"])
def test_extra_options_cannot_switch_auth_off(monkeypatch, bad):
    _as(monkeypatch, 0)
    with pytest.raises(ValueError, match="authentication"):
        lab.lab_command(ip="0.0.0.0", extra=[bad])
    assert lab.main(["--dry-run", "--ip=0.0.0.0", bad]) == 2


def test_extra_options_pass_through(monkeypatch):
    _as(monkeypatch, 1000)
    cmd = lab.lab_command(extra=["--ServerApp.token=abc123", "--LabApp.collaborative=False"])
    assert cmd[-2:] == ["--ServerApp.token=abc123", "--LabApp.collaborative=False"]


def test_browser_opened_only_with_a_display(monkeypatch):
    monkeypatch.setattr(lab.sys, "platform", "linux")
    assert "--ServerApp.open_browser=False" in lab.lab_command()
    monkeypatch.setenv("DISPLAY", ":0")
    assert "--ServerApp.open_browser=False" not in lab.lab_command()
    assert "--ServerApp.open_browser=False" in lab.lab_command(open_browser=False)


def test_news_toast_is_switched_off():
    """JupyterLab 4 asks "get notified about official Jupyter news?" while the notification plugin's
    `fetchNews` is "none" (its default); the kit's overrides make the default "false"."""
    cmd = lab.lab_command()
    settings_dir = Path(_option(cmd, "LabApp.app_settings_dir"))
    assert settings_dir == lab.LAB_SETTINGS_DIR and settings_dir.is_dir()
    overrides = json.loads((settings_dir / "overrides.json").read_text(encoding="utf-8"))
    notification = overrides["@jupyterlab/apputils-extension:notification"]
    assert notification["fetchNews"] == "false" and notification["checkForUpdates"] is False
    assert _option(cmd, "LabApp.news_url") == "None"


def test_overrides_match_the_installed_jupyterlab_schema():
    schema_file = Path(pytest.importorskip("jupyterlab").__file__).parent / "schemas" / "@jupyterlab" / \
        "apputils-extension" / "notification.json"
    if not schema_file.exists():
        pytest.skip("jupyterlab without bundled schemas")
    props = json.loads(schema_file.read_text(encoding="utf-8"))["properties"]
    assert "false" in [c["const"] for c in props["fetchNews"]["oneOf"]]
    assert props["checkForUpdates"]["type"] == "boolean"


def test_dry_run_prints_the_command(monkeypatch, capsys):
    _as(monkeypatch, 0)
    assert lab.main(["--dry-run", "--ip", "0.0.0.0", "--port", "8891"]) == 0
    out = capsys.readouterr().out
    assert "listening on 0.0.0.0" in out and "token" in out
    assert "--ServerApp.ip=0.0.0.0" in out and "--allow-root" in out


def test_make_lab_uses_the_module():
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^lab:.*\n((?:\t.*\n)+)", text, re.M).group(1)
    assert "-m course_utils.tools.lab" in recipe and "--ip=$(LAB_IP)" in recipe
    assert re.search(r"^LAB_IP\s*\?=\s*127\.0\.0\.1\s*$", text, re.M)
