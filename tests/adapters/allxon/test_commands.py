"""Commands and settings (pure): which commands are accepted, what a reply means for the
ack, acks kept under 2 KB, the command desk's sequence, alarm and config updates."""

from __future__ import annotations

import logging
from typing import Any

from adapters.allxon._acks import ack_message, outcome_of
from adapters.allxon._commands import PORTAL_COMMAND_LIMIT_S, CommandDesk
from adapters.allxon._declared import AlarmView, Declared, check_command, config_bodies
from adapters.allxon._stats import AllxonStats
from adapters.allxon.cards import AlarmCard, CardParam, CommandCard, ConfigCard, Module, StateCard
from adapters.allxon.codec import (
    AlarmModuleSettings,
    AlarmSetting,
    AlarmUpdateParams,
    CommandInvocation,
    CommandParams,
    ConfigModuleSettings,
    ConfigSetting,
    ConfigUpdateParams,
    NamedValue,
    signed_size,
)
from broker._envelope import CommandRequest, CommandResult, Envelope, ExecResult

GUID = "5b45b555-94f3-4a20-b78b-1f3288f9904b"
DECLARED = Declared(
    [
        Module(
            module_name="room",
            states=[StateCard(name="mode", display_type="string")],
            commands=[
                CommandCard(
                    name="reboot",
                    params=[
                        CardParam(name="delay", display_type="string", required=True),
                        CardParam(
                            name="how",
                            display_type="list",
                            display_values=["soft", "hard"],
                            default_value="soft",
                        ),
                    ],
                )
            ],
            alarms=[AlarmCard(name="hot")],
            configs=[ConfigCard(name="schedule")],
        )
    ]
)


def command(name: str, module: str = "room", **params: Any) -> CommandParams:
    return CommandParams(
        app_guid=GUID,
        epoch="1700000000",
        command_id=f"id-{name}",
        module_name=module,
        commands=[
            CommandInvocation(
                name=name, params=[NamedValue(name=k, value=v) for k, v in params.items()]
            )
        ],
    )


def test_check_command_accepts_declared_commands_and_fills_defaults() -> None:
    check = check_command(DECLARED, command("reboot", delay="5", extra="x"))
    assert check.request == CommandRequest(
        module="room",
        command="reboot",
        command_id="id-reboot",
        params={"delay": "5", "how": "soft"},
    )
    assert check.ignored == ["extra"]


def test_check_command_rejects_with_a_reason() -> None:
    cases = {
        "not declared in module 'room' (declared: reboot)": command("wipe"),
        "module 'hall' is not declared": command("reboot", module="hall", delay="1"),
        "missing required parameter(s) of 'reboot': delay": command("reboot", delay=""),
        "'warm', not one of ['soft', 'hard']": command("reboot", delay="1", how="warm"),
    }
    for reason, params in cases.items():
        check = check_command(DECLARED, params)
        assert check.request is None and reason in check.reason, reason
    two = CommandParams(
        app_guid=GUID,
        epoch="1",
        command_id="x",
        module_name="room",
        commands=[CommandInvocation(name="reboot"), CommandInvocation(name="reboot")],
    )
    assert "exactly one command" in check_command(DECLARED, two).reason


def test_outcomes_of_command_and_exec_results() -> None:
    ok = outcome_of(CommandResult(ok=True, result={"n": 3, "ok": True}, states={"mode": "x"}))
    assert (ok.state, ok.result, ok.states) == ("ACKED", {"n": "3", "ok": "true"}, {"mode": "x"})
    assert outcome_of(CommandResult(ok=True)).result == {"response": "done"}
    timeout = outcome_of(CommandResult(ok=False, message="no reply within the deadline"))
    assert timeout.state == "ERRORED" and "no reply" in timeout.result["response"]
    assert outcome_of(ExecResult(ok=True, value={"a": [1]})).result == {"a": "[1]"}
    assert outcome_of(ExecResult(ok=True, value=7)).result == {"response": "7"}
    failed = outcome_of(ExecResult(ok=False, error="request_failed", message="lamp"))
    assert (failed.state, failed.result) == ("ERRORED", {"response": "request_failed: lamp"})


