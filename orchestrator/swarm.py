"""Docker Swarm as a cluster's engine: the Compose (stack) file of a topology,
and the node launcher ``hwemu up --engine swarm`` plugs into the supervisor.

Every node is a Swarm service of the stack ``hwemu-<cluster>-<run dir hash>``
whose one container runs the node process (``python3 -m <module> --config
<run dir>/conf/<node>.json``), on the host network, with the run directory
bind-mounted at the same path: its ``ipc://`` sockets, configs, logs and disk
images are the ones a local cluster has. The orchestrator stays the same
daemon, on the manager, and supervises the containers' processes as it does
local ones (by their host pid): it starts a node by scaling its service to
one (a fresh task), restarts it by forcing a new task, and the stack is
deployed with Swarm's own restarts off (it would restart a node before its
receivers were told that the node's flows start over). So every command
(``status``, ``run``, ``interpose``, ``fault``, ``down``...) works unchanged.

``python3 -m orchestrator.health CONFIG`` is the services' healthcheck.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import trio

from orchestrator.topology import NodeSpec, Topology

DEFAULT_IMAGE = "hwemu:latest"
SWARM_FILE = "swarm.json"  # in the run directory: the stack a swarm cluster runs as (`hwemu down` removes it)
RESTART = {"never": "none", "on-failure": "on-failure", "always": "any"}
# the environment every node reads (docs/topologies.md), with its defaults: `docker stack deploy` fills it in
ENV_PASSED = {"HWEMU_LOG": "INFO", "HWEMU_SPIN_US": "200", "HWEMU_SLICE_US": "", "HWEMU_HISTORY_DIR": ""}
HOST_LABEL = "hwemu.host"  # `docker node update --label-add hwemu.host=a NODE` places the nodes of host "a"
SOURCE_LABEL = "org.hwemu.source"  # on an image: the source_digest() of the code it was built from
PACKAGES = ("hwemu", "nodes", "orchestrator", "protocol")  # what the image installs (pyproject.toml)


class DockerError(RuntimeError):
    """Docker is missing, not running, not a Swarm manager, or a docker command failed (one line)."""


def docker(*args: str, timeout: float = 120.0, input: bytes | None = None) -> str:
    """Run the docker CLI; its stdout. Raises :class:`DockerError` with its one-line error."""
    try:
        done = subprocess.run(["docker", *args], input=input, capture_output=True, timeout=timeout,
                              env={**os.environ, "DOCKER_BUILDKIT": "0"})
    except FileNotFoundError:
        raise DockerError("docker is not installed (Debian: apt-get install docker.io; "
                          "or run scripts/swarm-setup.sh)") from None
    except subprocess.TimeoutExpired:
        raise DockerError(f"`docker {' '.join(args[:3])}` did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise DockerError(f"`docker {' '.join(args[:3])}` failed: {err[-1] if err else f'exit {done.returncode}'}")
    return done.stdout.decode(errors="replace")


def check_daemon() -> None:
    """Docker is installed and its daemon answers."""
    try:
        docker("version", "--format", "{{.Server.Version}}", timeout=20)
    except DockerError as exc:
        if "not installed" in str(exc):
            raise
        raise DockerError("the Docker daemon is not running or not reachable (start dockerd, or run "
                          f"scripts/swarm-setup.sh): {exc}") from None


def source_digest() -> str:
    """A digest of the Python sources this orchestrator runs (every ``.py`` file of
    :data:`PACKAGES`, by path and content): the same for a checkout and for the
    image built from it, different as soon as one line differs."""
    h = hashlib.sha256()
    for pkg in PACKAGES:
        top = Path(__import__(pkg).__file__).resolve().parent
        for path in sorted(top.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            h.update(f"{pkg}/{path.relative_to(top).as_posix()}\0".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def check_swarm(image: str) -> None:
    """This host is a Swarm manager and has ``image``, built from the code this
    orchestrator runs: nodes of other code would not speak the same protocol
    (a stale image once ran a whole demo on code a day old, and lost messages
    at its first route change)."""
    check_daemon()
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}").split()
    if state[:1] != ["active"] or state[1:] != ["true"]:
        raise DockerError("this Docker is not a Swarm manager (run `docker swarm init --advertise-addr 127.0.0.1`, "
                          "or scripts/swarm-setup.sh)")
    try:
        fmt = f'{{{{index .Config.Labels "{SOURCE_LABEL}"}}}}|{{{{.Created}}}}'
        label, created = docker("image", "inspect", "--format", fmt, image).strip().split("|")
    except DockerError:
        raise DockerError(f"no image {image} here: build it with `hwemu image build --tag {image}`") from None
    ours = source_digest()
    if label != ours:
        was = f"sources {label}" if label and label != "<no value>" else "sources not recorded"
        raise DockerError(f"image {image} was built from other hwemu code ({was}, created {created[:19]}; "
                          f"this checkout: {ours}): rebuild it with `hwemu image build --tag {image}`")


def stack_name(topology: Topology, run_dir: Path) -> str:
    """One stack per run directory: two clusters of one topology do not collide."""
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:6]
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in topology.name.lower())
    return f"hwemu-{name}-{digest}"


# -- the Compose file ---------------------------------------------------------------


def node_command(spec: NodeSpec, run_dir: str) -> list[str]:
    """The container's command: the node process itself (pid 1), its log in the run directory.

    The config the orchestrator wrote for this start wins; a node on a host that has
    no copy of the run directory reads the one deployed as its secret. (``$$``: a ``$`` the
    stack file does not fill in.)"""
    conf = f"{run_dir}/conf/{spec.name}.json"
    script = (f'c="{conf}"; [ -r "$$c" ] || c=/run/secrets/{spec.name}.json; mkdir -p "{run_dir}/logs"; '
              f'exec python3 -m {spec.module} --config "$$c" >>"{run_dir}/logs/{spec.name}.log" 2>&1')
    return ["sh", "-c", script]


def stack(topology: Topology, *, run_dir: str = "${HWEMU_RUN_DIR}", image: str = "${HWEMU_IMAGE:-" + DEFAULT_IMAGE
          + "}", supervised: bool = False) -> dict[str, Any]:
    """The Compose (version 3) file of a topology: one service per node.

    Args:
        run_dir: where the run directory is, the same path on every host (a variable
            by default: ``HWEMU_RUN_DIR=... docker stack deploy`` fills it in).
        image: the image of ``hwemu image build``.
        supervised: for ``hwemu up --engine swarm``: every service at zero replicas and
            Swarm's restarts off: the orchestrator starts and restarts the nodes itself.
    """
    services: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    where = topology.placement().where  # node -> its host (docs/hosts.md); empty: one host, anywhere
    for spec in topology.nodes.values():
        host = where.get(spec.name)
        deploy: dict[str, Any] = {
            "mode": "replicated",
            "replicas": 0 if supervised or not spec.autostart else 1,
            "restart_policy": ({"condition": "none"} if supervised else
                               {"condition": RESTART[spec.restart], "delay": "1s",
                                "max_attempts": spec.max_restarts}),
        }
        if host:
            deploy["placement"] = {"constraints": [f"node.labels.{HOST_LABEL} == {host}"]}
        services[spec.name] = {
            "image": image,
            "command": node_command(spec, run_dir),
            "environment": {"PYTHONUNBUFFERED": "1", **{k: f"${{{k}:-{v}}}" for k, v in ENV_PASSED.items()}},
            "volumes": [f"{run_dir}:{run_dir}"],
            "networks": ["hostnet"],
            "secrets": [{"source": f"{spec.name}.json", "target": f"{spec.name}.json", "mode": 0o400}],
            # supervised, the orchestrator watches the node's heartbeats: Swarm only ends one that
            # has not accepted a connection for minutes (a loaded host slows checks down, too)
            "healthcheck": {"test": ["CMD", "python3", "-m", "orchestrator.health", f"{run_dir}/conf/{spec.name}.json"],
                            "interval": "30s" if supervised else "10s", "timeout": "20s" if supervised else "5s",
                            "retries": 5 if supervised else 3, "start_period": "60s" if supervised else "30s"},
            "labels": {"hwemu.node": spec.name, "hwemu.kind": spec.kind},
            "deploy": deploy,
        }
        # the node's config holds its keys: a secret (0400 in the container), not a config
        secrets[f"{spec.name}.json"] = {"file": f"{run_dir}/conf/{spec.name}.json"}
    return {"version": "3.8", "services": services,
            "networks": {"hostnet": {"external": True, "name": "host"}}, "secrets": secrets}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"0{value:o}" if value == 0o400 else str(value)  # a file mode reads best in octal
    return json.dumps(str(value))  # a YAML double-quoted string is a JSON string


def to_yaml(data: Any, indent: int = 0) -> str:
    """A small YAML writer for the stack file (mappings, lists, scalars): no dependency for it."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, (dict, list)) and value:
                if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
                    lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
                else:
                    lines.append(f"{pad}{key}:")
                    lines.append(to_yaml(value, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(value) if not isinstance(value, (dict, list)) else '{}'}")
    else:
        for item in data:
            body = to_yaml(item, indent + 1).lstrip() if isinstance(item, (dict, list)) else _scalar(item)
            lines.append(f"{pad}- {body}")
    return "\n".join(lines)


def export(topology: Topology, source: str, **kwargs: Any) -> str:
    """The stack file's text, with a header saying where it comes from."""
    head = (f"# Generated by `hwemu compose export {source}`: do not edit (tests check it is up to date).\n"
            "# Deploy: `hwemu up --engine swarm TOPOLOGY` (docs/swarm.md); the variables are filled from the\n"
            "# environment: HWEMU_RUN_DIR (the run directory, the same path on every host), HWEMU_IMAGE.\n")
    return head + to_yaml(stack(topology, **kwargs)) + "\n"


# -- the engine of `hwemu up --engine swarm` -------------------------------------------


class ServiceProcess:
    """A node's container process, seen from the manager as a local process.

    It has what the supervisor uses of a ``trio.Process``: ``pid`` (the process's pid
    on this host: signals and ``/proc`` work as for a local node), ``returncode`` and
    ``wait()``; and ``ns_pid``, the pid the node itself reports (its container's)."""

    def __init__(self, container: str, pid: int):
        self.container = container
        self.pid = pid
        self.returncode: int | None = None
        self.ns_pid = pid
        try:  # "NSpid: <host pid> <pid in the container>"
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    self.ns_pid = int(line.split()[-1])
        except (OSError, ValueError):
            pass
        self._fd = os.pidfd_open(pid)

    async def wait(self) -> int:
        """Its exit status, once it ended. Several tasks may wait at once (the supervisor's
        watch and a stop): each on its own copy of the pidfd (trio lets one task wait per fd)."""
        if self.returncode is None:
            fd = os.dup(self._fd)
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                os.close(fd)
            with trio.CancelScope(shield=True):
                try:  # the container's exit status: the node's
                    out = await trio.to_thread.run_sync(docker, "wait", self.container)
                    code = int(out.strip() or -1)
                except (DockerError, ValueError):
                    code = -1
                if self.returncode is None:
                    self.returncode = code
        return self.returncode

    def __del__(self) -> None:
        os.close(self._fd)

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)


