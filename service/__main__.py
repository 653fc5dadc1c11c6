"""`python -m service ...`, and the `roomwarden` command an install makes (pyproject.toml)."""


# The commands whose counters /metrics shows (the worker's); the others (check, test, schema, ...)
# write no metrics files where they are run, such as a rules repository under pre-commit.
SERVING = ("worker",)


def run() -> None:
    import os
    import sys

    from . import promdir

    # A directory the environment names is made whatever the command (prometheus_client writes
    # there as soon as it counts); the default one only for a process whose counters are served.
    if os.environ.get(promdir.ENV) or any(arg in SERVING for arg in sys.argv[1:2]):
        promdir.ensure()  # before prometheus_client is imported: see promdir.py

    from .cli import main

    raise SystemExit(main())


if __name__ == "__main__":
    run()
