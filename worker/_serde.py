"""JSON serialization of every value that crosses a durable boundary (never pickle).

Wire format
-----------
Each value is one UTF-8 JSON document. JSON-native values are written as themselves: ``null``,
``true``/``false``, integers in ``[-2**63, 2**64)``, finite floats, strings, arrays, and objects
whose keys are all strings and none of them is ``"$t"``.

Anything else is an object holding the reserved key ``"$t"`` (the tag) with its payload under
``"v"`` unless noted. Payloads are encoded by these same rules, recursively::

    float      {"$t":"float","v":"nan"}                 "nan", "inf" or "-inf"
    int        {"$t":"int","v":"18446744073709551616"}    decimal text, outside the raw range
    bytes      {"$t":"bytes","v":"AAE="}                 standard base64
    bytearray  {"$t":"bytearray","v":"AAE="}             standard base64
    tuple      {"$t":"tuple","v":[1,"a"]}
    set        {"$t":"set","v":[1,2]}                    items sorted for a stable output
    frozenset  {"$t":"frozenset","v":["a","b"]}          items sorted for a stable output
    dict       {"$t":"dict","v":[[1,"one"],["$t",2]]}    [key, value] pairs; used when a key is
                                                         not a string or is "$t"
    datetime   {"$t":"datetime","v":"2024-05-01T12:00:00+00:00"}   ISO 8601; no offset = naive
    date       {"$t":"date","v":"2024-05-01"}
    time       {"$t":"time","v":"12:30:00.250000"}
    timedelta  {"$t":"timedelta","v":90000000}           total microseconds
    decimal    {"$t":"decimal","v":"1.10"}
    uuid       {"$t":"uuid","v":"12345678-1234-5678-1234-567812345678"}
    enum       {"$t":"enum","cls":"shop.models:Color","v":"red"}
    dataclass  {"$t":"dataclass","cls":"shop.models:Order","v":{"id":1,"note":null}}
    struct     {"$t":"struct","cls":"shop.models:Item","v":{"sku":"A1"}}
    exc        {"$t":"exc","cls":"builtins:ValueError","msg":"bad","args":["bad"],
                "tb":"Traceback (most recent call last): ...","cause":null,"attrs":{}}
    stepref    {"$t":"stepref","v":{"name":"charge","closure":{"amount":5}}}

``cls`` is ``"module:QualName"``. A reader revives it only from modules already imported in its
process (data never triggers an import), looking names up through modules and classes only, and
only if it is an Enum / dataclass / msgspec Struct / ``Exception`` subclass as tagged; otherwise an
enum becomes its raw value, a dataclass or struct a plain dict of fields, and an exception a
:class:`RemoteError` (so does every ``BaseException`` that is not an ``Exception``: ``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit``, ``CancelledError``; stored data never ends a process).
In ``exc``, ``args`` is omitted when not serializable and ``attrs`` holds the serializable public
instance attributes; ``msg`` defaults to the text of ``args``.
Extensions add tags with :func:`register_codec`. Producers in other languages may also send plain
JSON; :func:`convert` coerces it to the parameter's annotation.
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from types import ModuleType
from typing import Any
from uuid import UUID

import msgspec

from ._codec import ENV_VAR, envelope_key_id, is_envelope
from ._errors import PayloadTooLargeError, SerializationError

__all__ = ["PayloadTooLargeError", "RemoteError", "SerializationError", "StepRef", "check_size"]
__all__ += [
    "convert",
    "dumps",
    "dumps_args",
    "dumps_bytes",
    "encode_args",
    "loads",
    "register_codec",
    "set_stepref_resolver",
]

_TAG = "$t"
_INT_MIN, _INT_MAX = -(2**63), 2**64
_PLAIN_BUDGET = 200_000  # elements the fast plain-JSON check inspects before giving up
_MAX_DEPTH = 200  # container nesting accepted by the tagged encoder
_MICROSECOND = timedelta(microseconds=1)
_PLAIN_SCALARS = frozenset({str, bool, type(None)})
_FAILED: Any = object()
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()
_MSGSPEC_PATH = re.compile(r" - at `(\$[^`]*)`$")

_Hook = Callable[[Any, set[int]], Any]


class RemoteError(Exception):
    """An exception whose class cannot be revived in this process; keeps its name and traceback."""

    def __init__(
        self,
        message: str,
        type_name: str = "",
        remote_traceback: str = "",
        attrs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        self.attrs = attrs if attrs is not None else {}
        self.__wf_traceback__ = remote_traceback

    def __str__(self) -> str:
        return self.message


@dataclasses.dataclass(frozen=True)
class StepRef:
    """A step-function reference read while no resolver is installed."""

    name: str
    closure: dict[str, Any]

    @property
    def __wf_step_ref__(self) -> dict[str, Any]:
        return {"name": self.name, "closure": self.closure}


_DECODE_HOOKS: dict[str, Callable[[Any], Any]] = {}  # tag -> decode, see register_codec
_ENCODE_HOOKS: dict[type, tuple[str, Callable[[Any], Any]]] = {}  # class -> (tag, encode)
_stepref_resolver: Callable[[str, dict[str, Any]], Any] | None = None


class _PathError(Exception):
    """Internal: a failure deep inside a value; segments are appended while unwinding."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.segments: list[str] = []

    @property
    def path(self) -> str:
        return "$" + "".join(reversed(self.segments))

    def public(self, what: str) -> SerializationError:
        return SerializationError(f"{self.problem} at {self.path} (what={what})", self.path)