class SwarmEngine:
    """Deploys a topology's stack and starts its nodes as Swarm tasks (for the supervisor)."""

    def __init__(self, topology: Topology, run_dir: Path, image: str):
        self.topology = topology
        self.run_dir = Path(run_dir)
        self.image = image
        self.stack = stack_name(topology, self.run_dir)

    def service(self, node: str) -> str:
        return f"{self.stack}_{node}"

    def deploy(self, config_for: Callable[[NodeSpec], dict], write: Callable[[Path, bytes], None]) -> None:
        """Write every node's first config (its secret) and deploy the stack, every service at zero."""
        check_swarm(self.image)
        remove_stack(self.stack)  # a predecessor's, left by a killed daemon: secrets cannot be updated
        conf = self.run_dir / "conf"
        conf.mkdir(mode=0o700, parents=True, exist_ok=True)
        for spec in self.topology.nodes.values():
            write(conf / f"{spec.name}.json", json.dumps(config_for(spec)).encode())
        path = self.run_dir / "stack.yml"
        path.write_text(export(self.topology, self.topology.source, run_dir=str(self.run_dir), image=self.image,
                               supervised=True))
        (self.run_dir / SWARM_FILE).write_text(json.dumps({"stack": self.stack, "image": self.image}))
        docker("stack", "deploy", "--prune", "--resolve-image", "never", "-c", str(path), self.stack, timeout=180)

    def _running(self, node: str) -> set[str]:
        out = docker("ps", "-q", "--no-trunc", "--filter", f"label=com.docker.swarm.service.name={self.service(node)}",
                     "--filter", "status=running")
        return set(out.split())

    async def launch(self, spec: NodeSpec, timeout: float = 60.0) -> ServiceProcess:
        """A fresh task of the node's service; returns once its container runs."""
        old = await trio.to_thread.run_sync(self._running, spec.name)
        await trio.to_thread.run_sync(lambda: docker("service", "update", "--detach", "--force", "--replicas", "1",
                                                     self.service(spec.name)))
        deadline = time.monotonic() + timeout
        while True:
            new = (await trio.to_thread.run_sync(self._running, spec.name)) - old
            for cid in new:
                try:
                    pid = int(docker("inspect", "--format", "{{.State.Pid}}", cid).strip())
                    if pid > 0:
                        return ServiceProcess(cid, pid)
                except (DockerError, ValueError, ProcessLookupError):
                    continue  # gone already: the supervisor sees its start fail by the missing ready
            if time.monotonic() > deadline:
                raise DockerError(f"service {self.service(spec.name)} started no container within {timeout:g} s "
                                  f"({task_error(self.service(spec.name))})")
            await trio.sleep(0.2)

    def remove(self) -> None:
        remove_stack(self.stack)
        (self.run_dir / SWARM_FILE).unlink(missing_ok=True)


