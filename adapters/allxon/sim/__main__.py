"""``python -m adapters.allxon.sim``: the Allxon simulator (as ``junction sim allxon``)."""

from adapters.allxon.sim import main

raise SystemExit(main())
