"""``python -m adapters.alphax.sim``: the AlphaX simulator (as ``junction sim alphax``)."""

from adapters.alphax.sim import main

raise SystemExit(main())
