"""A built wheel (what `pip install git+...` installs, not the editable install the README uses)
carries what the library reads at run time: the tagger's prompts and the packaged resources."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_finds_prompts_and_resources(tmp_path):
    source = tmp_path / "src"  # a copy, so the build's build/ and egg-info stay out of the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "build", "tests",
                                                                "benchmarks", "curate-demo", "out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("curate-*.whl")
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    py = env / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the wheel's dependencies come from this interpreter's environment (a plain path, so its own
    # editable install of curate is not picked up)
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    probe = ("import curate, curate.tagging.prompts as p\n"
             "print(curate.__file__)\nprint(p.default_prompt_dir())\n"
             "print(sorted(p.load_prompts(['difficulty_math']).keys()))\n"
             "from curate.report.sections import DEFAULT_TOKENIZER\nprint(DEFAULT_TOKENIZER.is_dir())\n")
    out = subprocess.run([str(py), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path).stdout.split("\n")
    assert out[0].startswith(str(env)) and not out[0].startswith(str(ROOT))  # the installed copy, not the source
    assert out[1] == str(env / "share" / "curate" / "prompts")
    assert out[2] == "['difficulty_math']" and out[3] == "True"
