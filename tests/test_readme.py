import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_is_short():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    assert len(code.strip().splitlines()) <= 15
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["result"].x.shape == (1000, 8) and scope["result"].nfe == 23
