#!/usr/bin/env python3
"""TEST STAND-IN, NOT A USER FEATURE: `apptainer` for the tests (tests/apptainer_standin/apptainer
links here), on machines where Apptainer cannot be installed. It runs a real SIF file
(tests/sif_image.py builds one from the training image) the way Apptainer does, for the calls
Snakemake makes under --sdm apptainer:

    apptainer --version
    apptainer [--quiet] [--silent] exec [--home SRC[:DST]] [--bind SRC[:DST[:ro|rw]][,...]]
        [--pwd DIR] [--cleanenv] [--nv] IMAGE COMMAND [ARG...]

- The image is the SIF's primary system partition (squashfs), mounted with squashfuse as the
  calling user and run with bubblewrap as that user: read-only, no entrypoint, the host's /proc,
  /dev, /sys, /tmp, /var/tmp, /etc/hosts, /etc/localtime and /etc/resolv.conf, the home folder,
  the working folder and every --bind at their paths, the caller added to /etc/passwd and /etc/group.
- The environment follows Apptainer's rules (its internal/pkg/util/env and action script): every
  host variable passes in except HOME, PATH, LD_LIBRARY_PATH and APPTAINER_*/SINGULARITY_* ones;
  with --cleanenv only TERM and the proxy variables (and LANG=C); PATH starts as Apptainer's
  default; the image's /.singularity.d/env/*.sh are sourced and win over host variables of the same
  name; APPTAINERENV_X (or SINGULARITYENV_X) sets X after them, PATH through APPTAINERENV_PATH,
  _PREPEND_PATH and _APPEND_PATH.

What only a real Apptainer does: --nv (the host's NVIDIA driver libraries; accepted and ignored
here, the test machines have no GPU), setuid mode, overlays, instances, signatures."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

VERSION = "1.3.4"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Host variables that never pass in; True where APPTAINERENV_ may still set them.
ALWAYS_OMITTED = {
    "HOME": False,
    "PATH": False,
    "LD_LIBRARY_PATH": True,
    "APPTAINER_SHELL": False,
    "APPTAINER_APPNAME": False,
    "SINGULARITY_SHELL": False,
    "SINGULARITY_APPNAME": False,
}
PROXIES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "ftp_proxy")
ALWAYS_PASSED = {"TERM", *PROXIES, *(p.upper() for p in PROXIES)}
OVERRIDE_PREFIXES = ("APPTAINERENV_", "SINGULARITYENV_")  # in precedence order
PATH_OVERRIDES = {"PATH": "PATH={}", "PREPEND_PATH": 'PATH={}:"$PATH"', "APPEND_PATH": 'PATH="$PATH":{}'}
HOST_FILES = ("/etc/hosts", "/etc/localtime", "/etc/resolv.conf")
FROM_HOST = {"proc", "dev", "sys", "tmp"}  # the image's own folders that the host's replace
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Runs in the image: its environment scripts, Apptainer's default PATH entries appended where they
# are missing, what the host sends (Apptainer's /.inject-apptainer-env.sh), then the command.
ACTION = f"""\
for script in /.singularity.d/env/*.sh; do [ -f "$script" ] && . "$script"; done
for dir in {DEFAULT_PATH.replace(":", " ")}; do
    case ":$PATH:" in *":$dir:"*) ;; *) PATH="$PATH:$dir" ;; esac
done
. /.inject-apptainer-env.sh
exec "$@"
"""


class StandInError(Exception):
    pass


def parse(args: list[str]) -> tuple[dict, str, list[str]]:
    options = {"home": None, "binds": [], "pwd": None, "cleanenv": False}
    while args and args[0] in ("--quiet", "--silent", "-q", "-s"):
        args = args[1:]
    if not args or args[0] != "exec":
        raise StandInError("this test stand-in carries out only 'exec' and '--version'")
    args = args[1:]
    while args and args[0].startswith("-"):
        option, _, value = args.pop(0).partition("=")
        takes_value = option in ("--home", "--bind", "-B", "--pwd")
        if takes_value and not value:
            if not args:
                raise StandInError(f"option {option} needs a value")
            value = args.pop(0)
        if option == "--home":
            options["home"] = value
        elif option in ("--bind", "-B"):
            options["binds"] += [spec for spec in value.split(",") if spec]
        elif option == "--pwd":
            options["pwd"] = value
        elif option in ("--cleanenv", "-e"):
            options["cleanenv"] = True
        elif option != "--nv":
            raise StandInError(f"option {option} is not carried out by this test stand-in")
    if len(args) < 2:
        raise StandInError("exec needs an image and a command")
    return options, args[0], args[1:]


def primary_partition_offset(image: str) -> int:
    """Where the SIF's primary system partition (the root file system) starts, per `siftool list`."""
    listed = subprocess.run(["siftool", "list", image], capture_output=True, text=True)
    if listed.returncode != 0:
        raise StandInError(f"could not open image {image}: {listed.stderr.strip() or 'not a SIF file'}")
    for line in listed.stdout.splitlines():
        match = re.search(r"\|(\d+)-\d+\s*\|FS \(Squashfs/\*System/", line)
        if match:
            return int(match[1])
    raise StandInError(f"image {image} has no primary system partition")


def container_environment(host: dict[str, str], cleanenv: bool) -> tuple[dict, dict]:
    """(host variables passed in, which the image's own win over; overrides set after the image's)."""
    overrides = {}
    for prefix in OVERRIDE_PREFIXES:
        for name, value in host.items():
            key = name.removeprefix(prefix)
            if name.startswith(prefix) and key and (ALWAYS_OMITTED.get(key, True) or key in PATH_OVERRIDES):
                overrides.setdefault(key, value)
    passed = {
        name: value
        for name, value in host.items()
        if name in ALWAYS_PASSED
        or not (cleanenv or name in ALWAYS_OMITTED or name.startswith(("APPTAINER", "SINGULARITY")))
    }
    if cleanenv:
        passed["LANG"] = "C"
    return passed, overrides


def inject_script(passed: dict[str, str], overrides: dict[str, str], image: str) -> str:
    lines = [
        PATH_OVERRIDES[key].format(shlex.quote(value))
        if key in PATH_OVERRIDES
        else f"export {key}={shlex.quote(value)}"
        for key, value in overrides.items()
        if VARIABLE.match(key)
    ]
    lines += [
        f'[ -n "${{{key}+set}}" ] || export {key}={shlex.quote(value)}'
        for key, value in passed.items()
        if VARIABLE.match(key) and key not in overrides
    ]
    lines += [
        f"export APPTAINER_CONTAINER={shlex.quote(image)} APPTAINER_NAME={shlex.quote(Path(image).name)} PATH"
    ]
    return "\n".join(lines) + "\n"


def identity_files(root: Path, scratch: Path, home: str) -> list[str]:
    """The image's /etc/passwd and /etc/group with the caller added, bound over the image's."""
    user, group = pwd.getpwuid(os.getuid()), grp.getgrgid(os.getgid())
    entries = {
        "passwd": (
            user.pw_uid,
            f"{user.pw_name}:x:{user.pw_uid}:{user.pw_gid}:{user.pw_gecos}:{home}:/bin/sh",
        ),
        "group": (group.gr_gid, f"{group.gr_name}:x:{group.gr_gid}:"),
    }
    args = []
    for name, (number, entry) in entries.items():
        lines = (root / "etc" / name).read_text().splitlines()
        if not any(line.split(":")[2:3] == [str(number)] for line in lines):
            lines.append(entry)
        (scratch / name).write_text("\n".join(lines) + "\n")
        args += ["--ro-bind", str(scratch / name), f"/etc/{name}"]
    return args


def image_layout(root: Path, targets: list[Path], folder: Path = Path("/")) -> list[str]:
    """The image's entries read-only at their paths. A folder above a bind target that the image
    lacks is rebuilt from its entries instead (what Apptainer's underlay does), so the target can
    be made in it; the image itself is never written."""
    args = []
    for entry in sorted(os.listdir(root / folder.relative_to("/"))):
        inside, path = folder / entry, root / folder.relative_to("/") / entry
        if folder == Path("/") and entry in FROM_HOST:
            continue
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(inside)]
        elif path.is_dir() and any(inside in target.parents for target in targets):
            args += ["--dir", str(inside), *image_layout(root, targets, inside)]
        else:
            args += ["--ro-bind", str(path), str(inside)]
    return args


def sandbox(root: Path, scratch: Path, options: dict) -> list[str]:
    """bubblewrap's arguments: the image read-only, the host's folders Apptainer binds, the caller."""
    home_source, _, home = (options["home"] or pwd.getpwuid(os.getuid()).pw_dir).partition(":")
    home = home or home_source
    workdir = options["pwd"] or os.getcwd()
    binds = [("--bind", home_source, home), ("--bind", os.getcwd(), os.getcwd())]
    for spec in options["binds"]:
        source, _, rest = spec.partition(":")
        target, _, mode = rest.partition(":")
        binds.append(("--ro-bind" if mode == "ro" else "--bind", source, target or source))
    targets = [
        Path(target)
        for _, _, target in binds
        if Path(target).parts[1] not in FROM_HOST and not os.path.lexists(root / target.lstrip("/"))
    ]
    args = ["bwrap", "--die-with-parent", "--clearenv", *image_layout(root, targets)]
    args += ["--proc", "/proc", "--dev-bind", "/dev", "/dev", "--ro-bind", "/sys", "/sys"]
    args += ["--bind", "/tmp", "/tmp", "--bind", "/var/tmp", "/var/tmp"]
    # Over the image's own file only: a bind cannot make a file in the read-only image.
    inside = [
        f
        for f in HOST_FILES
        if os.path.exists(f) and not (root / f[1:]).is_symlink() and (root / f[1:]).exists()
    ]
    args += [arg for f in inside for arg in ("--ro-bind", f, f)]
    args += identity_files(root, scratch, home)
    args += [arg for bind in binds for arg in bind]
    args += ["--ro-bind", str(scratch / "inject.sh"), "/.inject-apptainer-env.sh"]
    args += ["--remount-ro", "/", "--chdir", workdir]
    return args + ["--setenv", "HOME", home, "--setenv", "PATH", DEFAULT_PATH, "--setenv", "PWD", workdir]


def execute(options: dict, image: str, command: list[str]) -> int:
    image = os.path.abspath(image)
    if not os.path.isfile(image):
        raise StandInError(f"could not open image {image}: no such file")
    offset = primary_partition_offset(image)
    with tempfile.TemporaryDirectory(prefix="apptainer-standin-") as scratch_name:
        scratch = Path(scratch_name)
        root = scratch / "rootfs"
        root.mkdir()
        subprocess.run(["squashfuse", "-o", f"offset={offset}", image, str(root)], check=True)
        try:
            passed, overrides = container_environment(dict(os.environ), options["cleanenv"])
            (scratch / "inject.sh").write_text(inject_script(passed, overrides, image))
            args = sandbox(root, scratch, options) + ["/bin/sh", "-c", ACTION, "apptainer", *command]
            child = subprocess.Popen(args)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, lambda number, _frame: child.send_signal(number))
            return child.wait()
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(root)], check=False)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--version"]:
        print(f"apptainer version {VERSION}")
        return 0
    try:
        return execute(*parse(argv))
    except StandInError as error:
        print(f"FATAL:   {error}", file=sys.stderr)
        return 255


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
