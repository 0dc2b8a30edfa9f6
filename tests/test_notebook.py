import sys

import nbformat

from pvlake.notebook import main


def make_notebook(path, source: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("value = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(source),
    ]
    nb.metadata["kernelspec"] = {"name": "pvlake", "display_name": "Python (pvlake)", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_runs_in_the_project_kernel_with_parameters(tmp_path):
    src = make_notebook(tmp_path / "nb.ipynb", "import sys\nprint(sys.prefix, value * 2)")
    out = tmp_path / "out" / "nb.ipynb"
    assert main([str(src), str(out), "--params", '{"value": 21}', "--log", str(tmp_path / "nb.log")]) == 0
    executed = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert f"{sys.prefix} 42" in text
    assert executed.metadata.kernelspec.name == "pvlake"
    assert "42" in (tmp_path / "nb.log").read_text()


def test_failure_prints_one_line_and_keeps_the_notebook(tmp_path, capsys):
    src = make_notebook(tmp_path / "nb.ipynb", "raise ValueError('dataset x: broken')")
    out = tmp_path / "nb.out.ipynb"
    assert main([str(src), str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ValueError: dataset x: broken (executed notebook: {out})"]
    executed = nbformat.read(out, as_version=4)
    assert any(o.output_type == "error" for o in executed.cells[-1].outputs)