def dumps(value: object, *, what: str = "value") -> str:
    """Serialize ``value`` to compact JSON text; ``what`` names it in error messages."""
    t = type(value)
    if t in _PLAIN_SCALARS or (t is int and _INT_MIN <= value < _INT_MAX):  # type: ignore[operator]
        # a scalar that needs no tag (a step's commonest result): what dumps_bytes encodes,
        # without _is_plain's walk
        try:
            return _ENCODER.encode(value).decode()
        except UnicodeError:
            pass  # a lone surrogate: dumps_bytes raises the error
    return dumps_bytes(value, what=what).decode()


def dumps_args(args: tuple[Any, ...], kwargs: dict[str, Any], *, what: str) -> str:
    """A call's arguments as stored: ``dumps({"args": [...], "kwargs": kwargs})``, the kwargs
    key only when there are any (see :func:`encode_args`)."""
    return encode_args(args, kwargs, what=what)[0]


def encode_args(
    args: tuple[Any, ...], kwargs: dict[str, Any], *, what: str
) -> tuple[str, tuple[Any, ...] | None]:
    """:func:`dumps_args`'s text, and ``args`` themselves when loading that text gives them
    back as they are (None otherwise): a step run by the process that called it then skips
    the load.

    Fast path: positional arguments that are all JSON scalars (str, bool, None, an int in the
    raw range, a finite float) need no tag, so msgspec encodes them as they are, the tuple as
    the same array a list gives; byte for byte what the general path writes (a test holds the
    two together), without its walk over the value. Such a value loads as itself (the same
    type and value: a float's text is its shortest round-trip form).
    """
    if not kwargs:
        for arg in args:
            t = type(arg)
            if t is int:
                if not _INT_MIN <= arg < _INT_MAX:
                    break
            elif t is float:
                if arg - arg != 0.0:  # nan and +-inf
                    break
            elif t not in _PLAIN_SCALARS:
                break
        else:
            try:
                return _ENCODER.encode({"args": args}).decode(), args
            except UnicodeError:
                pass  # a lone surrogate: the general path raises dumps()'s error
        return dumps({"args": list(args)}, what=what), None
    return dumps({"args": list(args), "kwargs": kwargs}, what=what), None


def dumps_bytes(value: object, *, what: str = "value") -> bytes:
    """Like :func:`dumps` but returns UTF-8 bytes."""
    try:
        return _ENCODER.encode(value if _is_plain(value) else _enc(value, set()))
    except _PathError as exc:
        raise exc.public(what) from None
    except (RecursionError, UnicodeError, OverflowError, TypeError) as exc:
        raise SerializationError(f"cannot serialize {what}: {exc}") from None


def loads(data: str | bytes, *, what: str = "value") -> Any:
    """Deserialize JSON text produced by :func:`dumps` (or plain JSON from any producer)."""
    try:
        node = _DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SerializationError(f"cannot deserialize {what}: {_why(data, exc)}") from None
    if type(node) is not list and type(node) is not dict:
        return node
    if isinstance(data, str):
        plain = "$t" not in data and "\\u" not in data
    else:
        plain = b"$t" not in data and b"\\u" not in data
    if plain:  # no tag can hide in the text: skip the walk
        return node
    try:
        return _revive(node)
    except _PathError as exc:
        raise exc.public(what) from None
    except RecursionError:
        raise SerializationError(f"cannot deserialize {what}: nesting too deep") from None