def test_an_ack_too_large_for_one_message_is_shrunk_with_a_note() -> None:
    big = {f"k{i}": "v" * 100 for i in range(30)}
    message, note = ack_message(GUID, command("reboot"), "reboot", "ACKED", big, 1.7e9)
    assert signed_size(message) <= 2048 and "too large" in note
    assert "too large" in message.params.command_acks[0].result["response"]
    small, none = ack_message(GUID, command("reboot"), "reboot", "ACKED", {"a": "b"}, 1.7e9)
    assert none == "" and small.params.command_id == "id-reboot"


def desk(routes: list[str]) -> tuple[CommandDesk, AllxonStats]:
    stats = AllxonStats()
    log = logging.getLogger("test.allxon.desk")
    return CommandDesk("allxon", GUID, DECLARED, 5.0, lambda env: routes, stats, log), stats


def test_the_desk_accepts_then_acks_the_reply_with_its_states() -> None:
    box, stats = desk(["commands"])
    env = box.receive(command("reboot", delay="1"), now=100.0)
    assert env is not None and env.correlation_id in box.pending
    ack = box.next_ack(100.0)
    assert ack is not None and ack.params.command_state == "ACCEPTED"
    box.sent()
    reply = Envelope(
        source="r",
        correlation_id=env.correlation_id,
        body=CommandResult(ok=True, result={"r": 1}, states={"mode": "on", "ghost": 1}),
    )
    box.reply(reply, now=101.0)
    ack = box.next_ack(101.0)
    assert ack is not None and ack.params.command_state == "ACKED"
    assert [s.name for s in ack.params.states or []] == ["mode"]  # undeclared left out
    box.sent()
    box.reply(reply, now=102.0)  # a second reply: nothing pending any more
    assert stats.late_replies == 1 and box.next_ack(102.0) is None


def test_the_desk_rejects_without_a_route_and_errors_after_the_deadline() -> None:
    box, stats = desk([])
    assert box.receive(command("reboot", delay="1"), now=0.0) is None
    ack = box.next_ack(0.0)
    assert ack is not None and ack.params.command_state == "REJECTED"
    assert "no route" in ack.params.command_acks[0].result["response"]
    box.sent()
    box.routes_for = lambda env: ["commands"]
    assert box.receive(command("reboot", delay="1"), now=0.0) is not None
    box.sent()  # the ACCEPTED
    assert box.expire(5.5) == 0  # a second after the envelope's deadline, not before
    assert box.expire(6.0) == 1
    ack = box.next_ack(6.0)
    assert ack is not None and ack.params.command_state == "ERRORED"
    assert stats.commands["timed_out"] == 1


def test_acks_older_than_the_portal_limit_are_dropped() -> None:
    box, stats = desk(["commands"])
    box.receive(command("reboot", delay="1"), now=0.0)
    assert box.next_ack(PORTAL_COMMAND_LIMIT_S + 1) is None
    assert stats.acks_expired == 1


def test_alarm_view_follows_the_latest_update_and_ignores_undeclared_names() -> None:
    view = AlarmView()
    update = AlarmUpdateParams(
        app_guid=GUID,
        epoch="1",
        modules=[
            AlarmModuleSettings(
                module_name="room",
                alarms=[
                    AlarmSetting(name="hot", enabled=True, params=[NamedValue(name="t", value=3)]),
                    AlarmSetting(name="ghost", enabled=True),
                ],
            ),
            AlarmModuleSettings(module_name="hall"),
        ],
    )
    bodies, ignored = view.apply(update, DECLARED)
    assert view.is_enabled("room", "hot") and not view.is_enabled("room", "ghost")
    assert [(b.module, [(a.name, a.params) for a in b.alarms]) for b in bodies] == [
        ("room", [("hot", {"t": 3})])
    ]
    assert ignored == ["alarm room/ghost", "module 'hall'"]
    bodies, _ = view.apply(AlarmUpdateParams(app_guid=GUID, epoch="2"), DECLARED)
    assert not view.enabled and [(b.module, b.alarms) for b in bodies] == [("room", [])]


def test_config_bodies_carry_declared_configs_only() -> None:
    update = ConfigUpdateParams(
        app_guid=GUID,
        epoch="1",
        modules=[
            ConfigModuleSettings(
                module_name="room",
                configs=[
                    ConfigSetting(name="schedule", params=[NamedValue(name="at", value="8")]),
                    ConfigSetting(name="other"),
                ],
            )
        ],
    )
    bodies, ignored = config_bodies(update, DECLARED)
    assert [(c.name, c.params) for c in bodies[0].configs] == [("schedule", {"at": "8"})]
    assert ignored == ["config room/other"]
