"""The `twoway-fast` command line."""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="twoway-fast", description="2-Way Nets, fast.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train on the embedded digits halves and print the test correlation")
    demo.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        demo_main(epochs=args.epochs)
