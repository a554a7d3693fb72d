"""Escape attempts: raw sockets, network configuration, the host, the control plane, other sandboxes."""

from __future__ import annotations

import errno as E
import socket

import pytest

from .kit import (
    CONNECT,
    PEER_PORT,
    PRELUDE,
    UNREACHABLE,
    address_of,
    host_addresses,
    per_runtime,
    probe,
    scratch,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


# -- the network --------------------------------------------------------------------------------------
def test_raw_and_packet_sockets_are_refused(env, box):
    seen = probe(
        box,
        """
        def sock(*a):
            socket.socket(*a).close()
        out(packet=errno_of(sock, socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
            packet_dgram=errno_of(sock, socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300),
            raw_icmp=errno_of(sock, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
            raw_ip=errno_of(sock, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
            raw6=errno_of(sock, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW))
        """,
    )
    # runsc: gVisor refuses raw sockets without CAP_NET_RAW (and --net-raw), or has no such family
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.EAFNOSUPPORT, E.ESOCKTNOSUPPORT})
    assert all(v in allowed for v in seen.values()), seen


def test_network_configuration_cannot_be_changed(env, box):
    seen = probe(
        box,
        """
        import fcntl, struct
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        req = struct.pack('16sH22x', b'lo', 0)
        flags = struct.unpack('16sH22x', fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
        res = dict(flags=errno_of(fcntl.ioctl, s, 0x8914, struct.pack('16sH22x', b'lo', flags)),
                   mtu=errno_of(fcntl.ioctl, s, 0x8922, struct.pack('16si20x', b'lo', 65536)))
        out(**res)
        """,
    )
    # setting an interface's flags or MTU (the same values) needs CAP_NET_ADMIN; runsc: gVisor has no
    # such ioctl on its sockets at all (ENOTTY)
    allowed = per_runtime(env, {E.EPERM}, {E.EPERM, E.ENOTTY})
    assert seen["flags"] in allowed and seen["mtu"] in allowed, seen


def test_host_services_are_unreachable(env, box, host_listener, test_host):
    with socket.create_connection(("127.0.0.1", host_listener), timeout=10) as s:
        assert s.recv(16) == b"host"  # control: the listener answers on the host
    addr, port = test_host
    assert probe(box, f"out(r=connect({addr!r}, {port}, 20))", prelude=PRELUDE + CONNECT) == {
        "r": "connected:hello"
    }  # control: the sandbox's network works (a host of the test's, in its own namespace)
    _, gateway = address_of(env, box)
    targets = [gateway, "127.0.0.1", *host_addresses()]
    seen = probe(
        box, f"out(**{{t: connect(t, {host_listener}) for t in {targets!r}}})", prelude=PRELUDE + CONNECT
    )
    assert all(v in UNREACHABLE for v in seen.values()), seen
    assert seen["127.0.0.1"] == "ECONNREFUSED", seen  # its own loopback, where nothing listens


def test_control_plane_is_unreachable(env, box):
    port = env.cluster.port
    _, gateway = address_of(env, box)
    targets = [gateway, "127.0.0.1", *host_addresses()]
    seen = probe(box, f"out(**{{t: connect(t, {port}) for t in {targets!r}}})", prelude=PRELUDE + CONNECT)
    assert all(v in UNREACHABLE for v in seen.values()), seen


def test_other_sandboxes_are_unreachable(env, box, peer):
    other, peer_addr = peer
    own = probe(other, f"out(r=connect({peer_addr!r}, {PEER_PORT}, 20))", prelude=PRELUDE + CONNECT)
    assert own == {"r": "connected:peer"}  # control: the peer serves on its address
    seen = probe(box, f"out(r=connect({peer_addr!r}, {PEER_PORT}))", prelude=PRELUDE + CONNECT)
    assert seen["r"] in UNREACHABLE, seen
    # the bystander's address, where nothing listens: no answer at all (dropped), not a refusal
    by_addr, _ = address_of(env, env.bystander)
    seen = probe(box, f"out(r=connect({by_addr!r}, {PEER_PORT}))", prelude=PRELUDE + CONNECT)
    assert seen["r"] in UNREACHABLE - {"ECONNREFUSED"}, seen


def test_an_outbound_allowlist_cannot_reopen_the_host_or_other_sandboxes(env, peer, host_listener, test_host):
    addr, port = test_host
    _, peer_addr = peer
    # it asks for the forbidden too: every sandbox address and gateway (10.213/16), the host's addresses
    allow = [f"{addr}/32", "10.213.0.0/16", *(f"{h}/32" for h in host_addresses())]
    with scratch(env, outbound_cidr_allowlist=allow) as sb:
        _, gateway = address_of(env, sb)
        targets = {"test_host": (addr, port, 20), "peer": (peer_addr, PEER_PORT, 1.5)}
        targets.update({f"host {h}": (h, host_listener, 1.5) for h in [gateway, *host_addresses()]})
        targets["control plane"] = (gateway, env.cluster.port, 1.5)
        code = f"out(**{{k: connect(*target) for k, target in {targets!r}.items()}})"
        seen = probe(sb, code, prelude=PRELUDE + CONNECT)
    assert seen.pop("test_host") == "connected:hello", seen  # control: the allowlist lets it through
    assert all(v in UNREACHABLE for v in seen.values()), seen


def test_blocked_sandbox_has_only_loopback(env, test_host, box):
    addr, port = test_host
    box_addr, _ = address_of(env, box)
    code = f"""
    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)
    loop = socket.create_connection(s.getsockname(), timeout=5)  # control: loopback works
    loop.close(); s.close()
    out(outside=connect({addr!r}, {port}), sandbox=connect({box_addr!r}, 22))
    """
    with scratch(env, block_network=True) as sb:
        seen = probe(sb, code, prelude=PRELUDE + CONNECT)
    assert seen["outside"] in UNREACHABLE and seen["sandbox"] in UNREACHABLE, seen


def test_no_vivace_socket_or_tokens_inside(env, box):
    seen = probe(
        box,
        """
        env = dict(os.environ)
        init = dict(l.split('=', 1) for l in open('/proc/1/environ').read().split('\\0') if '=' in l)
        try:
            unix = [l.split()[-1] for l in open('/proc/net/unix').read().splitlines()[1:] if len(l.split()) > 7]
        except OSError:
            unix = []
        out(sock=errno_of(os.stat, '/run/vivace/vivace.sock'), run_vivace=errno_of(os.stat, '/run/vivace'),
            env=sorted(k for k in env if 'VIVACE' in k or 'MODAL' in k or 'TOKEN' in k),
            init=sorted(k for k in init if 'VIVACE' in k or 'MODAL' in k or 'TOKEN' in k),
            unix=[u for u in unix if 'vivace' in u])
        """,
    )
    assert seen["sock"] == seen["run_vivace"] == E.ENOENT, seen
    ids = ["MODAL_TASK_ID", "VIVACE_TASK_ID"]  # its own id: no token, no socket, no server address
    assert seen["env"] == ids and seen["init"] == ids and seen["unix"] == [], seen
