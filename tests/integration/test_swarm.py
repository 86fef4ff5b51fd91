"""The swarm engine end to end (marker ``swarm``: `pytest -m swarm`, after scripts/swarm-setup.sh).

The image is built from debootstrap's bookworm (cached), every node is a Docker Swarm service of
a stack deployed with `docker stack deploy`, and the CLI is used exactly as with local processes:
a program's output is byte-identical to the bare core's, the demo passes, and `hwemu down`
leaves no service, container, secret or stack behind. Every test removes its stack even when
it fails."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator import swarm
from orchestrator.topology import load

pytestmark = pytest.mark.swarm

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "guest" / "build" / "samples"
IMAGE = "hwemu:test"


def hwemu(*args: str, input: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=ROOT, input=input,
                          capture_output=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def stack_resources(stack: str) -> list[str]:
    """Every service, container and secret of a stack that exists (names)."""
    label = f"label=com.docker.stack.namespace={stack}"
    return (swarm.docker("service", "ls", "--format", "{{.Name}}", "--filter", label).split()
            + swarm.docker("ps", "-a", "--format", "{{.Names}}", "--filter", label).split()
            + swarm.docker("secret", "ls", "--format", "{{.Name}}", "--filter", label).split())


@pytest.fixture(scope="module")
def image():
    done = hwemu("image", "build", "--tag", IMAGE, "--json", timeout=1200)
    assert done.returncode == 0, done.stderr.decode()
    built = json.loads(done.stdout)
    assert built["tag"] == IMAGE and built["base"].startswith("hwemu-base:bookworm-")
    assert built["source"] == swarm.source_digest()  # labelled with the code it runs
    # the image's Python runs the node kinds it ships
    out = swarm.docker("run", "--rm", "--network", "host", IMAGE, "python3", "-c",
                       "import sys, nodes.cpu, nodes.guest_os, orchestrator.daemon; print(sys.version_info[:2])")
    assert out.strip() == "(3, 11)"
    return IMAGE


@pytest.fixture
def run_dir(tmp_path):
    """A private run directory; afterwards no cluster of it and no stack of it, whatever happened."""
    rd = tmp_path / "rd"
    rd.mkdir(mode=0o700)
    yield rd
    hwemu("down", "--run-dir", str(rd), timeout=120)
    for topology in ("native.toml", "vmm.toml", "demo.toml"):
        swarm.remove_stack(swarm.stack_name(load(ROOT / "compose" / topology), rd))


def test_native_cluster_on_swarm_runs_programs_and_leaves_nothing(image, run_dir, guest_build):
    topo = load(ROOT / "compose" / "native.toml")
    stack = swarm.stack_name(topo, run_dir)
    up = hwemu("up", "--engine", "swarm", "--image", image, "compose/native.toml", "--detach", "--json",
               "--run-dir", str(run_dir))
    assert up.returncode == 0, up.stderr.decode()

    # one service per node, each with one running container whose process is the node the orchestrator sees
    services = swarm.docker("service", "ls", "--format", "{{.Name}}", "--filter",
                            f"label=com.docker.stack.namespace={stack}").split()
    assert sorted(services) == sorted(f"{stack}_{n}" for n in topo.nodes)
    status = json.loads(hwemu("status", "--json", "--run-dir", str(run_dir)).stdout)
    for node in status["nodes"]:
        assert node["alive"] and node["state"] == "running", node
        cid = swarm.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_{node['name']}",
                           "--filter", "status=running").split()
        assert len(cid) == 1, node["name"]
        assert int(swarm.docker("inspect", "--format", "{{.State.Pid}}", cid[0])) == node["pid"]

    # programs: byte-identical to the bare core (hwemu cpu run), exit status passed on
    for elf, args, stdin in (("hello.elf", ["world"], None), ("wc.elf", [], b"one two\nthree\n"),
                             ("primes.elf", ["200"], None)):
        on_swarm = hwemu("run", "--run-dir", str(run_dir), "compose/native.toml", str(SAMPLES / elf), "--", *args,
                         input=stdin, timeout=120)
        bare = hwemu("cpu", "run", str(SAMPLES / elf), "--", *args, input=stdin, timeout=120)
        assert on_swarm.returncode == bare.returncode == 0, on_swarm.stderr.decode()
        assert on_swarm.stdout == bare.stdout, elf
    hello = hwemu("run", "--run-dir", str(run_dir), "compose/native.toml", str(SAMPLES / "hello.elf"), "--", "world")
    assert hello.stdout == b'Hello from hwemu!\nargc = 2\nargv[0] = hello.elf\nargv[1] = "world"\n'

    # a crash (`hwemu fault kill`, SIGKILL by the host pid): the orchestrator starts a new task of
    # the service, as it restarts a local node, and the cluster goes on
    killed = hwemu("fault", "kill", "timer0", "--run-dir", str(run_dir))
    assert killed.returncode == 0, killed.stderr.decode()
    for _ in range(300):
        timer0 = next(n for n in json.loads(hwemu("status", "--json", "--run-dir", str(run_dir)).stdout)["nodes"]
                      if n["name"] == "timer0")
        if timer0["restarts"] == 1 and timer0["state"] == "running":
            break
        time.sleep(0.2)
    assert timer0["restarts"] == 1 and timer0["state"] == "running", timer0
    tasks = swarm.docker("service", "ps", "--format", "{{.Error}}", f"{stack}_timer0")
    assert "non-zero exit (137)" in tasks  # the killed container, as Swarm saw it
    again = hwemu("run", "--run-dir", str(run_dir), "compose/native.toml", str(SAMPLES / "hello.elf"), "--", "world")
    assert again.stdout == hello.stdout

    down = hwemu("down", "--run-dir", str(run_dir), "--json", timeout=120)
    assert down.returncode == 0, down.stderr.decode()
    assert json.loads(down.stdout)["killed"] == []
    assert stack_resources(stack) == []
    assert swarm.docker("stack", "ls", "--format", "{{.Name}}").split().count(stack) == 0
    assert not (run_dir / "cluster.json").exists() and not (run_dir / swarm.SWARM_FILE).exists()


def test_interpose_and_devirtualize_on_swarm(image, run_dir, guest_build):
    """The VMM (a service of the stack) loaded, interposed under the running OS and taken out
    again; a program's output is the same under it and after it."""
    stack = swarm.stack_name(load(ROOT / "compose" / "vmm.toml"), run_dir)
    up = hwemu("up", "--engine", "swarm", "--image", image, "compose/vmm.toml", "--detach", "--run-dir", str(run_dir))
    assert up.returncode == 0, up.stderr.decode()
    hello = [str(SAMPLES / "hello.elf"), "--", "under", "the VMM"]
    bare = hwemu("cpu", "run", *hello).stdout
    for step in (["vmm", "load", "--host", "os1", "--frames", "64"], ["interpose"], None,
                 ["devirtualize", "--unload"], None):
        if step is None:
            ran = hwemu("run", "--run-dir", str(run_dir), "compose/vmm.toml", *hello, timeout=120)
            assert ran.returncode == 0 and ran.stdout == bare, ran.stderr.decode()
            continue
        done = hwemu(*step, "--run-dir", str(run_dir), "--json", timeout=120)
        assert done.returncode == 0, (step, done.stdout.decode(), done.stderr.decode())
    status = json.loads(hwemu("status", "--json", "--run-dir", str(run_dir)).stdout)
    assert not status["virt"]["vmm"]["loaded"] and set(status["virt"]["resources"].values()) != {"vmm"}
    assert hwemu("down", "--run-dir", str(run_dir), timeout=120).returncode == 0
    assert stack_resources(stack) == []


