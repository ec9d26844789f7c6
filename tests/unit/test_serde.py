"""Unit tests for worker._serde: the JSON wire format of durable values."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from worker import _serde
from worker._errors import PayloadTooLargeError, RetryableError, SerializationError
from worker._serde import (
    RemoteError,
    StepRef,
    check_size,
    convert,
    dumps,
    dumps_bytes,
    loads,
    register_codec,
    set_stepref_resolver,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


@dataclasses.dataclass
class Box:
    content: Any


@dataclasses.dataclass(frozen=True)
class Order:
    id: int
    items: tuple[str, ...]
    placed: datetime
    total: Decimal
    color: Color
    computed: str = dataclasses.field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "computed", f"order-{self.id}")


class Item(msgspec.Struct):
    sku: str
    qty: int = 1
    tags: frozenset[str] = frozenset()


class AppError(Exception):
    """A custom error with an extra attribute."""


class PaymentDeclinedError(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class Money:
    def __init__(self, cents: int, currency: str) -> None:
        self.cents = cents
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (other.cents, other.currency) == (
            self.cents,
            self.currency,
        )

    def __hash__(self) -> int:
        return hash((self.cents, self.currency))


register_codec("test-money", Money, lambda m: (m.cents, m.currency), lambda p: Money(p[0], p[1]))


def _raise_value_error() -> None:
    raise ValueError("bad input")


def _caught(fn: Any) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


@pytest.fixture
def no_resolver() -> Iterator[None]:
    previous = _serde._stepref_resolver  # the engine may have installed its own at import
    set_stepref_resolver(None)
    yield
    set_stepref_resolver(previous)


@pytest.fixture
def resolver(no_resolver: None) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def resolve(name: str, closure: dict[str, Any]) -> Any:
        calls.append((name, closure))
        return ("revived", name)

    set_stepref_resolver(resolve)
    return calls


ROUND_TRIP = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    10**40,
    1.5,
    -0.0,
    1e300,
    float("inf"),
    float("-inf"),
    "",
    "héllo ✓",
    "nul\x00byte\x00",
    b"",
    b"\x00\xffbinary",
    bytearray(b"\x00mutable"),
    (),
    (1, "a", None),
    ((1, 2), (3,)),
    [1, [2, [3, ()]]],
    {1, 2, 3},
    {"b", "a"},
    {1, "a", (1, 2), None},
    frozenset(),
    frozenset({frozenset({1}), 2}),
    {},
    {"a": 1, "b": {"c": [1, 2]}},
    {1: "one", 2: "two"},
    {(1, 2): "tuple key", None: "none key", 1.5: "float key"},
    {"$t": "int", "v": "5"},
    {"outer": {"$t": "x"}},
    datetime(2024, 5, 1, 12, 30, 15, 123456),
    datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    date(2024, 2, 29),
    time(23, 59, 59, 999999),
    time(8, 0, tzinfo=timezone(timedelta(hours=-3))),
    timedelta(0),
    timedelta(days=-3, seconds=5, microseconds=7),
    timedelta.max,
    timedelta.min,
    Decimal("1.10"),
    Decimal("-0"),
    Decimal("-Infinity"),
    Decimal("1E+30"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Color.RED,
    Level.HIGH,
    Perm.READ | Perm.WRITE,
    Point(1, 2),
    Order(7, ("a", "b"), datetime(2024, 1, 1, tzinfo=UTC), Decimal("9.99"), Color.BLUE),
    Item("A1", 3, frozenset({"x", "y"})),
    [Point(1), {"p": Item("B")}, (Color.RED, Level.LOW)],
    Money(1250, "EUR"),
    {Money(1, "USD"): [Money(2, "USD")]},
]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=repr)
def test_round_trip_keeps_value_and_type(value: Any) -> None:
    """Every supported value comes back equal and of the same type."""
    back = loads(dumps(value))
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize("value", ROUND_TRIP, ids=repr)
def test_output_is_valid_json(value: Any) -> None:
    """dumps always returns text that any JSON parser accepts."""
    text = dumps(value)
    assert isinstance(text, str)
    json.loads(text)


def test_nested_containers_keep_inner_types() -> None:
    """Types are preserved at every depth, not only at the top."""
    value = {"k": [(1, {2, 3}), {"t": (b"x", frozenset({4}))}], "d": {1: (2,)}}
    back = loads(dumps(value))
    assert back == value
    assert type(back["k"][0]) is tuple
    assert type(back["k"][0][1]) is set
    assert type(back["k"][1]["t"][0]) is bytes
    assert type(back["d"]) is dict and type(back["d"][1]) is tuple


def test_tzinfo_is_kept_and_naive_stays_naive() -> None:
    """Aware datetimes keep their offset and naive ones stay naive."""
    naive = loads(dumps(datetime(2024, 1, 1, 9)))
    aware = loads(dumps(datetime(2024, 1, 1, 9, tzinfo=timezone(timedelta(hours=2)))))
    assert naive.tzinfo is None
    assert aware.utcoffset() == timedelta(hours=2)


def test_nan_round_trips() -> None:
    """A NaN float is tagged and comes back as NaN."""
    assert dumps(float("nan")) == '{"$t":"float","v":"nan"}'
    back = loads(dumps([float("nan")]))
    assert isinstance(back[0], float) and math.isnan(back[0])


def test_nul_bytes_in_strings_and_keys_round_trip() -> None:
    """NUL characters survive in string values and in dict keys."""
    value = {"k\x00": "\x00", "x": ["a\x00b"]}
    assert loads(dumps(value)) == value


def test_big_ints_are_tagged_and_raw_range_is_plain() -> None:
    """Integers in [-2**63, 2**64) are raw JSON numbers; others are tagged decimal text."""
    assert dumps(2**64 - 1) == str(2**64 - 1)
    assert dumps(-(2**63)) == str(-(2**63))
    assert dumps(2**64) == '{"$t":"int","v":"18446744073709551616"}'
    assert loads(dumps(-(10**30))) == -(10**30)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (True, "true"),
        (42, "42"),
        (1.5, "1.5"),
        ("x", '"x"'),
        ({"a": [1, "x", None]}, '{"a":[1,"x",null]}'),
        ([{"b": {"c": []}}], '[{"b":{"c":[]}}]'),
    ],
)
def test_plain_values_are_plain_json(value: Any, expected: str) -> None:
    """JSON-native values are written without any tag."""
    assert dumps(value) == expected
    assert loads(expected) == value


def test_reserved_key_in_user_dict_is_escaped() -> None:
    """A user dict holding the tag key is written as pairs, so it is not mistaken for a tag."""
    value = {"$t": "tuple", "v": [1, 2]}
    text = dumps(value)
    assert json.loads(text) == {"$t": "dict", "v": [["$t", "tuple"], ["v", [1, 2]]]}
    back = loads(text)
    assert back == value and type(back) is dict


def test_sets_have_stable_sorted_output() -> None:
    """Set items are sorted so equal sets always serialize to the same text."""
    assert dumps({"b", "c", "a"}) == '{"$t":"set","v":["a","b","c"]}'
    assert dumps(frozenset({3, 1, 2})) == '{"$t":"frozenset","v":[1,2,3]}'
    assert dumps({1, "a", None, (1,)}) == dumps({(1,), None, "a", 1})


def test_tuple_and_bytes_wire_format() -> None:
    """Tuples and bytes use the documented tagged objects."""
    assert dumps((1, 2)) == '{"$t":"tuple","v":[1,2]}'
    assert dumps(b"\x00\x01") == '{"$t":"bytes","v":"AAE="}'
    assert dumps(timedelta(seconds=90)) == '{"$t":"timedelta","v":90000000}'


def test_dumps_bytes_and_loads_bytes() -> None:
    """The bytes variants are symmetric with the text ones."""
    data = dumps_bytes({"a": (1,)})
    assert isinstance(data, bytes)
    assert loads(data) == {"a": (1,)}


def test_unicode_escaped_tag_from_foreign_producer_is_revived() -> None:
    """A tag key written with JSON unicode escapes is still recognised."""
    assert loads('{"\\u0024t":"tuple","v":[1]}') == (1,)


def test_dataclass_round_trips_to_same_class() -> None:
    """A module-level dataclass comes back as an instance of the same class."""
    text = dumps(Point(3, 4))
    assert json.loads(text) == {
        "$t": "dataclass",
        "cls": f"{__name__}:Point",
        "v": {"x": 3, "y": 4},
    }
    back = loads(text)
    assert isinstance(back, Point) and back == Point(3, 4)


def test_frozen_dataclass_with_init_false_field() -> None:
    """Frozen dataclasses with init=False fields are rebuilt with every field."""
    order = Order(1, ("a",), datetime(2024, 1, 1), Decimal("1"), Color.RED)
    back = loads(dumps(order))
    assert back == order and back.computed == "order-1"


def test_struct_round_trips() -> None:
    """A msgspec Struct comes back as the same Struct type."""
    text = dumps(Item("A1", 2))
    assert json.loads(text)["$t"] == "struct"
    back = loads(text)
    assert isinstance(back, Item) and back == Item("A1", 2)


def test_enum_wire_format_and_round_trip() -> None:
    """Enums are written with their class and value and revived as members."""
    text = dumps(Color.BLUE)
    assert json.loads(text) == {"$t": "enum", "cls": f"{__name__}:Color", "v": "blue"}
    assert loads(text) is Color.BLUE


@pytest.mark.parametrize(
    "exc",
    [ValueError("bad"), KeyError("k"), RuntimeError("r", 2), TimeoutError(), ZeroDivisionError()],
    ids=repr,
)
def test_builtin_exceptions_come_back_as_their_class(exc: BaseException) -> None:
    """Built-in exceptions are revived as their own class with the same args and message."""
    back = loads(dumps(exc))
    assert type(back) is type(exc)
    assert back.args == exc.args
    assert str(back) == str(exc)


def test_exception_keeps_traceback_text() -> None:
    """The original traceback text is stored and exposed as __wf_traceback__."""
    exc = _caught(_raise_value_error)
    wire = json.loads(dumps(exc))
    assert wire["cls"] == "builtins:ValueError"
    assert wire["msg"] == "bad input"
    assert "_raise_value_error" in wire["tb"]
    back = loads(dumps(exc))
    assert "_raise_value_error" in back.__wf_traceback__
    assert loads(dumps(back)).__wf_traceback__ == back.__wf_traceback__


def test_custom_exception_is_revived_with_attributes() -> None:
    """A custom exception with an incompatible __init__ is revived with args and attributes."""
    exc = PaymentDeclinedError("E42", "no funds")
    back = loads(dumps(exc))
    assert type(back) is PaymentDeclinedError
    assert str(back) == "E42: no funds"
    assert (back.code, back.reason) == ("E42", "no funds")


def test_engine_exceptions_are_revived() -> None:
    """Engine errors keep their class and extra attributes."""
    back = loads(dumps(SerializationError("boom", "$.x")))
    assert type(back) is SerializationError and back.path == "$.x"
    retry = loads(dumps(RetryableError("later", retry_after=timedelta(seconds=5))))
    assert type(retry) is RetryableError and retry.retry_after == timedelta(seconds=5)


def test_exception_with_unserializable_attribute_still_serializes() -> None:
    """Unserializable attributes and args are dropped; type, message and traceback remain."""
    exc = _caught(lambda: (_ for _ in ()).throw(AppError("db down", threading.Lock())))
    assert isinstance(exc, AppError)
    exc.conn = object()  # type: ignore[attr-defined]
    exc.retries = 3  # type: ignore[attr-defined]
    wire = json.loads(dumps(exc))
    assert wire["cls"] == f"{__name__}:AppError"
    assert wire["msg"] == str(exc)
    assert "Traceback" in wire["tb"]
    assert "args" not in wire
    assert wire["attrs"] == {"retries": 3}
    back = loads(dumps(exc))
    assert type(back) is AppError and getattr(back, "retries", None) == 3
    assert not hasattr(back, "conn")


def test_cause_chain_is_preserved() -> None:
    """__cause__ is serialized recursively and restored on load."""
    try:
        try:
            _raise_value_error()
        except ValueError as inner:
            raise AppError("outer") from inner
    except AppError as exc:
        back = loads(dumps(exc))
    assert type(back) is AppError and str(back) == "outer"
    assert type(back.__cause__) is ValueError and str(back.__cause__) == "bad input"
    assert "_raise_value_error" in getattr(back.__cause__, "__wf_traceback__", "")


def test_cause_cycle_does_not_loop() -> None:
    """A cycle in the __cause__ chain is cut instead of failing."""
    a, b = AppError("a"), AppError("b")
    a.__cause__, b.__cause__ = b, a
    back = loads(dumps(a))
    assert str(back.__cause__) == "b" and back.__cause__.__cause__ is None


def test_unresolvable_classes_degrade_without_importing() -> None:
    """Unknown classes give a raw value, a dict or a RemoteError and never import a module."""
    tb = "Traceback (most recent call last):\n  ...\nFoo: went wrong\n"
    exc_wire = {
        "$t": "exc",
        "cls": "nonexistent.module:Foo",
        "msg": "went wrong",
        "args": ["went wrong"],
        "tb": tb,
        "cause": {"$t": "exc", "cls": "builtins:KeyError", "msg": "'k'", "args": ["k"]},
        "attrs": {"code": 7},
    }
    exc = loads(json.dumps(exc_wire))
    assert type(exc) is RemoteError
    assert exc.type_name == "nonexistent.module:Foo"
    assert exc.message == "went wrong" and str(exc) == "went wrong"
    assert exc.remote_traceback == tb
    assert exc.attrs == {"code": 7}
    assert type(exc.__cause__) is KeyError
    assert json.loads(dumps(exc))["cls"] == "nonexistent.module:Foo"
    enum_wire = '{"$t":"enum","cls":"nonexistent.module:Color","v":"red"}'
    assert loads(enum_wire) == "red"
    dc_wire = '{"$t":"dataclass","cls":"nonexistent.module:P","v":{"x":{"$t":"tuple","v":[1]}}}'
    assert loads(dc_wire) == {"x": (1,)}
    assert loads('{"$t":"struct","cls":"nonexistent.module:S","v":{"a":1}}') == {"a": 1}
    assert "nonexistent" not in sys.modules
    assert "nonexistent.module" not in sys.modules


def test_class_of_wrong_kind_is_not_used() -> None:
    """A name that resolves to a class of the wrong kind is treated as unresolvable."""
    assert loads('{"$t":"dataclass","cls":"builtins:ValueError","v":{"a":1}}') == {"a": 1}
    exc = loads(f'{{"$t":"exc","cls":"{__name__}:Point","msg":"m"}}')
    assert type(exc) is RemoteError and str(exc) == "m"
    assert loads(f'{{"$t":"enum","cls":"{__name__}:Color","v":"green"}}') == "green"


class ProcessSignal(BaseException):
    """A BaseException that is not an Exception, defined by an application."""


@pytest.mark.parametrize(
    "exc",
    [SystemExit(7), KeyboardInterrupt(), GeneratorExit(), ProcessSignal("stop")],
    ids=repr,
)
def test_base_exceptions_come_back_as_remote_error(exc: BaseException) -> None:
    """A stored BaseException that is not an Exception (SystemExit...) revives as RemoteError,
    keeping class name, message and traceback, so no stored error can end a process."""
    exc = _caught(lambda: (_ for _ in ()).throw(exc))
    back = loads(dumps(exc))
    assert type(back) is RemoteError
    assert back.type_name == _serde._qualname(type(exc))
    assert str(back) == str(exc)
    assert "Traceback" in back.remote_traceback and back.__wf_traceback__ == back.remote_traceback


def test_hand_written_system_exit_payload_revives_as_remote_error() -> None:
    """The bare payload of the tracker issue (no msg, no tb) revives as RemoteError, not SystemExit."""
    back = loads('{"$t":"exc","cls":"builtins:SystemExit","args":[7]}')
    assert type(back) is RemoteError
    assert back.type_name == "builtins:SystemExit" and str(back) == "7"
    cancelled = loads('{"$t":"exc","cls":"asyncio.exceptions:CancelledError","msg":"x"}')
    assert type(cancelled) is RemoteError and cancelled.type_name.endswith("CancelledError")


def test_stored_class_name_never_imports_a_module() -> None:
    """A stored class name of an importable module not yet imported gives RemoteError and
    leaves the module unimported (data never runs a module's import-time code)."""
    for name in ("this", "antigravity", "turtle"):
        sys.modules.pop(name, None)
        exc = loads(f'{{"$t":"exc","cls":"{name}:Boom","msg":"m"}}')
        assert type(exc) is RemoteError and exc.type_name == f"{name}:Boom"
        assert name not in sys.modules


def test_class_lookup_walks_only_modules_and_classes() -> None:
    """A stored qualified name is looked up through modules and classes only: an attribute that
    is an instance (which could compute its attributes) ends the lookup with RemoteError."""
    probe = _AttributeProbe()
    sys.modules[__name__].PROBE = probe  # type: ignore[attr-defined]
    try:
        exc = loads(f'{{"$t":"exc","cls":"{__name__}:PROBE.ValueError","msg":"m"}}')
    finally:
        del sys.modules[__name__].PROBE  # type: ignore[attr-defined]
    assert type(exc) is RemoteError and probe.asked == []


class _AttributeProbe:
    """Records every attribute computed on demand (``__getattr__``), e.g. ``__dict__``."""

    __slots__ = ("asked",)

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.asked.append(name)
        return {"ValueError": ValueError}


def test_local_class_degrades_to_dict() -> None:
    """A dataclass defined inside a function cannot be found again and becomes a dict."""

    @dataclasses.dataclass
    class Local:
        a: int

    assert loads(dumps(Local(1))) == {"a": 1}


@pytest.mark.parametrize(
    "bad",
    [object(), lambda: 1, (i for i in range(0)), sys, threading.Lock()],
    ids=["object", "lambda", "generator", "module", "lock"],
)
def test_unserializable_values_raise_with_path(bad: object) -> None:
    """Unserializable values raise SerializationError naming the path and the type."""
    with pytest.raises(SerializationError) as info:
        dumps([1, {"k": bad}], what='step "charge" arguments')
    assert info.value.path == '$[1]["k"]'
    message = str(info.value)
    assert type(bad).__qualname__ in message and "cannot serialize value of type" in message
    assert '$[1]["k"]' in message
    assert 'what=step "charge" arguments' in message


def test_unserializable_error_message_is_exact() -> None:
    """The error message follows the documented format."""
    with pytest.raises(SerializationError) as info:
        dumps({"args": [1, {"user": Box(object())}]}, what='step "charge" arguments')
    assert str(info.value) == (
        """cannot serialize value of type 'object' at $["args"][1]["user"].content """
        """(what=step "charge" arguments)"""
    )
    assert info.value.path == '$["args"][1]["user"].content'


@pytest.mark.parametrize("kind", ["list", "dict", "dataclass"])
def test_cycles_raise_serialization_error(kind: str) -> None:
    """Reference cycles raise SerializationError, not RecursionError."""
    value: Any
    if kind == "list":
        value = [1]
        value.append(value)
    elif kind == "dict":
        value = {"a": {}}
        value["a"]["back"] = value
    else:
        value = Box([])
        value.content.append(value)
    with pytest.raises(SerializationError, match="cycle"):
        dumps(value)


def test_deep_nesting_raises_serialization_error() -> None:
    """Extremely deep values raise SerializationError instead of crashing."""
    plain: list[Any] = []
    tagged: Any = ()
    for _ in range(20_000):
        plain = [plain]
        tagged = (tagged,)
    with pytest.raises(SerializationError):
        dumps(plain)
    with pytest.raises(SerializationError):
        dumps(tagged)
    with pytest.raises(SerializationError):
        loads("[" * 20_000 + "]" * 20_000)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"a":[{"$t":"nope","v":1}]}', '$["a"][0]'),
        ('[{"$t":"tuple","v":[{"$t":"int","v":"x"}]}]', "$[0].v[0]"),
        ('{"$t":"bytes","v":"***"}', "$"),
        ('{"$t":"datetime","v":5}', "$"),
    ],
)
def test_malformed_tags_raise_with_path(text: str, path: str) -> None:
    """Unknown or malformed tagged objects raise SerializationError naming where."""
    with pytest.raises(SerializationError) as info:
        loads(text, what="step result")
    assert info.value.path == path
    assert "step result" in str(info.value)


