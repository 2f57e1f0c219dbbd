"""`jupyter gpuenv`: kernelspecs every user of a Python can read, the server's configuration, clear errors."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from jupyter_gpuenv.cli.main import main

IMAGE = "gpuenv-test-kernel:latest"


def test_add_list_remove(jp_environ, jp_data_dir, capsys):
    assert main(["add", "mine", "--image", IMAGE, "--gpus", "exclusive:1", "--shm-size", "4g", "--user"]) == 0
    spec = KernelSpecManager().get_kernel_spec("gpuenv-mine")
    config = spec.metadata["kernel_provisioner"]["config"]
    assert config["gpus"] == "exclusive:1" and config["shm_size"] == "4g" and config["image"] == IMAGE
    assert main(["list"]) == 0
    assert "gpuenv-mine" in capsys.readouterr().out
    assert main(["remove", "mine"]) == 0 and main(["remove", "mine"]) == 1


def test_a_prefix_install_is_readable_by_every_user(jp_environ, tmp_path):
    assert main(["add", "pytorch-2.6-cuda12.4", "--prefix", str(tmp_path / "prefix")]) == 0
    folder = tmp_path / "prefix" / "share" / "jupyter" / "kernels" / "gpuenv-pytorch-2.6-cuda12.4"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    for name in ("kernel.json", "logo-svg.svg", "logo-64x64.png"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name


def test_the_launcher_tile_shows_a_gpu_card_or_a_cpu_chip(jp_environ, jp_data_dir):
    """Lab's Launcher draws a kernelspec's logo-svg (logo-64x64 elsewhere): a GPU card, a chip for --gpus none."""
    assert main(["add", "torch", "--image", IMAGE, "--gpus", "1", "--user"]) == 0
    assert main(["add", "py", "--image", IMAGE, "--gpus", "none", "--user"]) == 0
    logos = {name: KernelSpecManager().get_kernel_spec(f"gpuenv-{name}").resource_dir for name in ("torch", "py")}
    read = lambda name, file: Path(logos[name], file).read_bytes()  # noqa: E731
    assert b"<svg" in read("torch", "logo-svg.svg") and read("torch", "logo-64x64.png").startswith(b"\x89PNG")
    assert read("torch", "logo-svg.svg") != read("py", "logo-svg.svg")
    assert read("torch", "logo-64x64.png") != read("py", "logo-64x64.png")
    assert len(read("py", "logo-64x64.png")) < 4096  # small: every Launcher loads them


def test_without_flags_a_virtual_environment_gets_it(jp_environ, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert main(["add", "mine", "--image", IMAGE]) == 0
    assert (tmp_path / "venv" / "share" / "jupyter" / "kernels" / "gpuenv-mine" / "kernel.json").is_file()


def test_list_shows_what_the_servers_configuration_defines(jp_environ, jp_config_dir, capsys):
    (jp_config_dir / "jupyter_server_config.py").write_text(
        'c.GpuEnv.environments = {"team": {"image": "team/torch:1", "gpus": "exclusive:1"}, "broken": {"gpus": "1"}}\n'
    )
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "team" in out and "team/torch:1" in out and "exclusive:1" in out and "(no kernelspec)" in out
    assert "broken" in out and "'image' is required" in out


def test_bad_input_is_one_sentence_and_exit_status_2(jp_environ, capsys):
    assert main(["add", "broken", "--image", IMAGE, "--gpus", "most"]) == 2
    assert "'most' is not a GPU policy" in capsys.readouterr().err
    assert main(["add", "x", "--image", IMAGE, "--env", "NOEQUALS"]) == 2
    err = capsys.readouterr().err
    assert "--env 'NOEQUALS' must be NAME=VALUE" in err and "Traceback" not in err
    assert main(["prepare-runtime", "three"]) == 2
    assert "is not a Python version" in capsys.readouterr().err


def test_a_folder_it_may_not_write_is_a_sentence(jp_environ, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    # root writes through modes: an immutable folder refuses even root
    if os.getuid() == 0 and subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("this file system cannot make a folder immutable, and root writes anywhere else")
    try:
        assert main(["add", "mine", "--image", IMAGE, "--prefix", str(locked)]) == 2
        err = capsys.readouterr().err
        assert "cannot write the kernelspec to" in err and "--user" in err and "Traceback" not in err
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)


def test_a_bare_command_prints_help_and_version_is_there(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jupyter gpuenv") and "add" in out and "broker" in out
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("jupyter_gpuenv ")


def help_of(capsys, *command: str) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def test_every_option_says_what_it_does(capsys):
    text = help_of(capsys, "add")
    for option in ("--image", "--display-name", "--shm-size", "--memory", "--cpus", "--cuda-version", "--gpus"):
        metavar, first_word = text.split(option, 2)[-1].split()[:2]  # the second mention: in the option list
        assert not first_word.startswith("-"), f"{option} {metavar} has no help text"
    assert "Default: all" in text and "use none" in text
    text = help_of(capsys, "remove")
    assert "Remove the kernel" in text and "gpuenv-NAME" in text
    text = help_of(capsys, "broker")
    assert "root" in text and "/run/jupyter-gpuenv/broker.sock" in text and "docs/shared-host.md" in text
    assert "--example-config" in text and "install" in text


def fake_nvml(monkeypatch, recording: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/: fake_pynvml
    import fake_pynvml

    from jupyter_gpuenv.gpus import nvml

    monkeypatch.setattr(nvml, "load_pynvml", lambda: fake_pynvml.FakePynvml(fake_pynvml.load(recording)))


def test_all_gpus_on_a_machine_without_one_is_warned_at_add_time(jp_environ, monkeypatch, capsys):
    fake_nvml(monkeypatch, "no-driver")
    assert main(["add", "mine", "--image", IMAGE, "--user"]) == 0
    err = capsys.readouterr().err
    assert "this machine has no GPU" in err and "add --gpus none" in err
    assert main(["add", "cpu", "--image", IMAGE, "--gpus", "none", "--user"]) == 0
    assert "warning" not in capsys.readouterr().err
    fake_nvml(monkeypatch, "h100x2")
    assert main(["add", "mine", "--image", IMAGE, "--user"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_add_broker_takes_a_name_the_servers_configuration_defines(jp_environ, jp_config_dir, capsys):
    (jp_config_dir / "jupyter_server_config.py").write_text(
        f'c.GpuEnv.environments = {{"team": {{"image": "{IMAGE}", "display_name": "Team", "gpus": "none"}}}}\n'
    )
    assert main(["add", "team", "--broker", "--user"]) == 0
    assert KernelSpecManager().get_kernel_spec("gpuenv-team").display_name == "Team"
    assert "warning" not in capsys.readouterr().err
