"""Suite-wide settings. Machines that run the suite are shared and noisy, so
hypothesis must not fail a test for being slow (no per-example deadline);
CI (CI=true) also prints hypothesis's statistics on failure."""

import os

from hypothesis import settings

settings.register_profile("hwemu", deadline=None, print_blob=True)
settings.register_profile("ci", deadline=None, print_blob=True, derandomize=False)
settings.load_profile("ci" if os.environ.get("CI") else "hwemu")


import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def guest_build() -> Path:
    """The sample ELFs in guest/build/samples (``make -C guest`` unless up to date).

    A missing toolchain fails the test with what to do; it is never a skip."""
    guest = REPO / "guest"
    if shutil.which("riscv64-unknown-elf-gcc") is None:
        pytest.fail("missing riscv64-unknown-elf-gcc: run ./scripts/setup.sh", pytrace=False)
    if subprocess.run(["make", "-q", "-C", str(guest)], capture_output=True).returncode != 0:
        built = subprocess.run(["make", "-C", str(guest)], capture_output=True, text=True)
        if built.returncode != 0:
            pytest.fail(f"`make -C guest` failed:\n{built.stderr[-3000:]}", pytrace=False)
    return guest / "build" / "samples"
