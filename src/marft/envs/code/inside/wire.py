"""Plain data across a process boundary: length-prefixed JSON frames and a value codec.

The program's process and the checker exchange only *plain data*: ``None``, ``bool``, ``int``,
``float``, ``str``, ``bytes``, ``complex``, the builtin types themselves (``int``, ``str``: mbpp/533
passes one), and ``list``, ``tuple``, ``dict``, ``set``, ``frozenset`` of them, or the
standard library's ``Counter``, ``OrderedDict``, ``defaultdict`` (with a builtin type as its
factory, or none) and ``deque``; each of that exact type (a subclass of ``int`` with its own
``__eq__`` is not plain). Anything else crosses as a *handle*: a number that only the process
holding the object can turn back into it. The receiving side rebuilds values with builtin
constructors alone, so nothing the sender defined runs there: comparing a rebuilt value runs the
interpreter's own ``==``.

Encoded form (JSON): a scalar is itself; a container is a list whose first item is its tag,
``["L", ...]`` list, ``["T", ...]`` tuple, ``["S", ...]`` set, ``["F", ...]`` frozenset,
``["D", k1, v1, k2, v2, ...]`` dict, ``["B", latin-1 text]`` bytes, ``["C", real, imag]`` complex,
``["Y", name]`` a builtin type, ``["K", class name, factory name or null, contents]`` a
``collections`` container (its contents as a dict, or a list for a deque), ``["H", number, type
name]`` a handle.

Runs inside the sandbox (see :mod:`marft.envs.code.inside`): the standard library only.
"""

from __future__ import annotations

import builtins
import collections
import json
import os
import struct

MAX_DEPTH = 100
"""Containers nested deeper than this are not plain data (a list that holds itself, for one)."""
MESSAGE_CHARS = 300
"""Longest message (an exception's text) either side passes on."""
_HEADER = struct.Struct(">I")
_TAGS = {list: "L", tuple: "T", set: "S", frozenset: "F"}
_COLLECTIONS = {
    collections.Counter: "Counter",
    collections.OrderedDict: "OrderedDict",
    collections.defaultdict: "defaultdict",
    collections.deque: "deque",
}


class WireError(Exception):
    """A frame or an encoded value that breaks the protocol."""


class NotPlainData(TypeError):
    """A value that cannot cross as plain data (raised where it would have to be sent)."""


def encode(value, handle, depth: int = 0):
    """``value`` as JSON-able plain data; ``handle(obj)`` gives the node of anything else
    (or raises :class:`NotPlainData`)."""
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float or kind is str:
        return value
    if depth >= MAX_DEPTH:
        raise NotPlainData(f"containers nested deeper than {MAX_DEPTH}")
    depth += 1
    if kind in _TAGS:
        return [_TAGS[kind], *[encode(item, handle, depth) for item in value]]
    if kind is dict:
        node = ["D"]
        for key, item in value.items():
            node.append(encode(key, handle, depth))
            node.append(encode(item, handle, depth))
        return node
    if kind is bytes:
        return ["B", value.decode("latin-1")]
    if kind is complex:
        return ["C", value.real, value.imag]
    if kind is type and _builtin_type(value.__name__) is value:
        return ["Y", value.__name__]
    if kind in _COLLECTIONS:
        return _encode_collection(value, handle, depth)
    return handle(value)


def _builtin_type(name: str):
    found = vars(builtins).get(name)
    return found if type(found) is type else None


def _encode_collection(value, handle, depth: int) -> list:
    kind = type(value)
    factory = None
    if kind is collections.defaultdict and value.default_factory is not None:
        factory = value.default_factory.__name__
        if _builtin_type(factory) is not value.default_factory:
            return handle(value)
    contents = list(value) if kind is collections.deque else dict(value)
    return ["K", _COLLECTIONS[kind], factory, encode(contents, handle, depth)]


def _decode_collection(items: list, remote, depth: int):
    if len(items) != 3 or items[0] not in _COLLECTIONS.values():
        raise WireError("a malformed collection")
    name, factory, contents = items[0], items[1], decode(items[2], remote, depth + 1)
    if name == "deque" and type(contents) is list:
        return collections.deque(contents)
    if type(contents) is not dict:
        raise WireError(f"a {name} without a dict")
    if name == "defaultdict":
        made = _builtin_type(factory) if type(factory) is str else None
        if factory is not None and made is None:
            raise WireError(f"a defaultdict of {str(factory)[:40]}")
        return collections.defaultdict(made, contents)
    return collections.Counter(contents) if name == "Counter" else collections.OrderedDict(contents)


def decode(node, remote, depth: int = 0):
    """The value ``node`` encodes, built from builtins only; ``remote(number, type_name)`` gives
    what a handle stands for. Raises :class:`WireError` on anything malformed."""
    kind = type(node)
    if node is None or kind is bool or kind is int or kind is float or kind is str:
        return node
    if kind is not list or not node or type(node[0]) is not str or depth >= MAX_DEPTH:
        raise WireError(f"not an encoded value: {str(node)[:80]}")
    tag, items = node[0], node[1:]
    if tag == "B" and len(items) == 1 and type(items[0]) is str:
        try:
            return items[0].encode("latin-1")
        except UnicodeEncodeError:
            raise WireError("bytes out of range") from None
    if tag == "C" and len(items) == 2 and all(type(x) in (int, float) for x in items):
        return complex(items[0], items[1])
    if tag == "H" and len(items) == 2 and type(items[0]) is int and type(items[1]) is str:
        return remote(items[0], items[1])
    if tag == "Y" and len(items) == 1 and type(items[0]) is str and _builtin_type(items[0]) is not None:
        return _builtin_type(items[0])
    if tag == "K":
        return _decode_collection(items, remote, depth)
    values = [decode(item, remote, depth + 1) for item in items]
    try:
        if tag == "L":
            return values
        if tag == "T":
            return tuple(values)
        if tag == "S":
            return set(values)
        if tag == "F":
            return frozenset(values)
        if tag == "D" and len(values) % 2 == 0:
            return dict(values[i : i + 2] for i in range(0, len(values), 2))
    except TypeError as e:  # an unhashable key or member
        raise WireError(str(e)) from None
    raise WireError(f"unknown tag {tag!r}")


def send(fd: int, message) -> None:
    """Write one frame: 4 bytes of length, then ``message`` as JSON."""
    data = json.dumps(message, separators=(",", ":")).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int, limit: int):
    """Read one frame; None at end of file. Raises :class:`WireError` for a frame over ``limit``
    bytes or one that is not JSON."""
    head = _exactly(fd, _HEADER.size)
    if head is None:
        return None
    (size,) = _HEADER.unpack(head)
    if size > limit:
        raise WireError(f"a message of {size} bytes (the limit is {limit})")
    data = _exactly(fd, size)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise WireError(f"not JSON: {e}") from None
