"""`python -m service ...`, and the `roomwarden` command an install makes (pyproject.toml)."""


def run() -> None:
    from . import promdir

    promdir.ensure()  # before prometheus_client is imported: see promdir.py

    from .cli import main

    raise SystemExit(main())


if __name__ == "__main__":
    run()
