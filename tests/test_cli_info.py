import json

from typer.testing import CliRunner

import seqmamba
from seqmamba.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"seqmamba {seqmamba.__version__}"


def test_info_json_reports_kernel_path(monkeypatch):
    monkeypatch.setenv("SEQMAMBA_KERNELS", "torch")
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["kernels_path"] == "torch"
    assert facts["kernels_mode"] == "torch"
    assert facts["torch"]


def test_bad_kernel_mode_is_an_error(monkeypatch):
    monkeypatch.setenv("SEQMAMBA_KERNELS", "cuda-please")
    result = runner.invoke(app, ["info"])
    assert result.exit_code != 0
