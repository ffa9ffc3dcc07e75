"""Is there a Ray cluster at an address? Asked before ``ray.init``, which on a dead or foreign address
retries for minutes (35 s for a Ray Client address) and prints a wall of C++ log lines.

``probe`` answers within its timeout and says what is wrong in one line. The GCS is asked by Ray's own client
in a child process, so its C++ warnings never reach this process's stderr; nothing here imports ray.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys


def _host_port(address: str) -> tuple[str, int] | None:
    text = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


_GCS_PROBE = """
import sys, threading, os
def ask():
    try:
        from ray._raylet import GcsClient
        print("id", GcsClient(address=sys.argv[1]).cluster_id, flush=True)
    except Exception as err:
        print("error", type(err).__name__, flush=True)
    os._exit(0)
threading.Thread(target=ask, daemon=True).start()
threading.Event().wait(float(sys.argv[2]))
os._exit(0)
"""


def _ask_gcs(target: str, timeout: float) -> str:
    """``id ...``, ``error <type>`` or ``""`` (no answer in ``timeout`` s): Ray's GCS client asked in a child
    process, so the C++ warnings it prints while it retries stay out of this process's stderr, and a client
    that hangs is ended with the child."""
    env = {**os.environ, "RAY_BACKEND_LOG_LEVEL": "fatal"}
    try:
        done = subprocess.run([sys.executable, "-c", _GCS_PROBE, target, str(timeout)], capture_output=True,
                              text=True, env=env, timeout=timeout + 60)  # + the child's imports on a busy machine
    except subprocess.TimeoutExpired:
        return ""
    answers = [line for line in done.stdout.splitlines() if line.startswith(("id ", "error "))]
    return answers[0] if answers else ""


def probe(address: str, timeout: float) -> None:
    """Fail within ``timeout`` unless something at ``address`` answers like a Ray cluster: ``ray.init`` on a
    dead address retries for minutes and prints a wall of C++ log lines."""
    if address == "auto":
        return  # could not be resolved (ray_backend resolves it first where it can)
    target = _host_port(address)
    if target is None:
        raise ValueError(f"cannot read Ray address {address!r}; give host:port (e.g. 10.0.0.5:6379), "
                         "ray://host:port, auto or local")
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        raise ConnectionError(f"cannot reach the Ray cluster at {address} ({err.strerror or type(err).__name__}); "
                              "is `ray start --head` running there and the port open?") from None
    if address.startswith("ray://"):
        _probe_client(address, target, timeout)
        return
    answer = _ask_gcs(f"{target[0]}:{target[1]}", timeout)
    if not answer.startswith("id "):
        why = answer.split(" ", 1)[1] if answer else f"no answer within {timeout:g} s"
        raise ConnectionError(f"{address} accepts connections but does not answer as a Ray cluster ({why})")


def _probe_client(address: str, target: tuple[str, int], timeout: float) -> None:
    """A Ray Client server answers gRPC at once; anything else would keep ``ray.init`` retrying for 35 s."""
    try:
        import grpc  # what ray[client] adds
    except ImportError:
        raise ConnectionError(f"{address} is a Ray Client address, which needs `pip install 'ray[client]'` "
                              "(grpcio); or give the head's GCS address host:port") from None
    channel = grpc.insecure_channel(f"{target[0]}:{target[1]}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ConnectionError(f"{address} accepts connections but does not answer as a Ray Client server "
                              f"(no gRPC answer within {timeout:g} s)") from None
    finally:
        channel.close()
