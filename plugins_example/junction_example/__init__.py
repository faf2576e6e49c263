"""Example Junction plugin: transforms registered through the ``junction.plugins`` entry point.

``placeos_to_allxon_event``    PlaceOS status_change -> Allxon event
``placeos_to_alphax_channel``  PlaceOS status_change -> AlphaX channel_write (per-site map)
``threshold_alert``            value over a threshold -> Allxon alert trigger / resolve,
                               threshold updatable from an Allxon config_update

Junction finds this package through the entry point declared in ``pyproject.toml``
(``example = "junction_example.plugin"``); nothing in Junction imports it by name.
"""

__version__ = "0.1.0"
