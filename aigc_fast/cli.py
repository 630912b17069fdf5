"""The aigc-fast command."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="aigc-fast", description="Fused GAN/VAE kernels for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, compiled backends, and which implementation each op uses")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)

    import aigc_fast

    if args.command == "info":
        if args.json:
            print(json.dumps(aigc_fast.info(print_report=False), indent=2))
        else:
            aigc_fast.info()
    return 0


if __name__ == "__main__":
    sys.exit(main())
