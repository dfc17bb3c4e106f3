"""Installing on a machine that already has its own (CUDA) torch leaves that torch in place.

Clusters provide torch in the site's Python; `python -m venv --system-site-packages` then
`pip install` of this package must not replace it (pyproject asks for `torch>=2.4`, which the site's
torch satisfies). Simulated offline: a fresh venv whose "site" packages are the test
environment's (a .pth file), the package installed from a wheel with `--no-index` (so nothing can
be fetched), then the torch it imports is checked to be the site's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pip_install_keeps_the_sites_torch(tmp_path):
    src, wheels = tmp_path / "src", tmp_path / "wheels"  # build from a copy: setuptools writes build/ beside the source
    shutil.copytree(ROOT / "lightning_infdiff", src / "lightning_infdiff", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "site_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # the site's packages
    for own in ("setuptools", "_distutils_hack"):  # the venv's bundled copies would shadow the site's
        shutil.rmtree(site / own, ignore_errors=True)
    for info in site.glob("setuptools-*.dist-info"):
        shutil.rmtree(info)
    (site / "distutils-precedence.pth").unlink(missing_ok=True)
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-index", "-q", *map(str, wheels.glob("*.whl"))],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    probe = subprocess.run([str(py), "-c", "import torch, lightning_infdiff; print(torch.__file__); "
                            "print(torch.__version__); print(lightning_infdiff.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert probe[0] == torch.__file__ and probe[1] == torch.__version__  # the site's torch, untouched
    assert probe[2].startswith(str(site))  # the package itself went into the new venv
    assert (venv / "bin" / "infdiff").is_file()
