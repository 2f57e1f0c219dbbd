"""jupyter_client behaviours our layer works around, each reproduced against plain jupyter_client and a local kernel.

Each test asserts the behaviour as it is in the installed jupyter_client, so that it fails - and says which
workaround may go - the day upstream changes it. docs/upstream.md has the report text for each.
"""

import asyncio
import json
import logging
import sys

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from jupyter_client.provisioning import KernelProvisionerFactory

pytestmark = pytest.mark.timeout(120)


async def test_two_concurrent_restarts_of_one_kernel_fail_upstream(jp_environ):
    """Workaround: provisioner.serialise_restarts. jupyter_client's restart does not order itself: two at once
    share the manager's one ``ready`` future and trip over each other."""
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel()
    try:
        results = await asyncio.gather(km.restart_kernel(), km.restart_kernel(), return_exceptions=True)
        failed = [r for r in results if isinstance(r, asyncio.InvalidStateError)]  # the ready future, set twice
        assert failed, "upstream now orders concurrent restarts: serialise_restarts may go (docs/upstream.md)"
    finally:
        await km.shutdown_kernel(now=True)


def test_a_kernelspec_config_key_named_like_a_factory_argument_is_a_type_error_upstream(jp_environ, jp_data_dir):
    """Workaround: provisioner.refuse_reserved_keys. The factory passes kernel_id, kernel_spec and parent itself
    and the kernelspec's config as more keyword arguments: a config key ``kernel_id`` is a TypeError (a 500 in a
    server) before any provisioner exists to say what is wrong."""
    folder = jp_data_dir / "kernels" / "reserved"
    folder.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "reserved",
        "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": "local-provisioner", "config": {"kernel_id": "x"}}},
    }
    (folder / "kernel.json").write_text(json.dumps(spec))
    kernel_spec = KernelSpecManager().get_kernel_spec("reserved")
    factory = KernelProvisionerFactory()
    with pytest.raises(TypeError, match="multiple values for keyword argument 'kernel_id'"):
        factory.create_provisioner_instance("an-id", kernel_spec, None)


async def test_a_failed_start_is_logged_twice_with_a_traceback_upstream(jp_environ, jp_data_dir, caplog):
    """Workaround: app.QuietRefusals, the log filter. A start that fails is logged with its traceback by
    ``in_pending_state`` and again by the multi-kernel manager: for a refusal that is an answer to the person
    (a 4xx with a sentence), not a crash, that is three screens of log per click."""
    folder = jp_data_dir / "kernels" / "missing"
    folder.mkdir(parents=True)
    spec = {"argv": ["/nonexistent/python", "-f", "{connection_file}"], "display_name": "missing", "language": "x"}
    (folder / "kernel.json").write_text(json.dumps(spec))
    mkm = AsyncMultiKernelManager()
    with caplog.at_level(logging.ERROR):
        with pytest.raises(FileNotFoundError):
            await mkm.start_kernel(kernel_name="missing")
        await asyncio.sleep(0)  # the pending-kernel task logs when it sees the failure
    with_traceback = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], FileNotFoundError)]
    assert len(with_traceback) >= 2, "upstream now logs a failed start once: QuietRefusals may be simpler"
