"""``threshold_alert``: trigger an Allxon alarm when a value goes over a threshold,
resolve it when the value is back under, and take new thresholds from the Portal.

A stateful transform.  For each subject it remembers whether the alarm is active:

- a value **above** ``threshold`` while inactive  -> ``alert`` with ``action = "trigger"``
- a value **below** ``threshold - hysteresis`` while active -> ``action = "resolve"``
- anything else -> None (the router counts it as ``filtered``)

The hysteresis band keeps a value that hovers at the threshold from flapping the alarm.
The alert's ``message`` is a template with ``{subject}``, ``{value}``, ``{threshold}``,
``{action}``, ``{module}`` and ``{alarm}`` (format specs work: ``{value:.1f}``).

New thresholds: with options ``config`` (an Allxon config card name) and ``param`` (its
parameter holding the threshold), a ``config_update`` envelope for ``config_module``
(default: ``module``) that carries that parameter replaces the threshold (a number, or
a string holding one, as the Portal sends it) and returns None.  The change is logged;
the next sample is judged against the new threshold (nothing is re-sent at once).
An unreadable threshold raises, so the router dead-letters that update with the reason
and the old threshold stays.

**One route, one state.**  Junction builds a route's transforms once, when the
configuration loads, and each route gets its own instance.  So the config updates must
flow through the SAME route as the values::

    [[routes]]
    name = "room-too-hot"
    from = ["placeos", "allxon"]
    kind = ["status_change", "config_update"]
    to = "allxon"
    [[routes.transforms]]
    name = "threshold_alert"
    options = { module = "room-101", alarm = "too_hot", above = 26.0, hysteresis = 0.5,
                message = "{subject} at {value:.1f} C (limit {threshold:g})",
                config = "thresholds", param = "too_hot_above" }

A second route naming ``threshold_alert`` would have its own threshold and never see
the first one's updates.  State lives in memory: after a restart the first sample
above the threshold triggers again, and an alarm active before the restart is not
resolved by this transform.

Threads: transforms run in the router, one envelope at a time on one thread, so the
state needs no lock (and the transform must not block).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import msgspec

from broker import Alert, ConfigUpdate, Envelope, Metric, StatusChange, Transform, TransformFn
from junction_example._options import Options, as_float

NAME = "threshold_alert"
OPTIONS = (
    "module",
    "alarm",
    "above",
    "hysteresis",
    "message",
    "config",
    "param",
    "config_module",
)
PLACEHOLDERS = ("subject", "value", "threshold", "action", "module", "alarm")
DEFAULT_MESSAGE = "{subject} at {value:.1f}"

log = logging.getLogger(__name__)


def _check_message(message: str) -> None:
    """Render the template once with sample values so a bad one fails at load time."""
    sample: dict[str, Any] = dict.fromkeys(PLACEHOLDERS, "x")
    sample.update(value=0.0, threshold=0.0)
    try:
        message.format(**sample)
    except KeyError as err:
        raise ValueError(
            f"option 'message' uses unknown placeholder {{{err.args[0]}}}; "
            f"available: {', '.join(PLACEHOLDERS)}"
        ) from err
    except (ValueError, IndexError) as err:
        raise ValueError(f"option 'message' is not a valid template ({message!r}): {err}") from err


def parse_threshold(value: Any) -> float | None:
    """A threshold from a Portal config value: a number or a string holding one."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    return as_float(value)


class ThresholdAlert:
    """The transform for one route: call it with each envelope (see the module doc)."""

    def __init__(self, options: dict[str, Any]) -> None:
        opts = Options(options, OPTIONS)
        self.module = opts.text("module")
        self.alarm = opts.text("alarm")
        self.threshold = opts.number("above")
        self.hysteresis = opts.number("hysteresis", 0.5, minimum=0.0)
        self.message = opts.text("message", DEFAULT_MESSAGE)
        _check_message(self.message)
        if opts.has("config") != opts.has("param"):
            raise ValueError("options 'config' and 'param' go together: set both or neither")
        self.config = opts.text("config") if opts.has("config") else None
        self.param = opts.text("param") if opts.has("param") else None
        self.config_module = opts.text("config_module", self.module)
        if opts.has("config_module") and self.config is None:
            raise ValueError("option 'config_module' needs 'config' and 'param'")
        self.active: set[str] = set()
        """Subjects whose alarm is triggered and not yet resolved."""

    def __call__(self, env: Envelope) -> Envelope | None:
        body = env.body
        if isinstance(body, ConfigUpdate):
            self._configure(body)
            return None
        if not isinstance(body, StatusChange | Metric):
            raise ValueError(
                f"{NAME} takes status_change, metric and config_update envelopes, got {env.kind}"
            )
        if body.value is None:  # a deleted PlaceOS status: nothing to judge
            return None
        value = as_float(body.value)
        if value is None:
            raise ValueError(f"{env.subject}: value {body.value!r} is not a number to compare")
        if env.subject not in self.active:
            if value > self.threshold:
                self.active.add(env.subject)
                return self._alert(env, "trigger", value)
        elif value < self.threshold - self.hysteresis:
            self.active.discard(env.subject)
            return self._alert(env, "resolve", value)
        return None

    def _alert(
        self, env: Envelope, action: Literal["trigger", "resolve"], value: float
    ) -> Envelope:
        message = self.message.format(
            subject=env.subject,
            value=value,
            threshold=self.threshold,
            action=action,
            module=self.module,
            alarm=self.alarm,
        )
        alert = Alert(
            module=self.module, alarm=self.alarm, action=action, message=message, time=env.ts
        )
        return msgspec.structs.replace(env, subject=f"{self.module}/{self.alarm}", body=alert)

    def _configure(self, update: ConfigUpdate) -> None:
        if self.config is None or self.param is None:
            raise ValueError(
                f"{NAME} for {self.module}/{self.alarm} got a config_update but has no "
                "'config' and 'param' options to read a threshold from"
            )
        if update.module != self.config_module:
            return
        for setting in update.configs:
            if setting.name != self.config or self.param not in setting.params:
                continue
            raw = setting.params[self.param]
            new = parse_threshold(raw)
            if new is None:
                where = f"{self.config_module}/{self.config}.{self.param}"
                raise ValueError(
                    f"config {where} = {raw!r} is not a number; the threshold of "
                    f"{self.module}/{self.alarm} stays {self.threshold:g}"
                )
            if new != self.threshold:
                log.info(
                    "%s %s/%s: threshold %g -> %g (Allxon config %s/%s.%s)",
                    NAME,
                    self.module,
                    self.alarm,
                    self.threshold,
                    new,
                    self.config_module,
                    self.config,
                    self.param,
                )
                self.threshold = new


def make(options: dict[str, Any]) -> TransformFn:
    """Build the transform for one route from its options (ValueError if they are wrong)."""
    return ThresholdAlert(options)


TRANSFORM = Transform(
    NAME,
    make,
    "alert trigger/resolve when a value crosses a threshold (with hysteresis); "
    "the threshold can come from an Allxon config_update",
)
