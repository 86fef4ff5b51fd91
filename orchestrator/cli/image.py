"""`hwemu image build`: the Docker image every node of a swarm cluster runs, from
Debian's own packages (no base image is pulled) and wheels downloaded here."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator import swarm
from orchestrator.cli.common import Json, command, console, emit_json, fail, new_app

EXAMPLES = ["hwemu image build", "hwemu image build --tag hwemu:test --json",
            "hwemu image build --mirror http://deb.debian.org/debian --rebuild-base"]
app = new_app("The Docker image of a swarm cluster's nodes (docs/swarm.md).", EXAMPLES)

ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
PACKAGES = ["python3"]  # all a node needs; the guest toolchain is not: ELF files are built on the host
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def cache_dir() -> Path:
    """``$HWEMU_CACHE_DIR``, else ``$XDG_CACHE_HOME/hwemu``, else ``~/.cache/hwemu``."""
    if os.environ.get("HWEMU_CACHE_DIR"):
        return Path(os.environ["HWEMU_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hwemu"


def apt_mirror() -> str:
    """The Debian mirror apt uses here (sources.list or deb822 .sources), else deb.debian.org."""
    files = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            uri = m.group(1)
            if not uri.rstrip("/").endswith("-security"):
                return uri
    return DEFAULT_MIRROR


def project_dependencies() -> list[str]:
    """The project's dependencies as pyproject.toml lists them (the image needs no test extras)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def _run(args: list[str], what: str, timeout: float = 900, **kwargs) -> None:
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout, **kwargs)
    except FileNotFoundError:
        fail(f"{what}: {args[0]} is not installed" + (" (Debian: apt-get install debootstrap)"
                                                      if args[0] == "debootstrap" else ""))
    except subprocess.TimeoutExpired:
        fail(f"{what}: did not finish within {timeout:g} s")
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        fail(f"{what} failed: {lines[-1] if lines else f'exit {done.returncode}'}")


def rootfs(mirror: str, rebuild: bool) -> Path:
    """The cached tarball of a minbase bookworm with python3 (debootstrap, a minute; then kept)."""
    tar = cache_dir() / f"{SUITE}-minbase-{'-'.join(PACKAGES)}.tar"
    if tar.exists() and not rebuild:
        return tar
    if os.geteuid() != 0:
        fail("debootstrap needs root (or a cached root file system in " + str(tar.parent) + ")")
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hwemu-rootfs-", dir=tar.parent) as tmp:
        target = Path(tmp) / "root"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(target), mirror],
             f"debootstrap {SUITE} from {mirror}")
        shutil.rmtree(target / "var/cache/apt/archives", ignore_errors=True)  # the .debs: not needed any more
        (target / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        part = tar.with_suffix(".tar.part")
        _run(["tar", "--numeric-owner", "-C", str(target), "-cf", str(part), "."], "tar of the root file system")
        os.replace(part, tar)
    return tar


def base_image(tar: Path) -> str:
    """``docker import`` of the tarball, tagged by its digest (imported once)."""
    digest = hashlib.sha256()
    with open(tar, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    tag = f"hwemu-base:{SUITE}-{digest.hexdigest()[:12]}"
    try:
        swarm.docker("image", "inspect", "--format", "{{.Id}}", tag)
    except swarm.DockerError:
        with open(tar, "rb") as f:
            try:
                subprocess.run(["docker", "import", "-", tag], stdin=f, capture_output=True, check=True, timeout=600)
            except subprocess.CalledProcessError as exc:
                fail(f"docker import failed: {exc.stderr.decode(errors='replace').strip()}")
    return tag


def wheels(into: Path) -> None:
    """The project and its dependencies as wheels for the image's Python (3.11, like ours), pinned by
    constraints.txt, and pip's own wheel; downloaded wheels are cached."""
    if sys.version_info[:2] != (3, 11):
        fail(f"the image's Python is 3.11 (Debian {SUITE}); this is {sys.version.split()[0]}: its wheels would not "
             "match")
    cached = cache_dir() / "wheels"
    cached.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "download", "-c", str(ROOT / "constraints.txt"), "--find-links", str(cached), "-d", str(cached),
          "--only-binary=:all:", *project_dependencies()], "pip download of the project's dependencies")
    _run([*pip, "download", "--no-deps", "-d", str(cached), f"pip=={version('pip')}"], "pip download pip")
    into.mkdir(parents=True)
    for whl in cached.glob("*.whl"):
        if whl.name.startswith("hwemu-"):
            continue
        try:
            os.link(whl, into / whl.name)  # the context is in the cache's directory: no copy
        except OSError:
            shutil.copy2(whl, into)
    # the project itself: always the wheel of this checkout's sources, built from a copy of them (a
    # build in place would reuse its build/ directory, where a module deleted since still lies)
    src = into.parent / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "guest", "bench", "tests", "compose",
                                                             "*.egg-info", "__pycache__", "*.img"))
    _run([*pip, "wheel", "--no-deps", "-w", str(into), str(src)], "pip wheel of the project")
    shutil.rmtree(src)


@command(app, "build", EXAMPLES)
def build(
    tag: Annotated[str, typer.Option(help="The image's tag.")] = swarm.DEFAULT_IMAGE,
    mirror: Annotated[Optional[str], typer.Option(
        help="Debian mirror for debootstrap [default: the one apt uses here].")] = None,
    rebuild_base: Annotated[bool, typer.Option("--rebuild-base",
                                               help="debootstrap anew instead of the cached root file system.")]
    = False,
    json_out: Json = False,
) -> None:
    """Build the image of every node kind and the orchestrator: Debian bookworm (debootstrap, cached
    in ~/.cache/hwemu), python3, and this checkout with its pinned dependencies from wheels."""
    if not (ROOT / "pyproject.toml").exists() or not (ROOT / "docker" / "Dockerfile").exists():
        fail(f"no hwemu checkout at {ROOT} (pyproject.toml, docker/Dockerfile): build the image from a checkout")
    try:
        swarm.check_daemon()
    except swarm.DockerError as exc:
        fail(str(exc))
    t0 = time.monotonic()
    tar = rootfs(mirror or apt_mirror(), rebuild_base)
    t_base = time.monotonic()
    base = base_image(tar)
    source = swarm.source_digest()
    with tempfile.TemporaryDirectory(prefix="hwemu-image-", dir=cache_dir()) as tmp:
        ctx = Path(tmp)
        wheels(ctx / "wheels")
        shutil.copy2(ROOT / "docker" / "Dockerfile", ctx / "Dockerfile")
        try:
            # labelled with the digest of the code it runs: `hwemu up` refuses an image of other code
            swarm.docker("build", "-q", "--build-arg", f"BASE={base}", "--label",
                         f"{swarm.SOURCE_LABEL}={source}", "-t", tag, str(ctx), timeout=900)
        except swarm.DockerError as exc:
            fail(str(exc))
    image_id = swarm.docker("image", "inspect", "--format", "{{.Id}} {{.Size}}", tag).split()
    result = {"tag": tag, "id": image_id[0], "size_mb": round(int(image_id[1]) / 1e6, 1), "base": base,
              "source": source, "rootfs": str(tar), "seconds": round(time.monotonic() - t0, 1),
              "rootfs_seconds": round(t_base - t0, 1)}
    if json_out:
        emit_json(result)
    else:
        console.print(f"built {tag} ({result['size_mb']} MB, {result['seconds']} s) on {base}")