def test_demo_passes_on_swarm(image, run_dir, guest_build):
    """The main job on a swarm cluster: VMM loaded (a deferred service started), interposed, os2
    booted on borrowed memory, devirtualized; every output checked against the model."""
    done = hwemu("demo", "--engine", "swarm", "--image", image, "--run-dir", str(run_dir), "--json", timeout=600)
    report = json.loads(done.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert done.returncode == 0 and report["ok"] and not failed, failed or done.stderr.decode()[-2000:]
    figures = {s["figure"] for s in report["steps"]}
    assert {"fig4", "fig3", "fig5"} <= figures
    assert stack_resources(swarm.stack_name(load(ROOT / "compose" / "demo.toml"), run_dir)) == []


def test_up_refuses_an_image_of_other_code_in_one_line(image, run_dir):
    """Nodes of other code do not speak this orchestrator's protocol: an image whose source
    label is not this checkout's (an older build, say) is refused before anything starts."""
    stale = "hwemu:test-stale"
    swarm.docker("build", "-q", "-t", stale, "-", input=f"FROM {image}\nLABEL {swarm.SOURCE_LABEL}=0123456789abcdef\n"
                 .encode(), timeout=300)
    try:
        done = hwemu("up", "--engine", "swarm", "--image", stale, "compose/native.toml", "--detach",
                     "--run-dir", str(run_dir))
        err = done.stderr.decode()
        assert done.returncode == 1 and "Traceback" not in err, err
        assert "sources 0123456789abcdef" in err and f"hwemu image build --tag {stale}" in err, err
        assert not (run_dir / "cluster.json").exists()
    finally:
        swarm.docker("image", "rm", "-f", stale)


def test_up_refuses_a_missing_image_in_one_line(run_dir):
    done = hwemu("up", "--engine", "swarm", "--image", "hwemu:no-such-tag", "compose/native.toml", "--detach",
                 "--run-dir", str(run_dir))
    err = done.stderr.decode()
    assert done.returncode == 1 and "hwemu image build --tag hwemu:no-such-tag" in err and "Traceback" not in err
