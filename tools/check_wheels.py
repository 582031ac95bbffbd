"""Checks a folder of wheels meant for the GPU image before it is carried there (no network).

    python3 tools/check_wheels.py .whl [--python-version 3.12] [--limit-mib 64]

* every pin of tools/device_wheels.txt has exactly one wheel of that version (two versions of one
  package stop the offline install), and no other wheel is there;
* each wheel's requirements (markers evaluated for CPython 3.12 on Linux x86_64) are met by another
  wheel in the folder or by a package of the image (tools/device_image_packages.txt), with the
  version checked where it is known;
* the wheels plus the repository's working tree fit the device tool's carry limit (64 MiB), else
  it names the largest optional wheels to drop.
Exit status 1 with one line per problem; 0 and a summary otherwise.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

TOOLS = Path(__file__).resolve().parent
# Wheels the suite runs without (the image has a transformers 5.17): dropped first when the carry
# does not fit.
OPTIONAL = ("transformers",)


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def read_image(path: Path) -> dict[str, str | None]:
    """{canonical name: version or None} of the image's packages."""
    image = {}
    for line in path.read_text().splitlines():
        for token in line.split("#", 1)[0].split():
            name, _, version = token.partition("==")
            image[canonicalize_name(name)] = version or None
    return image


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        metadata = Parser().parsestr(archive.read(name).decode())
    return [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]


def target_environment(python_version: str) -> dict[str, str]:
    env = default_environment()
    env.update(python_version=python_version, python_full_version=f"{python_version}.3", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64", os_name="posix", implementation_name="cpython",
               platform_python_implementation="CPython", extra="")
    return env


def working_tree_bytes(repo: Path) -> int:
    """Bytes of the files that travel with a device call: tracked plus untracked, not ignored."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout.decode()
    return sum((repo / p).stat().st_size for p in out.split("\0") if p and (repo / p).is_file())


def check(folder: Path, python_version: str, limit_mib: float, pins_file: Path = TOOLS / "device_wheels.txt",
          image_file: Path = TOOLS / "device_image_packages.txt") -> list[str]:
    """The problems found (see the module doc); prints a size summary."""
    problems = []
    pins = read_pins(pins_file)
    image = read_image(image_file)
    wheels: dict[str, tuple[Version, Path]] = {}
    for path in sorted(folder.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(path.name)
        if name in wheels:
            problems.append(f"{path.name}: a second wheel of {name} (keep one version)")
        wheels[name] = (version, path)
        if name not in pins:
            problems.append(f"{path.name}: not in tools/device_wheels.txt")
        elif Version(pins[name]) != version:
            problems.append(f"{path.name}: version {version}, tools/device_wheels.txt pins {pins[name]}")
        if not any(t.interpreter in ("py3", f"cp{python_version.replace('.', '')}") or t.abi == "abi3" for t in tags):
            problems.append(f"{path.name}: not a wheel for CPython {python_version}")
    problems += [f"{name}=={version}: no wheel in {folder}" for name, version in pins.items() if name not in wheels]
    env = target_environment(python_version)
    for name, (_, path) in wheels.items():
        for req in requirements(path):
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep in wheels:
                if not req.specifier.contains(wheels[dep][0], prereleases=True):
                    problems.append(f"{name} needs {req}, the wheel is {wheels[dep][0]}")
            elif dep in image:
                known = image[dep]
                if known and not req.specifier.contains(Version(known), prereleases=True):
                    problems.append(f"{name} needs {req}, the image has {known}: carry a wheel")
            else:
                problems.append(f"{name} needs {req}: neither the image nor {folder} has it")
    wheel_bytes = sum(p.stat().st_size for _, p in wheels.values())
    tree = working_tree_bytes(TOOLS.parent)
    total_mib = (wheel_bytes + tree) / 2**20
    print(f"{len(wheels)} wheels, {wheel_bytes / 2**20:.1f} MiB; working tree {tree / 2**20:.1f} MiB; "
          f"together {total_mib:.1f} of {limit_mib:.0f} MiB")
    if total_mib > limit_mib:
        drop = [f"{n} ({wheels[n][1].stat().st_size / 2**20:.1f} MiB)" for n in OPTIONAL if n in wheels]
        problems.append(f"{total_mib:.1f} MiB exceeds the {limit_mib:.0f} MiB carry limit; drop first: "
                        f"{', '.join(drop) or 'nothing optional is left'}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--limit-mib", type=float, default=64.0)
    args = parser.parse_args(argv)
    problems = check(args.folder, args.python_version, args.limit_mib)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if not problems:
        print("ok: every requirement is met by the image or a carried wheel")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
