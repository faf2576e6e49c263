"""Allxon Octo codec: round trips of every method, error frames, sizes, card validation."""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.allxon.cards import validate_update
from adapters.allxon.codec import (
    MAX_FRAME_BYTES,
    SIGNATURE_OVERHEAD,
    AgentError,
    AgentErrorFrame,
    AlarmCard,
    AlarmModuleSettings,
    AlarmSetting,
    AlarmUpdateParams,
    AlertItem,
    AlertParams,
    CardParam,
    CodecError,
    CommandAckItem,
    CommandAckParams,
    CommandCard,
    CommandInvocation,
    CommandParams,
    ConfigCard,
    ConfigModuleSettings,
    ConfigSetting,
    ConfigUpdateParams,
    CredentialError,
    EventCard,
    EventItem,
    EventParams,
    FrameTooLargeError,
    InvalidParamsError,
    MalformedFrameError,
    MetricCard,
    MetricItem,
    MetricParams,
    Module,
    NamedValue,
    OctoMessage,
    PluginAlarmUpdate,
    PluginAlert,
    PluginCommand,
    PluginCommandAck,
    PluginConfigUpdate,
    PluginCredential,
    PluginEvent,
    PluginMetric,
    PluginState,
    PluginUpdate,
    PropertyCard,
    StateCard,
    StateItem,
    StateParams,
    UnknownMethodError,
    UpdateParams,
    decode_credential,
    decode_frame,
    encode_message,
    encoded_size,
    error_frame,
    fits_frame,
    pack_items,
    signed_size,
)
from adapters.allxon.signing import sign_frame

GUID = "a8e873a1-e5df-43a2-928a-745ff9c94dfb"


def full_module() -> Module:
    return Module(
        module_name="room-1",
        display_name="Room 1",
        description="Meeting room",
        properties=[
            PropertyCard(name="model", display_type="string", value="X-100"),
            PropertyCard(name="ports", display_type="table", value=[{"port": "1", "speed": "1G"}]),
            PropertyCard(
                name="manual", display_type="link", value={"url": "https://x", "alias": "doc"}
            ),
        ],
        states=[StateCard(name="power", display_type="string", display_category="Power")],
        metrics=[
            MetricCard(name="temp", display_type="temperature"),
            MetricCard(name="people", display_type="custom", display_unit="persons"),
        ],
        events=[EventCard(name="door", display_name="Door")],
        commands=[
            CommandCard(
                name="say_hello",
                display_category="Action",
                params=[
                    CardParam(
                        name="person", display_type="string", required=True, default_value="Buzz"
                    ),
                    CardParam(name="when", display_type="datetime", display_format="HH:MM"),
                    CardParam(name="loud", display_type="switch", display_values=[False, True]),
                    CardParam(name="lang", display_type="list", display_values=["en", "fr"]),
                    CardParam(name="agree", display_type="tos"),
                ],
            )
        ],
        alarms=[
            AlarmCard(
                name="overheat",
                params=[CardParam(name="limit", display_type="temperature", required=True)],
            )
        ],
        configs=[
            ConfigCard(
                name="schedule",
                params=[CardParam(name="on", display_type="datetime", display_format="YYYY-MM-DD")],
            )
        ],
    )


def full_update() -> UpdateParams:
    return UpdateParams(
        app_guid=GUID,
        app_name="junction",
        epoch="1664185099",
        type="ib",
        sdk="3.4.2",
        version="1.2.3",
        display_name="Junction",
        modules=[full_module()],
    )


