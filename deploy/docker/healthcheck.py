#!/usr/bin/env python3
"""Container health check: exit 0 when an HTTP endpoint answers 200, 1 otherwise.

The image serves two commands; each checks its own endpoint:
  unirec serve  ->  http://127.0.0.1:$UNIREC_SERVE_PORT/healthz   (the default)
  unirec train  ->  http://127.0.0.1:$UNIREC_TRAINER_METRICS_PORT/metrics   (pass `train`)
A URL argument overrides both. Standard library only, so it costs nothing at start-up.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def target(argv: list[str]) -> str:
    arg = argv[1] if len(argv) > 1 else "serve"
    if arg.startswith("http://") or arg.startswith("https://"):
        return arg
    if arg == "train":
        return f"http://127.0.0.1:{os.environ.get('UNIREC_TRAINER_METRICS_PORT', '9400')}/metrics"
    if arg == "serve":
        return f"http://127.0.0.1:{os.environ.get('UNIREC_SERVE_PORT', '8000')}/healthz"
    raise SystemExit(f"healthcheck: argument {arg!r} is not serve, train or an http(s) URL")


def main() -> int:
    url = target(sys.argv)
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (loopback URL built above)
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
