"""The guest SDK speaks POSIX (docs/guest-sdk.md): a C program that includes
the standard headers and calls the POSIX names compiles and links against
the SDK, and the worked example ``greet`` reads piped input the same way
under qemu-riscv32 (the reference), ``hwemu cpu run`` and ``hwemu run`` on a
native cluster. (Every sample with a ``.expected`` file is also in
tests/guest/test_differential.py and tests/integration/test_native.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guest"
HWEMU = str(Path(sys.executable).parent / "hwemu")
SAMPLE = GUEST / "build" / "samples" / "greet.elf"
INPUT = (GUEST / "samples" / "greet.stdin").read_bytes()
EXPECTED = (GUEST / "samples" / "greet.expected").read_bytes()

POSIX_PROGRAM = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0 || ts.tv_sec < 1700000000 || time(NULL) < ts.tv_sec)
        return 1;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(0), .sin_addr = {htonl(INADDR_LOOPBACK)}};
    if (fd < 0 || bind(fd, (struct sockaddr *)&any, sizeof any) != 0 || close(fd) != 0)
        return 2;
    if (close(fd) != -1 || errno != EBADF)
        return 3;
    char *p = malloc(100);
    if (!p || sbrk(0) == (void *)-1)
        return 4;
    free(p);
    char line[16];
    if (!fgets(line, sizeof line, stdin) || strcmp(line, "ping\n") != 0 || getchar() != EOF)
        return 5;
    fputs("pong\n", stdout);
    _exit(0);
}
"""


@pytest.fixture(scope="module")
def posix_elf(guest_build, tmp_path_factory) -> Path:
    """POSIX_PROGRAM compiled and linked exactly as guest/README.md says."""
    out = tmp_path_factory.mktemp("posix")
    src = out / "posix.c"
    src.write_text(POSIX_PROGRAM)
    elf = out / "posix.elf"
    build = GUEST / "build"
    done = subprocess.run(
        ["riscv64-unknown-elf-gcc", "-march=rv32im", "-mabi=ilp32", "-O2", "-Wall", "-Werror", "-ffreestanding",
         f"-I{GUEST / 'sdk'}", f"-I{GUEST / 'sdk' / 'include'}", "-static", "-nostartfiles", "-nostdlib",
         "-T", str(GUEST / "sdk" / "link.ld"), "-Wl,--no-warn-rwx-segments",
         str(build / "crt0.o"), str(src), str(build / "libhwemu.a"), "-lgcc", "-o", str(elf)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return elf


def test_posix_headers_and_names_link_and_behave_under_the_reference(posix_elf):
    assert shutil.which("qemu-riscv32"), "missing qemu-riscv32: run ./scripts/setup.sh"
    done = subprocess.run(["qemu-riscv32", str(posix_elf)], input=b"ping\n", capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, b"pong\n"), done.stderr


def test_greet_reads_piped_input_under_qemu_and_hwemu_cpu_run(guest_build):
    for cmd in (["qemu-riscv32", str(SAMPLE)], [HWEMU, "cpu", "run", str(SAMPLE)]):
        done = subprocess.run(cmd, input=INPUT, capture_output=True, timeout=120)
        assert (done.returncode, done.stdout) == (0, EXPECTED), (cmd, done.stderr)


@pytest.mark.integration
def test_greet_reads_piped_input_under_hwemu_run(guest_build, tmp_path):
    rd = tmp_path / "r"
    try:
        done = subprocess.run([HWEMU, "run", "compose/native.toml", str(SAMPLE)], input=INPUT, cwd=REPO,
                              capture_output=True, timeout=180, env={**os.environ, "HWEMU_RUN_DIR": str(rd)})
        assert (done.returncode, done.stdout) == (0, EXPECTED), done.stderr
    finally:
        subprocess.run([HWEMU, "down", "--run-dir", str(rd)], capture_output=True, timeout=60)
