"""The community's kernel conformance suite (jupyter_kernel_test) against a container kernel and the local
``python3`` kernel side by side, both started by jupyter_client's own ``start_new_kernel`` as outside clients
start them. Added here, for both: stdin (``input()``), a comm's round trip, an interrupt, and an 8 MB stream.

A row that differs between the two columns comes from the provisioner; none is expected to.
"""

import os
import uuid

import jupyter_kernel_test as jkt  # as a module: its TestCase must not be collected by itself
import pytest
from container_harness import install_spec

TIMEOUT = 60
BIG = 8 << 20  # bytes of one stream output


@pytest.fixture(scope="module", autouse=True)
def jupyter_folders(tmp_path_factory, docker_client):
    """A data folder holding the container kernelspec, and a working folder, for the module's whole run."""
    data, work = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("work")
    install_spec(data, "conformance", {})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_DATA_DIR", str(data))
        patch.chdir(work)  # a container kernel's root outside a server: the client's working folder
        yield


class Samples:
    """What jupyter_kernel_test asks of a Python kernel, and our own checks; the kernel name comes from a column."""

    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('expected')"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))", "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))", "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    # not "range": with ipykernel 7.4 its check fails for the local kernel as much as for the container (the reply's
    # first row is not the asked line), so it is left out of both columns; the subtest reports it as skipped
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    def execute_code(self, code, **kwargs):
        out, errors = [], []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append(msg["content"]["ename"])

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=TIMEOUT, **kwargs)
        return "".join(out), errors, reply

    def test_stdin_input_and_getpass(self):
        asked = []

        def answer(msg):
            asked.append((msg["content"]["prompt"], msg["content"]["password"]))
            self.kc.input("ada" if not msg["content"]["password"] else "secret")

        code = "import getpass; name = input('name? '); word = getpass.getpass('word? '); print(name, len(word))"
        out, errors, _ = self.execute_code(code, allow_stdin=True, stdin_hook=answer)
        assert (out, errors, asked) == ("ada 6\n", [], [("name? ", False), ("word? ", True)])

    def test_input_without_stdin_fails_cleanly(self):
        out, errors, reply = self.execute_code("input('name? ')", allow_stdin=False)
        assert errors == ["StdinNotImplementedError"] and reply["content"]["status"] == "error"

    def test_a_comm_round_trip(self):
        self.execute_code(
            "def echo(comm, opened):\n"
            "    comm.on_msg(lambda msg: comm.send({'echo': msg['content']['data']}))\n"
            "get_ipython().kernel.comm_manager.register_target('echo', echo)"
        )
        comm_id = uuid.uuid4().hex
        session, shell = self.kc.session, self.kc.shell_channel
        shell.send(session.msg("comm_open", {"comm_id": comm_id, "target_name": "echo", "data": {}}))
        self.kc.comm_info(target_name="echo")
        info = self.kc.get_shell_msg(timeout=TIMEOUT)
        assert comm_id in info["content"]["comms"]
        shell.send(session.msg("comm_msg", {"comm_id": comm_id, "data": {"n": 42}}))
        while True:
            msg = self.kc.get_iopub_msg(timeout=TIMEOUT)
            if msg["msg_type"] == "comm_msg":
                break
        assert msg["content"] == {"comm_id": comm_id, "data": {"echo": {"n": 42}}}

    def test_an_interrupt_ends_a_running_cell(self):
        msg_id = self.kc.execute("import time; print('sleeping', flush=True); time.sleep(300)")
        while self.kc.get_iopub_msg(timeout=TIMEOUT)["content"].get("text") != "sleeping\n":
            pass
        self.km.interrupt_kernel()
        reply = self.kc.get_shell_msg(timeout=TIMEOUT)
        assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["ename"] == "KeyboardInterrupt"
        # the next cell flushes its print: on a loaded machine, idle could otherwise come before the output
        assert self.execute_code("print('after', flush=True)")[:2] == ("after\n", [])

    def test_a_large_stream_output_arrives_whole(self):
        out, errors, _ = self.execute_code(f"print('x' * {BIG})")
        assert errors == [] and out == "x" * BIG + "\n"


class TestLocalKernel(Samples, jkt.KernelTests):
    kernel_name = "python3"


class TestContainerKernel(Samples, jkt.KernelTests):
    kernel_name = "gpuenv-conformance"

    def test_it_runs_in_a_container(self):
        assert self.km.provisioner.placement is not None and os.path.exists(self.km.connection_file)
