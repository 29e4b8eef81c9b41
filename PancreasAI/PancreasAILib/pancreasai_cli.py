"""The `pancreasai` command: tools that work on results folders.

    pancreasai review RESULTS_DIR [--host 127.0.0.1] [--port 0] [--token T] [--reviewer NAME] [--no-browser]
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from .errors import PancreasAIError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pancreasai", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    review = commands.add_parser(
        "review", help="review a results folder in the browser and record verdicts in its review.csv",
        description="Start a local web page showing the folder's cases (slice views, the model's result) "
                    "and record each reviewer's verdict in RESULTS_DIR/review.csv.")
    review.add_argument("results_dir", metavar="RESULTS_DIR", help="the folder pancreas-seg / ipmn-risk wrote")
    review.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; any other needs a token)")
    review.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free one)")
    review.add_argument("--token", help="access token the browser must present (default: generated when "
                                        "--host is not a loopback address)")
    review.add_argument("--reviewer", help="your name as it goes into review.csv (else asked in the page)")
    review.add_argument("--no-browser", action="store_true", help="do not open a browser")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "review":
            from .review_web import main_review

            return main_review(args)
    except PancreasAIError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
