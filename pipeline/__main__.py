"""``python -m pipeline ...`` is the same as the ``wnsweep`` command."""

from pipeline.cli import main

raise SystemExit(main())
