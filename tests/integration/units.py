"""``systemctl`` and ``journalctl`` for the documentation's shell blocks, where no
systemd runs (PID 1 is not systemd here, nor in CI).

``python -m tests.integration.units systemctl enable --now anteroom`` starts the
unit's ``ExecStart`` as the unit says: its ``User``/``Group``, its
``EnvironmentFile`` (and nothing else of the caller's environment), and the
sandboxing this machine can apply without systemd:

| unit setting | applied as |
|---|---|
| ``NoNewPrivileges=yes`` | ``setpriv --no-new-privs`` |
| ``CapabilityBoundingSet=`` (empty) | ``setpriv --bounding-set=-all --inh-caps=-all`` |
| ``ProtectSystem=strict`` | every mount read-only (but /dev, /proc, /sys) |
| ``ProtectHome=yes`` | empty tmpfs over /home, /root, /run/user |
| ``PrivateTmp=yes`` | a fresh tmpfs on /tmp and /var/tmp |
| ``PrivateDevices=yes`` | /dev with only null, zero, full, random, urandom |
| ``ProcSubset=pid``, ``ProtectProc=invisible`` | /proc as ``subset=pid,hidepid=invisible`` |
| ``UMask=`` | ``umask`` |
| ``LimitNOFILE=`` | ``ulimit -n`` (up to the machine's hard limit) |

The system-call filter, address families, ``MemoryDenyWriteExecute`` and the
kernel protections need systemd itself; ``systemd-analyze security`` rates them
(tests/integration/test_docs.py). ``nginx`` is started, reloaded and stopped
with nginx's own signals. State (pids, logs) lives in ``$DOC_TEST_UNITS``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

UNIT_DIR = Path("/etc/systemd/system")
SETTLE = 2.0  # a unit that dies within this is "failed", as systemd shows after RestartSec


def state() -> Path:
    path = Path(os.environ["DOC_TEST_UNITS"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_unit(path: Path) -> dict[str, list[str]]:
    """Directives of a unit file (repeated keys keep every value)."""
    unit: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        unit.setdefault(key.strip(), []).append(value.strip())
    return unit


def environment_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile: VAR=value lines, no shell expansion."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def sandbox_script(unit: dict[str, list[str]]) -> str:
    """Shell run as root in a mount namespace of its own, before the service's exec."""
    one = {k: v[-1] for k, v in unit.items()}
    lines = ["set -e", "mount --make-rprivate /"]
    if one.get("PrivateTmp") == "yes":
        lines += [
            "mount -t tmpfs -o mode=1777 tmpfs /tmp",
            "mount -t tmpfs -o mode=1777 tmpfs /var/tmp",
        ]
    if one.get("ProtectHome") == "yes":
        lines += [
            f"[ ! -d {d} ] || mount -t tmpfs -o mode=755 tmpfs {d}"
            for d in ("/home", "/root", "/run/user")
        ]
    if one.get("PrivateDevices") == "yes":
        lines += [
            "dev=$(mktemp -d /tmp/dev.XXXXXX)",
            "mount -t tmpfs -o mode=755 tmpfs $dev",
            *(
                f"touch $dev/{d} && mount --bind /dev/{d} $dev/{d}"
                for d in ("null", "zero", "full", "random", "urandom")
            ),
            "mkdir $dev/shm && mount -t tmpfs -o mode=1777 tmpfs $dev/shm",
            "ln -s /proc/self/fd $dev/fd",
            "mount --move $dev /dev",
        ]
    if one.get("ProcSubset") == "pid" or one.get("ProtectProc") == "invisible":
        options = ",".join(
            o
            for o, on in (
                ("subset=pid", one.get("ProcSubset") == "pid"),
                ("hidepid=invisible", one.get("ProtectProc") == "invisible"),
            )
            if on
        )
        lines.append(f"mount -t proc -o {options} proc /proc")
    if one.get("ProtectSystem") == "strict":
        writable = " ".join(
            shlex.quote(p) for v in unit.get("ReadWritePaths", []) for p in v.split()
        )
        lines += [
            "for m in $(awk '{print $2}' /proc/self/mounts | sort -u); do",
            "  case $m in /dev|/dev/*|/proc|/proc/*|/sys|/sys/*|/tmp|/var/tmp) continue;; esac",
            '  mount -o remount,bind,ro "$m" 2>/dev/null || true',
            "done",
            *(f"mount --bind {p} {p}" for p in writable.split()),
        ]
    if "LimitNOFILE" in one:
        # as far as this machine's hard limit allows (a container may cap it)
        lines.append(f"ulimit -n {one['LimitNOFILE']} 2>/dev/null || ulimit -n $(ulimit -Hn)")
    if "UMask" in one:
        lines.append(f"umask {one['UMask']}")
    return "\n".join(lines)


