"""``python -m adapters.placeos.sim``: the PlaceOS simulator (as ``junction sim placeos``)."""

from adapters.placeos.sim import main

raise SystemExit(main())
