"""What a warm kernel's container runs and what makes two warm kernels the same: pure, shared by one person's
pool (``server.warm``) and the shared host's (``broker.warm``).

A warm container runs ``WARM_LAUNCHER``: it imports ipykernel and the environment's warm imports (no CUDA context:
a warm kernel holds no GPU memory), marks that it is ready (``<fifo>.ready``), and waits on the FIFO in its socket
folder for its order (connection file, working folder, variables); then it binds its sockets and answers. Like any
kernel it ends when its client's lock (``spec.CLIENT_LOCK``) goes.
"""

from __future__ import annotations

import json

from jupyter_gpuenv.containers import spec as containers
from jupyter_gpuenv.environments.definition import Environment

FIFO = "go"  # the warm kernel's order comes through this FIFO in its socket folder; "go.ready" says it waits

# Imports what a kernel needs (the slow part), marks that it is ready, waits for its order. Besides ipykernel, the
# modules its app imports only while it initializes (the debugger's debugpy: a quarter of a second).
KERNEL_MODULES = (
    "ipykernel.debugger",
    "ipykernel.zmqshell",
    "ipykernel.iostream",
    "ipykernel.heartbeat",
    "ipykernel.comm",
    "ipykernel.eventloops",
    "ipykernel.displayhook",
    "ipykernel.parentpoller",
)
WARM_LAUNCHER = containers.CLIENT_WATCHER + (  # a warm kernel ends with its client, as any kernel
    f"import json; sys.path.append({containers.RUNTIME_TARGET!r}); sys.argv[0] = 'ipykernel_launcher'\n"
    "from ipykernel import kernelapp, ipkernel\n"
    f"for name in {KERNEL_MODULES!r}:\n"
    "    try:\n"
    "        __import__(name)\n"
    "    except ImportError:\n"
    "        pass\n"
    "for name in json.loads(sys.argv[2]):\n"
    "    __import__(name)\n"
    "open(sys.argv[1] + '.ready', 'w').close()\n"
    "with open(sys.argv[1]) as go:\n"
    "    order = json.loads(go.read())\n"
    "os.chdir(order['cwd']); os.environ.update(order['env'])\n"
    "kernelapp.launch_new_instance(argv=['-f', order['connection_file']])\n"
)


def command(env: Environment, fifo: str, imports: list[str]) -> list[str]:
    """The warm container's command: the launcher, its FIFO, the modules it imports ahead."""
    return [env.python, "-c", WARM_LAUNCHER, fifo, json.dumps(imports)]


def warm_variables(env: Environment, server_env: dict[str, str]) -> dict[str, str]:
    """What a start passes to its warm kernel: the server's variables a kernel container gets (the session's
    name, the allow-list); the rest were set when the container was made."""
    return {k: v for k, v in server_env.items() if k in containers.ALWAYS_PASSED or k in env.env_allow}


def definition(env: Environment) -> str:
    """What makes two environments start the same container (the display name does not)."""
    return json.dumps({k: v for k, v in env.to_config().items() if k != "display_name"}, sort_keys=True)