def task_error(service: str) -> str:
    """Why a service's last task did not run, as Swarm says."""
    try:
        out = docker("service", "ps", "--no-trunc", "--format", "{{.CurrentState}}: {{.Error}}", service)
        return out.strip().splitlines()[0] if out.strip() else "no task"
    except DockerError as exc:
        return str(exc)


def stack_left(stack: str) -> list[str]:
    """Services and containers of a stack that still exist."""
    services = docker("service", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack}").split()
    containers = docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={stack}").split()
    return services + containers


def remove_stack(stack: str, timeout: float = 60.0) -> None:
    """``docker stack rm`` and wait until no service, container or secret of it is left."""
    if not stack_left(stack) and not docker("secret", "ls", "-q", "--filter",
                                            f"label=com.docker.stack.namespace={stack}").split():
        return
    docker("stack", "rm", stack)
    deadline = time.monotonic() + timeout
    while stack_left(stack):
        if time.monotonic() > deadline:
            raise DockerError(f"stack {stack} not gone after {timeout:g} s: {' '.join(stack_left(stack))}")
        time.sleep(0.3)


def down(run_dir: Path) -> str | None:
    """``hwemu down``'s part: remove the run directory's stack (its daemon may be gone). The stack name, or None."""
    path = Path(run_dir) / SWARM_FILE
    try:
        name = json.loads(path.read_text())["stack"]
    except (OSError, ValueError, KeyError):
        return None
    remove_stack(name)
    path.unlink(missing_ok=True)
    return name