def _why(data: str | bytes, exc: Exception) -> str:
    """Why ``data`` does not load: an encrypted value is named as such (see ``worker._codec``)."""
    text = data if isinstance(data, str) else data[:80].decode("utf-8", "replace")
    if is_envelope(text):
        return (
            f"it is encrypted (key id {envelope_key_id(text)!r}) and this process has no key "
            f"for it in {ENV_VAR}"
        )
    return str(exc)


def check_size(text: str | bytes, *, what: str, limit: int) -> None:
    """Raise :class:`PayloadTooLargeError` when ``text`` is over ``limit`` bytes of UTF-8."""
    if isinstance(text, str):
        if len(text) * 4 <= limit:  # even all 4-byte characters would fit
            return
        text = text.encode("utf-8", "surrogatepass")
    if len(text) > limit:
        raise PayloadTooLargeError(what, len(text), limit)


def convert(value: Any, annotation: Any, *, what: str) -> Any:
    """Coerce a deserialized value to ``annotation`` (e.g. a dict to a dataclass parameter).

    Annotations msgspec cannot handle (unresolved forward references, ...) pass values through.
    """
    if annotation is Any or annotation is inspect.Parameter.empty or annotation is object:
        return value
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    try:
        return msgspec.convert(value, type=annotation, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _MSGSPEC_PATH.search(text)
        path = match.group(1) if match else "$"
        raise SerializationError(f"cannot convert {what}: {text}", path) from None
    except TypeError:
        return value


def set_stepref_resolver(fn: Callable[[str, dict[str, Any]], Any] | None) -> None:
    """Install the hook that revives ``stepref`` values as ``fn(name, closure)``."""
    global _stepref_resolver
    _stepref_resolver = fn


def register_codec(
    tag: str, cls: type, encode: Callable[[Any], Any], decode: Callable[[Any], Any]
) -> None:
    """Serialize instances of ``cls`` as ``{"$t": tag, "v": payload}``.

    ``encode(obj)`` returns any value this module can serialize; it is then encoded recursively
    by the rules above. ``decode(payload)`` receives that payload already deserialized.
    """
    if tag in _DECODERS:
        raise ValueError(f"tag {tag!r} is reserved by the engine")
    _DECODE_HOOKS[tag] = decode
    _ENCODE_HOOKS[cls] = (tag, encode)


def _is_plain(value: object) -> bool:
    """True when msgspec can encode ``value`` as is, i.e. it needs no tag anywhere."""
    stack: list[Any] = []
    items: Iterable[Any] = (value,)
    budget = _PLAIN_BUDGET  # bounds the work on huge values and on cycles
    while True:
        for item in items:
            t = type(item)
            if t in _PLAIN_SCALARS:
                continue
            if t is int:
                if not _INT_MIN <= item < _INT_MAX:
                    return False
            elif t is float:
                if item - item != 0.0:  # nan and +-inf
                    return False
            elif t is list or t is dict:
                stack.append(item)
            else:
                return False
        if not stack:
            return True
        node = stack.pop()
        budget -= len(node)
        if budget < 0:
            return False
        if type(node) is dict:
            if _TAG in node:
                return False
            for key in node:
                if type(key) is not str:
                    return False
            items = node.values()
        else:
            items = node


def _enc(value: Any, active: set[int]) -> Any:
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    hook = _ENCODERS.get(t)
    if hook is not None:
        return hook(value, active)
    return _enc_other(value, active)


def _child(value: Any, segment: str, active: set[int]) -> Any:
    try:
        return _enc(value, active)
    except _PathError as exc:
        exc.segments.append(segment)
        raise


def _try_enc(value: Any, active: set[int]) -> Any:
    try:
        return _enc(value, active)
    except _PathError:
        return _FAILED


def _enter(value: object, active: set[int]) -> None:
    if id(value) in active:
        label = _type_label(type(value))
        raise _PathError(f"cannot serialize a reference cycle through value of type {label!r}")
    if len(active) >= _MAX_DEPTH:
        raise _PathError(f"cannot serialize values nested deeper than {_MAX_DEPTH} levels")
    active.add(id(value))


def _tagged(tag: str, payload: Any) -> dict[str, Any]:
    return {_TAG: tag, "v": payload}


def _enc_seq(value: Iterable[Any], active: set[int]) -> list[Any]:
    _enter(value, active)
    try:
        out = []
        for index, item in enumerate(value):
            try:
                out.append(_enc(item, active))
            except _PathError as exc:
                exc.segments.append(f"[{index}]")
                raise
        return out
    finally:
        active.discard(id(value))


def _enc_set(value: set[Any] | frozenset[Any], active: set[int]) -> Any:
    items = _enc_seq(value, active)
    try:
        items.sort()
    except TypeError:  # mixed or tagged items: order by their JSON text instead
        items.sort(key=_ENCODER.encode)
    return _tagged("frozenset" if isinstance(value, frozenset) else "set", items)


def _key_segment(key: object) -> str:
    return f"[{_ENCODER.encode(key).decode()}]" if type(key) is str else f"[{key!r}]"


def _enc_dict(value: dict[Any, Any], active: set[int]) -> Any:
    _enter(value, active)
    try:
        if _TAG not in value and all(type(key) is str for key in value):
            return {key: _child(item, _key_segment(key), active) for key, item in value.items()}
        pairs = [
            [_child(key, f".keys()[{index}]", active), _child(item, _key_segment(key), active)]
            for index, (key, item) in enumerate(value.items())
        ]
        return _tagged("dict", pairs)
    finally:
        active.discard(id(value))


def _b64(value: bytes | bytearray) -> str:
    return base64.b64encode(value).decode("ascii")


_ENCODERS: dict[type, _Hook] = {
    int: lambda v, a: int(v) if _INT_MIN <= v < _INT_MAX else _tagged("int", str(v)),
    float: lambda v, a: float(v) if v - v == 0.0 else _tagged("float", repr(float(v))),
    str: lambda v, a: str.__str__(v),
    list: _enc_seq,
    dict: _enc_dict,
    tuple: lambda v, a: _tagged("tuple", _enc_seq(v, a)),
    set: _enc_set,
    frozenset: _enc_set,
    bytes: lambda v, a: _tagged("bytes", _b64(v)),
    bytearray: lambda v, a: _tagged("bytearray", _b64(v)),
    datetime: lambda v, a: _tagged("datetime", v.isoformat()),  # before date: a subclass of it
    date: lambda v, a: _tagged("date", v.isoformat()),
    time: lambda v, a: _tagged("time", v.isoformat()),
    timedelta: lambda v, a: _tagged("timedelta", _enc(v // _MICROSECOND, a)),
    Decimal: lambda v, a: _tagged("decimal", str(v)),
    UUID: lambda v, a: _tagged("uuid", str(v)),
}


def _enc_other(value: Any, active: set[int]) -> Any:
    codec = _ENCODE_HOOKS.get(type(value))
    codec = codec or next((c for t, c in _ENCODE_HOOKS.items() if isinstance(value, t)), None)
    if codec is not None:
        return _tagged(codec[0], _enc(codec[1](value), active))
    ref = _step_ref_of(value)
    if ref is not None:
        closure = ref.get("closure") or {}
        return _tagged("stepref", _enc({"name": ref["name"], "closure": closure}, active))
    if isinstance(value, Enum):
        payload = _child(value.value, ".value", active)
        return {_TAG: "enum", "cls": _qualname(type(value)), "v": payload}
    if isinstance(value, BaseException):
        return _enc_exc(value, active)
    if isinstance(value, msgspec.Struct):
        return _enc_fields("struct", value, value.__struct_fields__, active)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [field.name for field in dataclasses.fields(value)]
        return _enc_fields("dataclass", value, names, active)
    for base, hook in _ENCODERS.items():  # subclasses of built-in types degrade to the base
        if isinstance(value, base):
            return hook(value, active)
    raise _PathError(f"cannot serialize value of type {_type_label(type(value))!r}")


def _step_ref_of(value: object) -> dict[str, Any] | None:
    ref = getattr(value, "__wf_step_ref__", None)
    if callable(ref):
        ref = ref()
    if isinstance(ref, dict) and isinstance(ref.get("name"), str):
        return ref
    return None


def _enc_fields(tag: str, value: object, names: Iterable[str], active: set[int]) -> Any:
    _enter(value, active)
    try:
        fields = {}
        for name in names:
            field = getattr(value, name, msgspec.UNSET)
            if field is not msgspec.UNSET:
                fields[name] = _child(field, f".{name}", active)
        return {_TAG: tag, "cls": _qualname(type(value)), "v": fields}
    finally:
        active.discard(id(value))


def _enc_exc(exc: BaseException, active: set[int]) -> Any:
    _enter(exc, active)
    try:
        remote = exc if isinstance(exc, RemoteError) else None
        out: dict[str, Any] = {_TAG: "exc", "cls": _qualname(type(exc)), "msg": _exc_message(exc)}
        if remote is not None and remote.type_name:
            out["cls"] = remote.type_name  # keep the original identity when passing it on
        args = _try_enc(list(exc.args), active)
        if args is not _FAILED:
            out["args"] = args
        out["tb"] = _exc_traceback(exc, out["msg"])
        cause = exc.__cause__
        seen = cause is None or id(cause) in active  # a cause cycle ends the chain
        encoded = None if seen else _try_enc(cause, active)
        out["cause"] = None if encoded is _FAILED else encoded
        source = remote.attrs if remote is not None else getattr(exc, "__dict__", None) or {}
        attrs = {k: v for k, v in list(source.items()) if isinstance(k, str) and k[:1] != "_"}
        encoded_attrs = {name: _try_enc(attr, active) for name, attr in attrs.items()}
        out["attrs"] = {k: v for k, v in encoded_attrs.items() if v is not _FAILED}
        return out
    finally:
        active.discard(id(exc))


def _exc_message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__qualname__}>"


def _exc_traceback(exc: BaseException, message: str) -> str:
    stored = getattr(exc, "__wf_traceback__", None)
    if isinstance(stored, str) and stored:
        return stored
    try:
        return "".join(traceback.format_exception(exc, chain=False))
    except Exception:
        return f"{type(exc).__qualname__}: {message}\n"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _type_label(cls: type) -> str:
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _revive(node: Any) -> Any:
    """Replace tagged objects inside freshly decoded JSON, in place where possible."""
    items: Iterable[tuple[Any, Any]]
    if type(node) is dict:
        if _TAG in node:
            return _revive_tagged(node)
        items = node.items()
    elif type(node) is list:
        items = enumerate(node)
    else:
        return node
    for key, item in items:
        if type(item) is list or type(item) is dict:
            try:
                node[key] = _revive(item)
            except _PathError as exc:
                exc.segments.append(_key_segment(key))
                raise
    return node


def _sub(node: dict[str, Any], key: str) -> Any:
    try:
        return _revive(node.get(key))
    except _PathError as exc:
        exc.segments.append(f".{key}")
        raise


def _typed(value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _revive_tagged(node: dict[str, Any]) -> Any:
    tag = node[_TAG] if isinstance(node[_TAG], str) else ""
    if tag in _DECODE_HOOKS:
        return _DECODE_HOOKS[tag](_sub(node, "v"))
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise _PathError(f"cannot deserialize unknown tag {node[_TAG]!r}")
    try:
        value = decoder(node)
    except (ValueError, TypeError, LookupError, ArithmeticError) as exc:
        raise _PathError(f"cannot deserialize malformed {tag!r} value ({exc})") from None
    if tag == "stepref" and _stepref_resolver is not None:
        return _stepref_resolver(value.name, value.closure)
    return value


def _text(node: dict[str, Any], key: str = "v") -> str:
    return str(_typed(node.get(key), str))


def _resolve(ref: str, accept: Callable[[type], bool]) -> Any:
    """Find ``module:QualName`` among already imported modules; never imports anything.

    The walk reads the namespaces of modules and classes only: any other object met on the way
    could compute attributes on demand (``__getattr__``), i.e. run code the data chose.
    """
    module_name, sep, qualname = ref.partition(":")
    obj: Any = sys.modules.get(module_name) if sep else None
    for part in qualname.split(".") if obj is not None else ():
        if not isinstance(obj, ModuleType | type):
            return None
        namespace = vars(obj)
        obj = namespace.get(part) if isinstance(namespace, Mapping) else None
    return obj if isinstance(obj, type) and accept(obj) else None


def _rv_enum(node: dict[str, Any]) -> Any:
    value = _sub(node, "v")
    cls = _resolve(_text(node, "cls"), lambda c: issubclass(c, Enum))
    try:
        return value if cls is None else cls(value)
    except Exception:
        return value


def _rv_dataclass(node: dict[str, Any]) -> Any:
    values = _typed(_sub(node, "v"), dict)
    cls = _resolve(_text(node, "cls"), dataclasses.is_dataclass)
    if cls is None:
        return values
    fields = dataclasses.fields(cls)
    init = {f.name: values[f.name] for f in fields if f.init and f.name in values}
    try:
        obj = cls(**init)
        for f in fields:
            if not f.init and f.name in values:
                object.__setattr__(obj, f.name, values[f.name])
    except Exception:
        return values
    return obj


def _rv_struct(node: dict[str, Any]) -> Any:
    values = _typed(_sub(node, "v"), dict)
    cls = _resolve(_text(node, "cls"), lambda c: issubclass(c, msgspec.Struct))
    if cls is None:
        return values
    with suppress(Exception):
        return cls(**values)
    with suppress(Exception):
        return msgspec.convert(values, cls, strict=False)
    return values


def _rv_exc(node: dict[str, Any]) -> BaseException:
    ref = _text(node, "cls")
    args = _typed(_sub(node, "args"), list) if "args" in node else None
    message = _text(node, "msg") if "msg" in node or args is None else _args_message(args)
    args = [message] if args is None else args
    tb = str(node.get("tb") or "")
    attrs = _typed(_sub(node, "attrs") or {}, dict)
    cause = _sub(node, "cause")
    # only Exception subclasses: a revived SystemExit, KeyboardInterrupt, GeneratorExit or
    # CancelledError raised where code expects errors would end the task or the process
    cls = _resolve(ref, lambda c: issubclass(c, Exception))
    exc = _build_exc(cls, args, attrs, message) if cls is not None else None
    if exc is None:
        exc = RemoteError(message, ref, tb, attrs)
    with suppress(Exception):
        exc.__wf_traceback__ = tb
    if isinstance(cause, BaseException):
        exc.__cause__ = cause
    return exc


def _args_message(args: list[Any]) -> str:
    """``str()`` of an exception with these args, for payloads written without ``msg``."""
    if not args:
        return ""
    return _exc_message(Exception(*args))


def _build_exc(
    cls: type[BaseException], args: list[Any], attrs: dict[str, Any], message: str
) -> Any:
    """The exception, rebuilt with its args (and instance attributes); an exception class whose
    ``__init__`` formats its message from other arguments (``RunNotFoundError(run_id)``) is
    rebuilt without calling it, so it says what it said, not a message wrapped in its own."""
    try:
        exc = cls(*args)
        if _exc_message(exc) != message:
            raise ValueError("its __init__ does not take its own args back")
    except Exception:
        try:
            exc = cls.__new__(cls)
            exc.args = tuple(args)
        except Exception:
            return None
    for name, value in attrs.items():
        with suppress(Exception):
            setattr(exc, name, value)
    return exc if isinstance(exc, BaseException) else None


def _rv_stepref(node: dict[str, Any]) -> StepRef:
    ref = _typed(_sub(node, "v"), dict)
    return StepRef(_typed(ref.get("name"), str), _typed(ref.get("closure") or {}, dict))


_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "float": lambda n: float(_text(n)),
    "int": lambda n: int(_text(n)),
    "bytes": lambda n: base64.b64decode(_text(n), validate=True),
    "bytearray": lambda n: bytearray(base64.b64decode(_text(n), validate=True)),
    "tuple": lambda n: tuple(_typed(_sub(n, "v"), list)),
    "set": lambda n: set(_typed(_sub(n, "v"), list)),
    "frozenset": lambda n: frozenset(_typed(_sub(n, "v"), list)),
    "dict": lambda n: dict(_typed(_sub(n, "v"), list)),  # [key, value] pairs
    "datetime": lambda n: datetime.fromisoformat(_text(n)),
    "date": lambda n: date.fromisoformat(_text(n)),
    "time": lambda n: time.fromisoformat(_text(n)),
    "timedelta": lambda n: timedelta(microseconds=_typed(_sub(n, "v"), int)),
    "decimal": lambda n: Decimal(_text(n)),
    "uuid": lambda n: UUID(_text(n)),
    "enum": _rv_enum,
    "dataclass": _rv_dataclass,
    "struct": _rv_struct,
    "exc": _rv_exc,
    "stepref": _rv_stepref,
}