ALL_MESSAGES: list[OctoMessage] = [
    PluginUpdate(params=full_update()),
    PluginCommand(
        params=CommandParams(
            app_guid=GUID,
            epoch="1664185099",
            command_id="d0a0af987c17da435b2bc44dfbee8ffe90104f4f",
            module_name="room-1",
            commands=[
                CommandInvocation(
                    name="say_hello",
                    params=[
                        NamedValue(name="person", value="Buzz"),
                        NamedValue(name="agree", value=True),
                    ],
                )
            ],
            serial_number="SN1",
        )
    ),
    PluginCommandAck(
        params=CommandAckParams(
            app_guid=GUID,
            epoch="1664250407",
            command_id="c96a",
            module_name="room-1",
            command_state="ACKED",
            command_acks=[CommandAckItem(name="say_hello", result={"response": "Hello Buzz"})],
            states=[StateItem(name="power", value="on", time="1664250407")],
        )
    ),
    PluginState(
        params=StateParams(
            app_guid=GUID,
            module_name="room-1",
            epoch="1",
            states=[
                StateItem(name="power", value="on"),
                StateItem(name="table", value=[{"a": "1"}], time="2"),
                StateItem(name="link", value={"url": "https://x", "alias": "x"}),
            ],
        )
    ),
    PluginMetric(
        params=MetricParams(
            app_guid=GUID,
            module_name="room-1",
            epoch="1",
            metrics=[MetricItem(name="temp", value="293.15", time="1")],
        )
    ),
    PluginEvent(
        params=EventParams(
            app_guid=GUID,
            module_name="room-1",
            epoch="1",
            events=[EventItem(name="door", value="open")],
        )
    ),
    PluginAlert(
        params=AlertParams(
            app_guid=GUID,
            module_name="room-1",
            epoch="1",
            alarms=[AlertItem(name="overheat", action="trigger", time="1", message="hot")],
        )
    ),
    PluginAlarmUpdate(
        params=AlarmUpdateParams(
            app_guid=GUID,
            epoch="1",
            version="7",
            modules=[
                AlarmModuleSettings(
                    module_name="room-1",
                    epoch="1",
                    alarms=[
                        AlarmSetting(
                            name="overheat",
                            enabled=True,
                            params=[NamedValue(name="limit", value="310")],
                        )
                    ],
                )
            ],
        )
    ),
    PluginConfigUpdate(
        params=ConfigUpdateParams(
            app_guid=GUID,
            epoch="1",
            modules=[
                ConfigModuleSettings(
                    module_name="room-1",
                    configs=[
                        ConfigSetting(name="schedule", params=[NamedValue(name="on", value="x")])
                    ],
                )
            ],
        )
    ),
]


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: m.method)
def test_every_method_round_trips(message: OctoMessage) -> None:
    text = encode_message(message)
    assert decode_frame(text) == message
    as_json = json.loads(text)
    assert as_json["jsonrpc"] == "2.0"
    assert as_json["method"] == message.method
    assert "null" not in text  # optional fields are left out, never null
    # The decoder also takes a signed method (verification is the caller's job, first).
    signed_like = text.replace(message.method, message.method + "?authorization=$x", 1)
    assert decode_frame(signed_like) == message


def test_module_arrays_are_empty_arrays_never_null() -> None:
    update = PluginUpdate(
        params=UpdateParams(
            app_guid=GUID,
            app_name="a",
            epoch="1",
            sdk="3.4.2",
            version="1.0.0",
            modules=[Module(module_name="m")],
        )
    )
    module = json.loads(encode_message(update))["params"]["modules"][0]
    for key in ("properties", "states", "metrics", "events", "commands", "alarms", "configs"):
        assert module[key] == []
    assert module == {"moduleName": "m", **{k: [] for k in module if k != "moduleName"}}


def test_the_vendors_command_examples_decode() -> None:
    # docs/protocols/allxon.md, "Commands and acks": the Commands page's four examples
    examples = json.loads((Path(__file__).parent / "vendor_command_examples.json").read_text())
    frames = examples["frames"]
    decoded = [decode_frame(f) for f in frames]
    assert [type(d) for d in decoded] == [
        PluginUpdate,
        PluginCommand,
        PluginCommandAck,
        PluginCommandAck,
    ]
    update, command, accepted, acked = decoded
    assert isinstance(update, PluginUpdate) and update.params.modules[0].states == []
    assert update.params.modules[0].commands[0].params[0].default_value == "Buzz"
    assert isinstance(command, PluginCommand)
    assert command.params.commands[0].params[0] == NamedValue(name="person", value="Buzz")
    assert command.params.command_id == "d0a0af987c17da435b2bc44dfbee8ffe90104f4f"
    assert isinstance(accepted, PluginCommandAck) and accepted.params.command_state == "ACCEPTED"
    assert isinstance(acked, PluginCommandAck) and acked.params.command_state == "ACKED"


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ('"-32000"', AgentError.DEVICE_OFFLINE),
        ('"-320000"', AgentError.DEVICE_OFFLINE),
        ('"-32600"', AgentError.INVALID_REQUEST),
        ('"-326000"', AgentError.INVALID_REQUEST),
        ('"-32700"', AgentError.PARSE_ERROR),
        ('"-327000"', AgentError.PARSE_ERROR),
        ("-32600", AgentError.INVALID_REQUEST),
        ("32700", AgentError.PARSE_ERROR),
        ('"-32601"', AgentError.UNKNOWN),
        ('"oops"', AgentError.UNKNOWN),
    ],
)
def test_error_frames(code: str, kind: AgentError) -> None:
    text = f'{{"jsonrpc":"2.0","error":{{"code":{code},"message":"m","extra":1}},"id":null}}'
    frame = decode_frame(text)
    assert isinstance(frame, AgentErrorFrame)
    assert frame.kind is kind
    assert frame.error.message == "m"