def test_invalid_json_raises_serialization_error() -> None:
    """Text that is not JSON raises SerializationError."""
    with pytest.raises(SerializationError):
        loads("{not json")


def test_check_size() -> None:
    """check_size counts UTF-8 bytes and raises PayloadTooLargeError over the limit."""
    check_size("x" * 10, what="result", limit=10)
    check_size("", what="result", limit=0)
    with pytest.raises(PayloadTooLargeError) as info:
        check_size("é" * 10, what="result", limit=15)
    assert (info.value.what, info.value.size, info.value.limit) == ("result", 20, 15)


def test_convert_coerces_plain_json_to_annotation() -> None:
    """convert turns plain JSON into dataclass, Struct, Enum and scalar parameters."""
    assert convert({"x": 1}, Point, what="arg") == Point(1, 0)
    assert convert({"sku": "Z", "tags": ["a"]}, Item, what="arg") == Item("Z", 1, frozenset({"a"}))
    assert convert("blue", Color, what="arg") is Color.BLUE
    assert convert(2, Level, what="arg") is Level.HIGH
    assert convert("5", int, what="arg") == 5
    assert convert([{"x": 1}], list[Point], what="arg") == [Point(1)]


def test_convert_passes_through_instances_and_any() -> None:
    """Instances of the annotation, Any and missing annotations are returned unchanged."""
    import inspect

    point = Point(1)
    assert convert(point, Point, what="arg") is point
    marker = object()
    assert convert(marker, Any, what="arg") is marker
    assert convert(marker, inspect.Parameter.empty, what="arg") is marker