def exec_argv(unit: dict[str, list[str]]) -> list[str]:
    one = {k: v[-1] for k, v in unit.items()}
    argv = ["setpriv"]
    if "User" in one:
        argv += [f"--reuid={one['User']}", f"--regid={one.get('Group', one['User'])}"]
        argv.append("--init-groups")
    if one.get("NoNewPrivileges") == "yes":
        argv.append("--no-new-privs")
    if unit.get("CapabilityBoundingSet") == [""]:
        argv += ["--bounding-set=-all", "--inh-caps=-all"]
    return [*argv, "--", *shlex.split(one["ExecStart"])]


def pid_of(name: str) -> int | None:
    try:
        pid = int((state() / f"{name}.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def nginx_running() -> bool:
    try:  # nginx -t leaves an empty pid file behind
        os.kill(int(Path("/run/nginx.pid").read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def start(name: str) -> None:
    if name == "nginx":
        if not nginx_running():
            subprocess.run(["nginx"], check=True)
        return
    if pid_of(name):
        return
    unit = read_unit(UNIT_DIR / f"{name}.service")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for path in unit.get("EnvironmentFile", []):
        env |= environment_file(Path(path.lstrip("-")))
    script = sandbox_script(unit) + '\nexec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "bash", "-c", script, name]
    with open(state() / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [*argv, *exec_argv(unit)],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    (state() / f"{name}.pid").write_text(str(proc.pid))
    (state() / f"{name}.started").write_text(str(time.time()))


def stop(name: str) -> None:
    if name == "nginx":
        subprocess.run(["nginx", "-s", "quit"], check=False)
        return
    pid = pid_of(name)
    if pid is None:
        return
    os.killpg(pid, signal.SIGTERM)
    for _ in range(200):
        if pid_of(name) is None:
            break
        time.sleep(0.1)


def status(name: str) -> int:
    try:
        started = float((state() / f"{name}.started").read_text())
        time.sleep(max(0.0, started + SETTLE - time.time()))
    except OSError:
        pass
    pid = pid_of(name)
    if pid is None:
        print(f"x {name}.service - failed")
        return 3
    print(f"* {name}.service - active (running), Main PID: {pid}")
    return 0


def systemctl(args: list[str]) -> int:
    words = [a for a in args if not a.startswith("-")]
    verb, names = words[0], words[1:]
    if verb == "daemon-reload":
        return 0
    for name in names:
        name = name.removesuffix(".service")
        if verb == "status":
            return status(name)
        if verb in ("start", "enable") and (verb == "start" or "--now" in args):
            start(name)
        elif verb == "stop":
            stop(name)
        elif verb == "restart":
            stop(name)
            start(name)
        elif verb == "reload":
            if name == "nginx" and nginx_running():
                subprocess.run(["nginx", "-s", "reload"], check=True)
                time.sleep(0.5)  # the new workers take over
            else:
                start(name)
    return 0


def journalctl(args: list[str]) -> int:
    name = args[args.index("-u") + 1].removesuffix(".service")
    count = int(args[args.index("-n") + 1]) if "-n" in args else 10
    lines = (state() / f"{name}.log").read_text(errors="replace").splitlines()
    print("\n".join(lines[-count:]))
    return 0


if __name__ == "__main__":
    tool, *rest = sys.argv[1:]
    sys.exit(systemctl(rest) if tool == "systemctl" else journalctl(rest))
