"""Which Python globals a checkpoint's pickle data names, found without unpickling it.

Used only to explain why :mod:`~model_zoo.checkpoint.reading` refused a file: the
refusal itself is ``torch.load(weights_only=True)``'s, and nothing here decides whether
a file loads. torch's own message names at most the first global it met, differently
per torch version and per pickle protocol (protocols 0 and 4 only give "Unsupported
operand"), so the opcodes are read instead, with :mod:`pickletools`, which never
executes anything. A file that names a function that runs commands or code
(``posix.system``, ``builtins.eval`` ...) is hostile, not a checkpoint that merely stores
Python objects, and its message says so.
"""

from __future__ import annotations

import pickletools
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# Reading stops after this much pickle data or this many opcodes: the names that
# matter come before the tensors' bytes, and a damaged file must not keep us busy.
_MAX_BYTES = 64 * 2**20
_MAX_OPCODES = 2_000_000
_MAX_PICKLES = 5  # torch's legacy format: magic number, version, sys info, data, keys

# Modules any of whose functions run commands, load code or open connections.
_CODE_MODULES = frozenset(
    {
        "os", "posix", "nt", "sys", "subprocess", "_posixsubprocess", "pty", "shutil",
        "commands", "popen2", "platform", "socket", "webbrowser", "runpy", "importlib",
        "imp", "code", "codeop", "pdb", "bdb", "timeit", "ctypes", "cffi", "marshal",
        "pickle", "_pickle", "cPickle", "dill", "shelve", "multiprocessing", "asyncio",
        "signal", "urllib", "http", "ftplib", "smtplib", "telnetlib", "requests", "torch.hub",
    }
)  # fmt: skip
# Builtins that evaluate, import, open files or reach any attribute (the usual way
# to get at a function that is not named directly).
_CODE_BUILTINS = frozenset(
    {
        "eval", "exec", "execfile", "compile", "open", "input", "__import__", "getattr",
        "setattr", "delattr", "globals", "locals", "vars", "breakpoint", "apply", "help",
        "exit", "quit", "file", "reload",
    }
)  # fmt: skip
_BUILTIN_MODULES = ("builtins", "__builtin__", "__builtins__")
_CODE_NAMES = frozenset(
    {
        "io.open", "_io.open", "io.FileIO", "_io.FileIO", "operator.attrgetter",
        "operator.methodcaller", "types.FunctionType", "types.CodeType",
        "types.LambdaType", "numpy.load", "numpy.testing._private.utils.runstring",
        "torch.load", "torch.jit.load", "torch.hub.load",
    }
)  # fmt: skip

_STRING_OPS = frozenset(
    {
        "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
        "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    }
)  # fmt: skip
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MARK = object()


def runs_code(name: str) -> bool:
    """Whether the global ``module.name`` is a function that runs commands or code."""
    module, _, attr = name.rpartition(".")
    if module in _BUILTIN_MODULES:
        return attr in _CODE_BUILTINS
    if name in _CODE_NAMES:
        return True
    return any(module == m or module.startswith(m + ".") for m in _CODE_MODULES)


def code_global(path: str | Path) -> str | None:
    """The first global of the file's pickles that runs code (see :func:`runs_code`)."""
    return next((name for name in pickled_globals(path) if runs_code(name)), None)


def pickled_globals(path: str | Path) -> list[str]:
    """The globals (``module.name``) that the pickle data of a checkpoint file names.

    Reads the ``*.pkl`` members of torch's zip format, or the pickles at the start of
    its legacy format (or of a plain pickle file). Never raises: unreadable data ends
    the list.
    """
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.infolist():
                    if member.filename.endswith(".pkl"):
                        with archive.open(member) as stream:
                            found += _scan(_Bounded(stream), pickles=1)
        else:
            with open(path, "rb") as stream:
                found += _scan(_Bounded(stream), pickles=_MAX_PICKLES)
    except Exception:  # a damaged archive: what was found so far is all there is
        pass
    # Protocols 0-2 write Python 2's name of the builtins module, which unpickling maps back.
    found = [f"builtins.{n[12:]}" if n.startswith("__builtin__.") else n for n in found]
    return list(dict.fromkeys(found))


class _Bounded:
    """The ``read`` and ``readline`` of a stream, ending after :data:`_MAX_BYTES`."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream, self._left = stream, _MAX_BYTES

    def read(self, size: int = -1) -> bytes:
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._stream.read(size)
        self._left -= len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = self._left if size is None or size < 0 else min(size, self._left)
        data = self._stream.readline(limit)
        self._left -= len(data)
        return data


def _scan(stream: _Bounded, pickles: int) -> list[str]:
    found: list[str] = []
    for _ in range(pickles):
        try:
            for name in _globals_of_one_pickle(stream):
                found.append(name)
        except Exception:  # not (or no longer) pickle data: raw tensor bytes, damage
            break
    return found


def _globals_of_one_pickle(stream: _Bounded) -> Iterator[str]:
    """Follow the stack just enough to know the strings STACK_GLOBAL takes."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for ops, (opcode, arg, _) in enumerate(pickletools.genops(stream)):
        if ops >= _MAX_OPCODES:
            return
        name = opcode.name
        if name in _STRING_OPS:
            stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name in _GET_OPS:
            stack.append(memo.get(arg))
        elif name in _PUT_OPS:
            memo[arg] = stack[-1] if stack else None
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif name in ("GLOBAL", "INST"):
            yield ".".join(str(arg).split(" ", 1))
            _apply(opcode, stack)
        elif name == "STACK_GLOBAL":
            attr = stack.pop() if stack else None
            module = stack.pop() if stack else None
            if isinstance(module, str) and isinstance(attr, str):
                yield f"{module}.{attr}"
            stack.append(None)
        elif name == "STOP":
            return
        else:
            _apply(opcode, stack)


def _apply(opcode: pickletools.OpcodeInfo, stack: list[Any]) -> None:
    """The stack effect of an opcode whose values do not matter here."""
    before = opcode.stack_before
    if pickletools.markobject in before:
        while stack and stack.pop() is not _MARK:
            pass
        count = before.index(pickletools.markobject)
    else:
        count = len(before)
    del stack[len(stack) - min(count, len(stack)) :]
    for item in opcode.stack_after:
        stack.append(_MARK if item is pickletools.markobject else None)