def test_convert_error_names_what_and_path() -> None:
    """A value that does not fit raises SerializationError with msgspec's path."""
    with pytest.raises(SerializationError) as info:
        convert([{"x": "not-a-number"}], list[Point], what='step "charge" argument "points"')
    assert info.value.path == "$[0].x"
    assert 'step "charge" argument "points"' in str(info.value)
    with pytest.raises(SerializationError) as info:
        convert("abc", int, what="arg")
    assert info.value.path == "$"


class _StepFunction:
    def __init__(self, name: str, closure: dict[str, Any]) -> None:
        self._name, self._closure = name, closure

    def __wf_step_ref__(self) -> dict[str, Any]:
        return {"name": self._name, "closure": self._closure}


def _step_function() -> None:
    """A plain function marked as a step reference through an attribute."""


_step_function.__wf_step_ref__ = {"name": "plain", "closure": {}}  # type: ignore[attr-defined]


@pytest.mark.usefixtures("no_resolver")
def test_stepref_without_resolver_gives_stepref() -> None:
    """Without a resolver a step reference loads as a StepRef carrying name and closure."""
    ref = _StepFunction("charge", {"amount": Decimal("5"), "pair": (1, 2)})
    text = dumps([ref])
    assert json.loads(text)[0]["$t"] == "stepref"
    back = loads(text)[0]
    assert back == StepRef("charge", {"amount": Decimal("5"), "pair": (1, 2)})
    assert loads(dumps(back)) == back
    assert loads(dumps(_step_function)) == StepRef("plain", {})


