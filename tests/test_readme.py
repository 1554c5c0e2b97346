"""The README's Python examples run as written (they are the API's first documentation)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["est"].fits and namespace["est"].memory.stage == 0


def _guide_commands() -> list[str]:
    text = README.read_text()
    guide = text[text.index("## User's guide"):text.index("## Python API")]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", guide, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("plan ") and not line.startswith("plan serve ") and line != "plan serve":
                commands.append(line)  # `plan serve` starts a server (tests/test_http_api.py runs one)
    return commands


def test_readme_user_guide_commands_run_as_written(tmp_path, monkeypatch):
    """Every `plan` command of the user's guide, typed as written, gives an answer: exit 0, or 1 where the
    guide shows an infeasible request or a failing validation — never bad input or an internal error."""
    import shlex

    from click.testing import CliRunner

    from parallelplan.cli.main import plan

    monkeypatch.chdir(tmp_path)
    commands = _guide_commands()
    assert len(commands) >= 15
    for command in commands:
        result = CliRunner().invoke(plan, shlex.split(command)[1:])
        assert result.exit_code in (0, 1), f"{command}\n{result.output}"
        assert result.stdout.strip(), command
