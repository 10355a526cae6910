"""``python -m skialith_langgraph.cli``: the ``skialith`` command."""

from . import main

raise SystemExit(main())