def test_error_frame_encodes_code_as_string_and_keeps_jsonrpc() -> None:
    text = encode_message(error_frame(AgentError.INVALID_REQUEST, "bad signature"))
    assert json.loads(text) == {
        "jsonrpc": "2.0",
        "error": {"code": "-32600", "message": "bad signature"},
        "id": None,
    }


def test_unknown_fields_are_tolerated() -> None:
    text = (
        '{"jsonrpc":"2.0","method":"v2/notifyPluginState","future":1,"params":{"appGUID":"g",'
        '"moduleName":"m","epoch":"1","new":{"x":[1]},"states":[{"name":"a","value":"b","q":2}]}}'
    )
    frame = decode_frame(text)
    assert isinstance(frame, PluginState)
    assert frame.params.states == [StateItem(name="a", value="b")]


def test_alarm_update_without_modules_means_all_disabled() -> None:
    for modules in ("", ',"modules":null', ',"modules":[]'):
        text = (
            '{"jsonrpc":"2.0","method":"v2/notifyPluginAlarmUpdate",'
            f'"params":{{"appGUID":"g","epoch":"1"{modules}}}}}'
        )
        frame = decode_frame(text)
        assert isinstance(frame, PluginAlarmUpdate)
        assert frame.params.module_settings() == []


@pytest.mark.parametrize(
    ("text", "error", "needle"),
    [
        ("not json", MalformedFrameError, "not JSON"),
        ('[{"jsonrpc":"2.0"}]', MalformedFrameError, "not a JSON-RPC object"),
        ('{"jsonrpc":"2.0"}', MalformedFrameError, "neither"),
        (
            '{"jsonrpc":"1.0","method":"v2/notifyPluginState","params":{}}',
            MalformedFrameError,
            "jsonrpc",
        ),
        (
            '{"jsonrpc":"2.0","method":"v2/notifyPluginNope","params":{}}',
            UnknownMethodError,
            "v2/notifyPluginNope",
        ),
        (
            '{"jsonrpc":"2.0","method":"v2/notifyPluginState"}',
            InvalidParamsError,
            "params' missing",
        ),
        (
            '{"jsonrpc":"2.0","method":"v2/notifyPluginState","params":{"appGUID":"g",'
            '"moduleName":"m","epoch":"1","states":[{"name":"a","value":3}]}}',
            InvalidParamsError,
            "$.params.states[0].value",
        ),
    ],
)
def test_malformed_frames_raise_named_errors(
    text: str, error: type[CodecError], needle: str
) -> None:
    with pytest.raises(error) as info:
        decode_frame(text)
    assert isinstance(info.value, CodecError) and isinstance(info.value, ValueError)
    assert needle in str(info.value)
    assert info.value.excerpt == text[:120] + ("..." if len(text) > 120 else "")


