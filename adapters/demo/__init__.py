"""The demo bundle: ``junction demo`` (the three simulators, ``routes/demo.toml`` and a live
view) and ``junction sim PEER``, added to the CLI by :mod:`adapters.demo.plugin`."""
