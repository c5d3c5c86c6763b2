"""The command line's help and global options: every flag documented, --version, --threads anywhere."""
import argparse
import subprocess
import sys

import pytest
import torch

import twoway_fast
from twoway_fast import cli


def every_parser(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from every_parser(sub)


def test_every_option_has_help_text():
    parsers = list(every_parser(cli.parser()))
    assert {p.prog.split()[-1] for p in parsers} >= {"train", "eval", "embed", "cca", "demo"}
    for p in parsers:
        for action in p._actions:
            assert action.help and action.help.strip(), f"{p.prog}: {action.option_strings or action.dest} has no help"


def test_help_shows_the_defaults():
    text = next(p for p in every_parser(cli.parser()) if p.prog.endswith("cca")).format_help()
    assert "(default: 50)" in text and "(default: test)" in text and "(default: mnist)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"twoway-fast {twoway_fast.__version__}"


@pytest.mark.parametrize("argv", [["--threads", "3", "cca", "--data", "digits"],
                                  ["cca", "--data", "digits", "--threads", "3"]])
def test_threads_before_or_after_the_command(argv):
    assert cli.parser().parse_args(argv).threads == 3


def test_threads_default_is_torchs_choice():
    assert cli.parser().parse_args(["cca", "--data", "digits"]).threads is None


def test_threads_after_the_command_is_applied(capsys):
    before = torch.get_num_threads()
    try:
        assert cli.main(["cca", "--data", "digits", "--dims", "4", "--json", "--device", "cpu", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_device_auto_is_resolved():
    args = cli.parser().parse_args(["cca", "--data", "digits"])
    assert args.device == "auto"
    assert cli.default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_help_does_not_import_the_training_stack():
    """`--help` parses without importing the pipeline (matplotlib, scikit-learn, the trainer)."""
    code = ("import sys\nfrom twoway_fast import cli\ntry:\n    cli.main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('twoway_fast.pipeline', 'twoway_fast.train', 'matplotlib', 'sklearn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
