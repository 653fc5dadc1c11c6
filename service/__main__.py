from . import promdir

promdir.ensure()  # before prometheus_client is imported: see promdir.py

from .cli import main  # noqa: E402

raise SystemExit(main())
