"""``python -m spanlib``: the batch verbs."""

from spanlib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
