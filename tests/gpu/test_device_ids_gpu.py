"""On the GPU machine: `--device-ids` naming a GPU past the machine's last one is refused at start-up in one
line that says how many there are (issue #22's "more GPUs asked for than exist")."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU machine)")]


def test_more_gpus_than_the_machine_has_are_refused_in_one_line(tmp_path):
    count = torch.cuda.device_count()
    finished = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--skip-install", "--nowebui", "--port", str(free_port()),
                               "--data-dir", str(tmp_path), "--device-ids", f"0,{count}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 1
    assert (f"launch.py: error: --device-ids asks for GPU {count}, but this machine has {count} "
            f"(numbered 0 to {count - 1})") in finished.stderr
    assert "Traceback" not in finished.stderr + finished.stdout
