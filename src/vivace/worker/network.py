"""Network namespaces for containers, created ahead of time so that a start pays for no ``ip`` call.

Every isolated container gets its own network namespace, taken from a pool of ready ones:

* **open** slots have loopback and a veth pair routed through the host with NAT, so the function
  reaches the outside world; they reach neither the host's own services (the control plane
  included: containers talk to vivace only through their socket) nor each other, nor the control
  plane's address when it is another machine.
* **blocked** slots (``block_network=True``) have loopback only.

A used namespace is deleted, never reused, and the pool refills in the background. Each worker takes a
/22 of ``10.213.0.0/16`` (a lock file keeps two workers on one host apart) and names its namespaces,
interfaces and iptables chains after its key, so reconciliation after a crash finds exactly its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("vivace.worker")

SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
BLOCK_PREFIX = 22
NETNS_DIR = Path("/run/netns")
STATE = Path("/run/vivace/net")


class NetworkError(RuntimeError):
    pass


@dataclass(frozen=True)
class Slot:
    name: str  # netns name
    index: int
    blocked: bool

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)


def _run(*argv: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(argv[:4])}... failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


class NetworkPool:
    def __init__(self, key: str, *, size: int = 2, control_plane_host: str | None = None) -> None:
        self.key = key[:6]
        self.size = size
        self.control_plane_host = control_plane_host
        self.block: ipaddress.IPv4Network | None = None
        self._free_open: list[Slot] = []
        self._free_blocked: list[Slot] = []
        self._next = 0
        self._lock = asyncio.Lock()
        self._refill: asyncio.Task[None] | None = None
        self._allowlisted: set[str] = set()  # slots with an outbound allowlist chain
        self.chain_in = f"VIVACE-IN-{self.key}"
        self.chain_fwd = f"VIVACE-FWD-{self.key}"

    # -- set-up and tear-down ---------------------------------------------------------------------
    def setup(self) -> None:
        """Take an address block, install the firewall rules; idempotent."""
        self.block = self._claim_block()
        with contextlib.suppress(OSError):
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        iface = f"vh{self.key}+"
        ipt = "iptables"
        for chain in (self.chain_in, self.chain_fwd):
            _run(ipt, "-N", chain, check=False)
            _run(ipt, "-F", chain)
        # containers reach no service of the host (the control plane included) ...
        _run(ipt, "-A", self.chain_in, "-i", iface, "-j", "DROP")
        # ... nor each other, nor the control plane's machine; everything else goes out through NAT
        _run(ipt, "-A", self.chain_fwd, "-i", iface, "-d", str(SUPERNET), "-j", "DROP")
        if self.control_plane_host:
            _run(
                ipt,
                "-A",
                self.chain_fwd,
                "-i",
                iface,
                "-d",
                self.control_plane_host,
                "-j",
                "DROP",
                check=False,
            )
        _run(ipt, "-A", self.chain_fwd, "-i", iface, "-j", "ACCEPT")
        _run(ipt, "-A", self.chain_fwd, "-o", iface, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
             "-j", "ACCEPT")  # fmt: skip
        for parent, chain in (("INPUT", self.chain_in), ("FORWARD", self.chain_fwd)):
            if not _rule_exists(parent, chain):
                _run(ipt, "-I", parent, "1", "-j", chain)
        nat = ["-t", "nat", "POSTROUTING", "-s", str(self.block), "!", "-o", iface, "-j", "MASQUERADE"]
        if subprocess.run([ipt, "-t", "nat", "-C", *nat[2:]], capture_output=True).returncode != 0:
            _run(ipt, "-t", "nat", "-A", *nat[2:])

    async def close(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(BaseException):
                await self._refill
        async with self._lock:  # a namespace being created finishes first
            await asyncio.to_thread(self.teardown)

    def teardown(self) -> list[str]:
        """Delete this worker's namespaces, interfaces, rules and address block."""
        removed = []
        for name in self._leftover_namespaces():
            _run("ip", "netns", "delete", name, check=False)
            removed.append(f"netns {name}")
        ipt = "iptables"
        for parent, chain in (("INPUT", self.chain_in), ("FORWARD", self.chain_fwd)):
            while _rule_exists(parent, chain):
                _run(ipt, "-D", parent, "-j", chain, check=False)
            _run(ipt, "-F", chain, check=False)
            _run(ipt, "-X", chain, check=False)
        for line in _run(ipt, "-S", check=False).splitlines():  # allowlist chains, by their name
            if line.startswith(f"-N VIVACE-AL-{self.key}-"):
                _run(ipt, "-F", line.split()[1], check=False)
                _run(ipt, "-X", line.split()[1], check=False)
        self._allowlisted.clear()
        out = _run(ipt, "-t", "nat", "-S", "POSTROUTING", check=False)
        for line in out.splitlines():
            if f"vh{self.key}+" in line and line.startswith("-A "):
                _run(ipt, "-t", "nat", "-D", *line.split()[1:], check=False)
        claim = STATE / f"{self.key}.block"
        claim.unlink(missing_ok=True)
        self._free_open.clear()
        self._free_blocked.clear()
        return removed

    def _leftover_namespaces(self) -> list[str]:
        if not NETNS_DIR.is_dir():
            return []
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(f"vv{self.key}-"))

    def _claim_block(self) -> ipaddress.IPv4Network:
        STATE.mkdir(parents=True, exist_ok=True)
        mine = STATE / f"{self.key}.block"
        with open(STATE / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if mine.exists():
                return ipaddress.IPv4Network(mine.read_text().strip())
            taken = {p.read_text().strip() for p in STATE.glob("*.block")}
            for block in SUPERNET.subnets(new_prefix=BLOCK_PREFIX):
                if str(block) not in taken:
                    mine.write_text(str(block))
                    return block
        raise NetworkError(f"every address block of {SUPERNET} is taken by other workers on this host")

    # -- slots -------------------------------------------------------------------------------------
    def _create(self, blocked: bool) -> Slot:
        assert self.block is not None
        self._next += 1
        index = self._next % (self.block.num_addresses // 4)
        name = f"vv{self.key}-{index}"
        if (NETNS_DIR / name).exists():
            _run("ip", "netns", "delete", name, check=False)
        _run("ip", "netns", "add", name)
        try:
            if blocked:
                _run("ip", "-n", name, "link", "set", "lo", "up")
            else:
                net = list(self.block.subnets(new_prefix=30))[index]
                host_ip, ns_ip = net[1], net[2]
                host_if = f"vh{self.key}{index}"
                _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name)
                _run(
                    "ip", "-batch", "-", input=f"addr add {host_ip}/30 dev {host_if}\nlink set {host_if} up\n"
                )
                _run(
                    "ip", "-n", name, "-batch", "-",
                    input=f"link set lo up\naddr add {ns_ip}/30 dev eth0\nlink set eth0 up\n"
                    f"route add default via {host_ip}\n",
                )  # fmt: skip
        except BaseException:
            _run("ip", "netns", "delete", name, check=False)
            raise
        return Slot(name, index, blocked)

    async def acquire(self, blocked: bool) -> Slot:
        free = self._free_blocked if blocked else self._free_open
        slot = free.pop() if free else None
        if slot is None:
            async with self._lock:
                slot = await asyncio.to_thread(self._create, blocked)
        self.kick()
        return slot

    async def release(self, slot: Slot) -> None:
        if slot.name in self._allowlisted:
            await asyncio.to_thread(self._unrestrict, slot)
        await asyncio.to_thread(_run, "ip", "netns", "delete", slot.name, check=False)

    # -- outbound allowlists (sandboxes' outbound_cidr_allowlist) ----------------------------------
    def _allow_chain(self, slot: Slot) -> str:
        return f"VIVACE-AL-{self.key}-{slot.index}"

    def restrict(self, slot: Slot, cidrs: list[str]) -> None:
        """Let the open ``slot`` send only to ``cidrs``: a chain of its own, jumped to after the rules that
        keep every container off the host, the control plane and other containers (an allowlist never
        reopens those), returns for an allowed destination and drops the rest."""
        chain, host_if = self._allow_chain(slot), f"vh{self.key}{slot.index}"
        _run("iptables", "-N", chain, check=False)
        _run("iptables", "-F", chain)
        for cidr in cidrs:
            _run("iptables", "-A", chain, "-d", cidr, "-j", "RETURN")
        _run("iptables", "-A", chain, "-j", "DROP")
        drops = (
            2 if self.control_plane_host else 1
        )  # the chain's first rules: DROP supernet (and control plane)
        _run("iptables", "-I", self.chain_fwd, str(drops + 1), "-i", host_if, "-j", chain)
        self._allowlisted.add(slot.name)

    def _unrestrict(self, slot: Slot) -> None:
        chain, host_if = self._allow_chain(slot), f"vh{self.key}{slot.index}"
        _run("iptables", "-D", self.chain_fwd, "-i", host_if, "-j", chain, check=False)
        _run("iptables", "-F", chain, check=False)
        _run("iptables", "-X", chain, check=False)
        self._allowlisted.discard(slot.name)

    def kick(self) -> None:
        """Refill the pool in the background."""
        if self._refill is None or self._refill.done():
            self._refill = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        try:
            for free, blocked in ((self._free_open, False), (self._free_blocked, True)):
                while len(free) < self.size:
                    async with self._lock:
                        free.append(await asyncio.to_thread(self._create, blocked))
        except Exception as err:  # a start then creates its own namespace and reports any error
            log.warning("could not pre-create network namespaces: %s", err)

    def resolv_conf(self) -> str:
        """Name servers the container can reach: the host's, unless they are on loopback."""
        return host_resolv_conf()


def host_resolv_conf() -> str:
    """A ``resolv.conf`` naming the host's name servers, those on loopback left out (unreachable from a
    container's namespace)."""
    lines = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    if not ipaddress.ip_address(parts[1]).is_loopback:
                        lines.append(line)
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def one_off_slot(key: str) -> Iterator[Slot]:
    """An open network namespace of its own, for one job that has no pool at hand (an image build step):
    its own address block, firewall rules and NAT, named after ``key`` (at most 6 characters, unique on
    the host), all removed on exit."""
    pool = NetworkPool(key, size=0)
    try:
        pool.setup()
        yield pool._create(blocked=False)
    finally:
        pool.teardown()


def _rule_exists(parent: str, chain: str) -> bool:
    return subprocess.run(["iptables", "-C", parent, "-j", chain], capture_output=True).returncode == 0


def have_tools() -> list[str]:
    """What container networking needs and this host lacks."""
    missing = []
    for tool in ("ip", "iptables"):
        if not any(
            os.access(os.path.join(d, tool), os.X_OK)
            for d in [*os.environ.get("PATH", "").split(":"), "/usr/sbin", "/sbin"]
        ):
            missing.append(tool)
    return missing
