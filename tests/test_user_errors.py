"""Mistakes a user can make end in one line naming the problem and a non-zero exit, before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port_override

ROOT = Path(__file__).resolve().parents[1]


def dudi(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("dudi: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_broken_yaml_names_the_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("name: x\nmodels:\n  student: [unclosed\n")
    assert "is not valid YAML at line" in one_line_error(dudi("train", str(config)))


def test_a_model_path_that_does_not_exist_or_is_not_a_model(tmp_path, tiny_world):
    data = tiny_world / "data" / "train.jsonl"
    base = [
        f"data.train_path={data}",
        f"data.eval_path={data}",
        f"output_dir={tmp_path / 'run'}",
        *free_port_override(),
    ]
    missing = dudi("train", "configs/demo.yaml", f"models.student={tmp_path / 'nowhere'}", *base)
    assert "models.student" in one_line_error(missing) and "neither a local directory" in one_line_error(missing)
    (tmp_path / "not-a-model").mkdir()
    not_model = dudi("train", "configs/demo.yaml", f"models.student={tmp_path / 'not-a-model'}", *base)
    assert "is not a model directory (no config.json)" in one_line_error(not_model)
    checkpoint = dudi("eval", str(tmp_path / "no-checkpoint"), "--data", str(data))
    assert "checkpoint" in one_line_error(checkpoint)


def test_an_output_dir_that_cannot_be_written(tmp_path, tiny_world):
    if os.geteuid() == 0:
        blocked = tmp_path / "file"  # root writes anywhere: use a path under a regular file instead
        blocked.write_text("")
        target = blocked / "run"
    else:
        blocked = tmp_path / "ro"
        blocked.mkdir(mode=0o500)
        target = blocked / "run"
    data = tiny_world / "data" / "train.jsonl"
    result = dudi(
        "train",
        "configs/demo.yaml",
        f"models.student={tiny_world / 'student'}",
        f"models.teacher={tiny_world / 'teacher'}",
        f"data.train_path={data}",
        f"data.eval_path={data}",
        f"output_dir={target}",
        *free_port_override(),
    )
    assert "cannot be written" in one_line_error(result)


def test_a_teacher_port_in_use(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = dudi("train", "configs/demo.yaml", f"teacher.http_port={port}")
        assert f"teacher.http_port {port} on 127.0.0.1 is in use" in one_line_error(result)


def test_resume_without_checkpoints(tmp_path, tiny_world):
    data = tiny_world / "data" / "train.jsonl"
    models = [f"models.student={tiny_world / 'student'}", f"models.teacher={tiny_world / 'teacher'}"]
    data_paths = [f"data.train_path={data}", f"data.eval_path={data}", *free_port_override()]
    result = dudi("train", "configs/demo.yaml", *models, *data_paths, f"output_dir={tmp_path / 'run'}", "--resume")
    assert "no complete checkpoint" in one_line_error(result)


def test_resume_with_a_changed_config(tmp_path, tiny_world):
    from orchestrator import checkpoints

    data = tiny_world / "data" / "train.jsonl"
    models = [f"models.student={tiny_world / 'student'}", f"models.teacher={tiny_world / 'teacher'}"]
    args = ["configs/demo.yaml", *models, f"data.train_path={data}", f"data.eval_path={data}", *free_port_override()]
    run_dir = tmp_path / "run"
    # What a crashed run leaves: its config and one complete checkpoint.
    import yaml

    from orchestrator.config import load_config

    saved = load_config(ROOT / args[0], [*args[1:], f"output_dir={run_dir}"]).model_dump(mode="json")
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    state = checkpoints.RunState(stage="distill", stage_step=2, stage_done=False, learner_steps=2)
    checkpoints.write(run_dir, state, lambda directory: None, keep_last=2)
    result = dudi("train", *args, f"output_dir={run_dir}", "seed=7", "--resume")
    assert "differs" in (line := one_line_error(result)) and "seed" in line


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from orchestrator.tiny_world.build import TinyWorldSpec, build

    out = tmp_path_factory.mktemp("world")
    build(out, TinyWorldSpec(train_per_language=8, eval_per_language=2, teacher_steps=1), progress=lambda *_: None)
    return out


def _interrupt_when(command: list[str], ready: str, timeout_s: float = 240) -> tuple[int, str]:
    """Runs a `dudi` command in its own process group, started with SIGINT ignored (as a shell starts a background
    job, what the issue's report did), sends the group SIGINT (Ctrl-C) once `ready` is printed; returns the exit
    code and the output, after checking that nothing of the group is left (no raylet, no actor)."""
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    output: list[str] = []
    try:
        deadline = time.time() + timeout_s
        for line in process.stdout:
            output.append(line)
            if ready in line or time.time() > deadline:
                break
        assert process.poll() is None, "".join(output[-20:])
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=30)
        output.append(process.stdout.read())
        time.sleep(2)
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)
        return code, "".join(output)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.e2e
def test_ctrl_c_stops_the_teacher_server_and_its_ray(tiny_world):
    command = ["teacher", "serve", "configs/demo.yaml", f"models.teacher={tiny_world / 'teacher'}"]
    command += [*free_port_override(), "ray.num_cpus=1"]
    code, _ = _interrupt_when(command, "serving on")
    assert code == 0


@pytest.mark.e2e
def test_ctrl_c_stops_a_training_run_within_seconds(tmp_path, tiny_world):
    data = tiny_world / "data" / "train.jsonl"
    command = ["train", "configs/demo.yaml", f"models.student={tiny_world / 'student'}"]
    command += [f"models.teacher={tiny_world / 'teacher'}", f"data.train_path={data}", f"data.eval_path={data}"]
    command += [f"output_dir={tmp_path / 'run'}", "cold_start.steps=10000", "cold_start.batch_size=4"]
    command += ["eval.compare_teacher=false", "eval.at_end_of_stages=false", *free_port_override()]
    # A cold start alone starts no vLLM engine: the interrupt lands in the same training loop ~20 s sooner.
    command += ["distill.enabled=false"]
    code, output = _interrupt_when(command, "ready after (s)")
    assert code == 130 and "dudi: interrupted; stopping" in output