def test_stepref_with_resolver_calls_it(resolver: list[tuple[str, dict[str, Any]]]) -> None:
    """With a resolver installed, loads revives step references through it."""
    back = loads(dumps({"fn": _StepFunction("charge", {"n": (1,)})}))
    assert back == {"fn": ("revived", "charge")}
    assert resolver == [("charge", {"n": (1,)})]


def test_register_codec_round_trips_and_reserves_builtin_tags() -> None:
    """Registered codecs tag their class; built-in tags cannot be taken over."""
    assert json.loads(dumps(Money(5, "EUR"))) == {
        "$t": "test-money",
        "v": {"$t": "tuple", "v": [5, "EUR"]},
    }
    with pytest.raises(ValueError):
        register_codec("tuple", Money, lambda m: m, lambda p: p)


def test_subclasses_of_builtin_containers_degrade_to_base_type() -> None:
    """Subclasses of built-in containers serialize as their base type."""
    from collections import OrderedDict, defaultdict

    assert loads(dumps(OrderedDict(a=1))) == {"a": 1}
    assert loads(dumps(defaultdict(list, {1: [2]}))) == {1: [2]}


def test_an_exception_that_formats_its_message_round_trips_with_that_message() -> None:
    """An error class whose __init__ builds the message from another argument comes back saying
    what it said (not the message wrapped in itself), with its attributes."""
    from worker._errors import WorkflowNotRegisteredError

    back = loads(dumps(WorkflowNotRegisteredError("my_flow")))
    assert type(back) is WorkflowNotRegisteredError
    assert str(back) == "workflow 'my_flow' is not registered in this worker"
    assert back.name == "my_flow"