def test_excerpt_is_truncated() -> None:
    text = "x" * 500
    with pytest.raises(MalformedFrameError) as info:
        decode_frame(text)
    assert info.value.excerpt == "x" * 120 + "..."
    assert len(str(info.value)) < 300


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_decoder_only_raises_codec_errors(data: str | bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_frame(data)


def test_signature_overhead_matches_a_real_signature() -> None:
    message = ALL_MESSAGES[3]
    signed = sign_frame(encode_message(message), "k" * 32)
    assert SIGNATURE_OVERHEAD == 89
    assert len(signed.encode()) == signed_size(message) == encoded_size(message) + 89


def test_pack_items_splits_under_the_limit_and_keeps_order() -> None:
    states = [StateItem(name=f"s{i}", value="°" * (i % 40), time=str(i)) for i in range(200)]

    def build(chunk: list[StateItem]) -> PluginState:
        return PluginState(
            params=StateParams(app_guid=GUID, module_name="m", epoch="1", states=chunk)
        )

    frames = pack_items(states, build)
    assert len(frames) > 1
    assert [s for f in frames for s in f.params.states] == states
    for frame in frames:
        assert signed_size(frame) <= MAX_FRAME_BYTES
        assert fits_frame(frame)
    # Greedy: adding the next frame's first item to a frame would overflow it.
    for frame, nxt in itertools.pairwise(frames):
        bigger = build([*frame.params.states, nxt.params.states[0]])
        assert signed_size(bigger) > MAX_FRAME_BYTES
    assert pack_items([], build) == []
    # a capped split is the start of the whole one
    for most in range(len(frames) + 2):
        assert pack_items(states, build, max_messages=most) == frames[:most]


def test_pack_items_rejects_an_item_too_large_alone() -> None:
    def build(chunk: list[StateItem]) -> PluginState:
        return PluginState(
            params=StateParams(app_guid=GUID, module_name="m", epoch="1", states=chunk)
        )

    with pytest.raises(FrameTooLargeError, match="over the 2048-byte limit"):
        pack_items([StateItem(name="big", value="x" * 2000)], build)


def test_valid_declaration_has_no_errors() -> None:
    assert validate_update(full_update()) == []


def test_card_validation_names_paths_and_values() -> None:
    bad_params = [
        CardParam(name="ok", display_type="string"),
        CardParam(name="when", display_type="datetime", display_format="DD/MM/YYYY"),
    ]
    module = Module(
        module_name="room-1",
        properties=[PropertyCard(name="model", display_type="string", value="x" * 600)],
        states=[
            StateCard(name="power", display_type="string"),
            StateCard(name="power", display_type="gauge"),
        ],
        metrics=[MetricCard(name="people", display_type="custom")],
        commands=[
            CommandCard(name="a"),
            CommandCard(name="b", type="synchronous"),
            CommandCard(name="c", params=bad_params),
            CommandCard(
                name="d",
                params=[
                    CardParam(name="s", display_type="switch", display_values=[0, 1]),
                    CardParam(name="l", display_type="list"),
                    CardParam(name="9bad", display_type="string", value_encoding="hex"),
                ],
            ),
        ],
        alarms=[AlarmCard(name="hot", params=[CardParam(name="t", display_type="text")])],
        events=[EventCard(name="x" * 33)],
    )
    update = UpdateParams(
        app_guid=GUID,
        app_name="j",
        epoch="1",
        type="usb",
        sdk="3.4",
        version="1.0",
        modules=[module, Module(module_name="room-1")],
    )
    errors = validate_update(update)
    by_path = {e.path: e for e in errors}
    expected = {
        "version": "1.0",
        "sdk": "3.4",
        "type": "usb",
        "modules[0].properties[0].value": "x" * 40 + "...",
        "modules[0].states[1].name": "power",
        "modules[0].states[1].displayType": "gauge",
        "modules[0].metrics[0].displayUnit": None,
        "modules[0].commands[1].type": "synchronous",
        "modules[0].commands[2].params[1].displayFormat": "DD/MM/YYYY",
        "modules[0].commands[3].params[0].displayValues": [0, 1],
        "modules[0].commands[3].params[1].displayValues": None,
        "modules[0].commands[3].params[2].name": "9bad",
        "modules[0].commands[3].params[2].valueEncoding": "hex",
        "modules[0].alarms[0].params[0].displayType": "text",
        "modules[0].events[0].name": "x" * 33,
        "modules[1].moduleName": "room-1",
    }
    for path, value in expected.items():
        assert path in by_path, (path, [str(e) for e in errors])
        assert by_path[path].value == value, path
    assert len(errors) == len(expected)
    assert "modules[0].commands[2].params[1].displayFormat: datetime needs" in str(
        by_path["modules[0].commands[2].params[1].displayFormat"]
    )


def test_credential_decoding_and_redaction() -> None:
    key = "0123456789abcdef0123456789abcdef"
    cred = decode_credential(
        json.dumps(
            {
                "app_guid": GUID,
                "access_key": key,
                "platform": "linux",
                "architecture": "x86_64",
                "x": 1,
            }
        )
    )
    assert cred == PluginCredential(
        app_guid=GUID, access_key=key, platform="linux", architecture="x86_64"
    )
    assert key not in repr(cred) and key not in str(cred)
    with pytest.raises(CredentialError):
        decode_credential('{"app_guid": "g"}')
    with pytest.raises(CredentialError) as info:
        decode_credential(json.dumps({"app_guid": "", "access_key": key}))
    assert key not in str(info.value)
