"""Reading and writing artifact files safely: safetensors and JSON only, never pickle (another
paper's `torch.save` files are read by torch's restricted unpickler alone: `load_torch_weights_only`).

Every reader turns a missing, truncated or malformed file into an `ArtifactError` that names
the file and says how to fix it, so a corrupt download never surfaces as a raw traceback. The
readers are bounded (validation.py has the limits): a file over its byte limit is refused before
it is read, JSON nested deeper than `MAX_JSON_DEPTH` is refused, a gzip input stops inflating past
`MAX_INFLATED_BYTES`, so a small hostile file cannot exhaust memory or the interpreter's stack.
JSONL writers flush each record, so a crash loses at most the record being written.

Every other file is written atomically (`write_text_atomic`, `write_bytes_atomic`, `write_json`,
`save_safetensors`): to a temporary name beside it, flushed to disk, then renamed over it, so a
kill leaves the old file or the new one, never half a file. An `OSError` while writing (a full
disk, a read-only or foreign directory) becomes an `OutputError` naming the path and the fix,
and the temporary file is removed.

Every step that changes a file (writing a temporary file, renaming, unlinking, truncating,
opening to append, appending) first calls `_step(name, path)`: a no-op unless a test sets
`_step_hook`, which is how the reliability tests kill a save at each step in turn or make one
step fail with ENOSPC (tests/reliability/test_atomic_writes.py).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..errors import ArtifactError, OutputError, OutputLockedError
from ._paths import link_stays_inside, open_for_write
from .validation import (
    MAX_INFLATED_BYTES,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_JSONL_BYTES,
    json_depth_ok,
    unencodable_text,
)

# public: plugins write their artifacts (checkpoints, label files, diffs) with the same guarantees as
# the core's: no pickle, atomic files, resumable JSONL, bounded readers, an ArtifactError (reading) or
# OutputError (writing) naming the file and the fix
__all__ = ["PICKLE_SUFFIXES", "JsonlWriter", "check_artifact_dir", "foreign_read_errors", "load_safetensors",
           "load_safetensors_with_metadata", "load_torch_weights_only", "output_errors", "parse_json",
           "read_bytes", "read_json", "read_jsonl", "save_safetensors", "write_bytes_atomic", "write_json",
           "write_text_atomic"]

#: file types that unpickle when torch (or pickle) reads them: refused by name, before anything reads them
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: the largest `torch.save` file read (mapped, not read into memory): a published full fine-tune of a
#: 4B model is about 9 GB
MAX_TORCH_BYTES = 64 << 30


#: Fault injection, for tests only: when set, `_step_hook(step, path)` runs before each step that
#: changes a file ("write" a temporary file, "replace", "unlink", "truncate" or "newline" to
#: repair a JSONL tail, "open" to append, "append" a record, "serialise" another library's files
#: into a scratch folder: storage.save_serialised_committed). Raising from it simulates a kill (a
#: BaseException nothing catches) or a failing disk (an OSError). Writers elsewhere (storage._commits,
#: training) call `_step` too, inside their `output_errors`.
_step_hook: Callable[[str, Path], None] | None = None


def _step(step: str, path: str | Path) -> None:
    if _step_hook is not None:
        _step_hook(step, Path(path))


#: errno values that mean "this place cannot take the file", with the fix
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _describe_output_error(err: OSError, path: str | Path) -> str:
    """One line for a failed write of `path`: what happened and the fix."""
    path = Path(path)
    where = path.parent if str(path.parent) else Path(".")
    reason = err.strerror or str(err)
    if err.errno in _NO_SPACE:
        return (f"Cannot write {path}: {reason}; free space on the disk holding {where} "
                "or choose an output (--out / --output) on another disk.")
    if err.errno in _NOT_WRITABLE:
        return (f"Cannot write {path}: {reason} ({where} is not writable); choose a writable --out / --output "
                f"or make {where} writable.")
    return f"Cannot write {path}: {reason}; choose another output (--out / --output)."


def try_flock(fd: int) -> bool:
    """Take an exclusive lock on an open file without waiting (JsonlWriter here, `locks.DirectoryLock`
    for directories): True when taken (or where the OS has no flock: the lock is a guard, not a
    requirement), False when another open file holds it, in this process or another."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def output_errors(path: str | Path) -> Iterator[None]:
    """Turn an `OSError` raised while writing `path` into an `OutputError` naming it and the fix,
    so a full disk or a read-only directory reaches the user as one line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise OutputError(_describe_output_error(err, path)) from None


@contextlib.contextmanager
def foreign_read_errors(source: str | Path, library: str) -> Iterator[None]:
    """Turn what another library's loader raises on a file it cannot read (PEFT on an
    adapter_config.json whose `r` is a string, SAE-Lens on a cfg.json with an unknown
    architecture: a TypeError, KeyError or ValueError from deep inside it) into one
    ArtifactError naming the file and the fix. Our own refusals pass through unchanged."""
    from ..errors import SelfInterpError

    try:
        yield
    except SelfInterpError:
        raise
    except Exception as err:  # a stranger's file reaches code paths of theirs we cannot enumerate
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"{source} could not be read by {library} ({type(err).__name__}: {reason}); "
                            "re-save it with this library, or re-download it.") from None


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a power cut after it keeps the new name); best effort,
    as some filesystems and OSes cannot open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically, the one place every writer of whole files goes through:
    to `<path>.tmp`, fsynced, then renamed over `path` (and the directory fsynced, so the rename
    survives a power cut). A kill leaves the old file or the new one, never half of one; a failure
    (an OutputError) leaves the old file and removes the temporary one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with output_errors(path):
        try:
            _step("write", tmp)
            tmp.unlink(missing_ok=True)  # a leftover, or a link planted there: never written through
            with os.fdopen(open_for_write(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _step("replace", path)
            os.replace(tmp, path)
        except (Exception, KeyboardInterrupt):
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (see `write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode(encoding))


def check_artifact_dir(directory: str | Path, pickle_fix: str | None = None) -> Path:
    """Refuse an artifact directory a loader must not read: one holding a pickle-format file (a
    `weights_only` loader would refuse it too, but with a traceback that advises turning the check
    off), or a symlink that leads outside the directory (its files would be read from anywhere).
    `pickle_fix`: the fix the refusal of a pickle gives, where re-saving is not the user's (a download)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"No artifact directory at {directory}; pass the folder that was saved.")
    for path in sorted(directory.rglob("*")):
        if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
            raise ArtifactError(f"{path} is a pickle-format file, which is never read (it can run code); "
                                + (pickle_fix or "re-save the artifact as safetensors (save_pretrained(safe_serialization=True))."))
        if path.is_symlink() and not link_stays_inside(path, directory):
            raise ArtifactError(f"{path} is a symlink to {path.resolve()}, outside the artifact; copy the file in instead.")
    return directory


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"Missing file {path}; re-save or re-download the artifact.")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for a bad header
        raise ArtifactError(f"{path} is not a valid safetensors file ({err}); re-save or re-download it.") from None


def load_safetensors_with_metadata(path: str | Path, max_header_bytes: int = MAX_JSON_BYTES) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A safetensors file's tensors and its header's `__metadata__` (a dict of strings, or None),
    for formats that keep their config there (the selfie-adapters files). The header is read by a
    bounded read of its own (its 8-byte length first: a length past the file or `max_header_bytes`
    is a truncated or hostile file, refused before anything is allocated); the tensors by
    `load_safetensors`. Every failure is an ArtifactError naming the file."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ArtifactError(f"{path} is a pickle-format file, which is never read (it can run code); pass the "
                            ".safetensors file instead.")
    if not path.is_file():
        raise ArtifactError(f"Missing file {path}; re-save or re-download the artifact.")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or length > min(max_header_bytes, size - 8):
                raise ArtifactError(f"{path} is not a complete safetensors file (its header says {length} bytes, the "
                                    f"file holds {size}); re-download it.")
            text = f.read(length).decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{path} has a safetensors header that is not UTF-8 JSON; re-download it.") from None
    except OSError as err:
        raise ArtifactError(f"Cannot read {path} ({err.strerror or err}); check its permissions, or re-download it.") from None
    header = parse_json(text, f"{path} (safetensors header)")
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} has a safetensors header that is not a JSON object; re-download it.")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ArtifactError(f"{path}: its safetensors __metadata__ should map names to strings; re-download it.")
    return load_safetensors(path), metadata


def _existing_within(path: str | Path, max_bytes: int, what: str, fix: str) -> Path:
    """`path`, refused (an ArtifactError with the fix) when it is not a file or is over `max_bytes`:
    checked before a byte is read, so a huge or wrong file costs nothing."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"Missing file {path}; {fix}.")
    size = path.stat().st_size
    if size > max_bytes:
        raise ArtifactError(f"{path} is {size:,} bytes, over the {max_bytes:,}-byte limit for {what}; "
                            "check it is the right file (or raise the limit: max_bytes=).")
    return path


def load_torch_weights_only(path: str | Path, max_bytes: int = MAX_TORCH_BYTES):
    """What `torch.save` wrote to `path`, read by torch's restricted unpickler (`weights_only=True`)
    and nothing else: tensors, lists, tuples, dicts, strings and numbers. Some papers publish only
    this format (the DIT reference's weight diffs); a pickle can run code, so a file that names any
    other class or function (what a hostile file calls to run a command) is refused by that name
    before anything in it is called. Zip-format files are memory-mapped, so a large file costs what is
    used of it. A missing, oversized, truncated or non-torch file is an ArtifactError naming it."""
    path = _existing_within(path, max_bytes, "a torch file", "re-download it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"it names {named.group(1)}" if named else "it holds more than tensors, lists, dicts and numbers"
        raise ArtifactError(f"{path} is refused: {what}, which only a full unpickling (that can run code) would "
                            "load, and nothing in it was run; use a file that holds plain tensors (re-save it with "
                            "torch.save of tensors, lists and dicts), or one from the original publisher.") from None
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, KeyError... on a damaged file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise ArtifactError(f"{path} is truncated or not a file torch.save wrote ({type(err).__name__}: {reason}); "
                            "re-download it.") from None


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write atomically: a crash mid-write leaves the old file, never half a file. `metadata` goes
    into the header's `__metadata__` (strings only, as the format requires).

    Serialised in memory and written by `write_bytes_atomic`, not by `safetensors.torch.save_file`:
    that reports a full disk or a read-only directory as a `SafetensorError` rather than an OSError,
    and writes through a private temporary file (mode 0600, whatever the umask)."""
    from safetensors.torch import save

    write_bytes_atomic(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata))


def read_bytes(path: str | Path, max_bytes: int = MAX_JSON_BYTES, max_inflated: int = MAX_INFLATED_BYTES) -> bytes:
    """A file's bytes, refused over `max_bytes`; a `.gz` file is inflated by a bounded, streamed
    read that stops past `max_inflated` bytes (a non-gzip or truncated one is an ArtifactError)."""
    path = _existing_within(path, max_bytes, "this file", "re-save or re-download the artifact")
    if path.suffix.lower() != ".gz":
        try:
            return path.read_bytes()
        except OSError as err:  # no read permission, an I/O error
            raise ArtifactError(f"Cannot read {path} ({err.strerror or err}); check its permissions, or re-save it.") from None
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read(max_inflated + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as err:
        raise ArtifactError(f"{path} is not a complete gzip file ({err or type(err).__name__}); "
                            "re-download it or pass the uncompressed file.") from None
    if len(data) > max_inflated:
        raise ArtifactError(f"{path} inflates to over {max_inflated:,} bytes; split it, or raise the limit "
                            "(max_inflated=) if it is really that large.")
    return data


#: the only way valid UTF-8 JSON can hold a lone surrogate: a `\ud800`-`\udfff` escape
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def check_text(data, text: str, source) -> None:
    """Refuse parsed JSON holding a string no encoding can write (a lone surrogate: the escape
    `\ud800` without its pair), naming `source`; such a label or prompt loaded, then failed as a
    tokenizer's TypeError or a writer's UnicodeEncodeError. Only text with such an escape is walked."""
    if not _SURROGATE_ESCAPE.search(text):
        return
    bad = unencodable_text(data)
    if bad is not None:
        shown = bad.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise ArtifactError(f"{source} holds a lone surrogate in the string {shown[:60]!r} (an escape such as \\ud800 "
                            "without its pair, which no text encoding can write); fix that escape (a pair such as "
                            "\\ud83d\\ude00 is one character) or re-save the file.")


def parse_json(text: str, source, max_depth: int = MAX_JSON_DEPTH, *, text_check: bool = True):
    """JSON text parsed, or an ArtifactError naming `source`: malformed, nested deeper than
    `max_depth` (Python's parser recurses; 100k levels would end in RecursionError), or (unless
    `text_check=False`, for a caller that checks itself) holding a string no encoding can write."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{source} is not valid JSON ({err}); re-save or re-download it.") from None
    except RecursionError:
        too_deep = True
    else:
        too_deep = not json_depth_ok(data, max_depth)
    if too_deep:
        raise ArtifactError(f"{source} nests JSON deeper than {max_depth} levels; no file of this library does: "
                            "re-save or re-download it.")
    if text_check:
        check_text(data, text, source)
    return data


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES, expect: type = dict,
              fix: str = "re-save or re-download it"):
    """The JSON value of a file of at most `max_bytes`, nested at most MAX_JSON_DEPTH deep: an object
    (`expect=dict`, what artifacts' records are) or a list (`expect=list`, rows exported as one
    JSON array); anything else is an ArtifactError ending in `fix`."""
    path = Path(path)
    try:
        text = read_bytes(path, max_bytes).decode("utf-8")
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); {fix}.") from None
    data = parse_json(text, path)
    if not isinstance(data, expect):
        what = "a JSON object" if expect is dict else "a JSON list of rows"
        raise ArtifactError(f"{path} should hold {what}; {fix}.")
    return data


def write_json(data: dict, path: str | Path) -> None:
    """Write `data` as indented JSON, atomically (see `write_bytes_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path, tolerate_torn_tail: bool = False, max_bytes: int = MAX_JSONL_BYTES) -> list[dict]:
    """Records of a JSONL file (at most `max_bytes`). A torn last line (crash mid-write) is dropped if tolerated."""
    path = Path(path)
    records = []
    try:
        # "\n" only: splitlines() also cuts at U+2028, U+0085 ..., which JSON strings may hold
        # raw (our writers keep them, ensure_ascii=False), so such a label made its line invalid
        lines = read_bytes(path, max_bytes).decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{path} is not UTF-8 text ({err}); re-save or re-download it.") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, f"{path}:{n}", text_check=False)
        except ArtifactError:
            if tolerate_torn_tail and n == len(lines):
                break
            raise ArtifactError(f"{path}:{n} is not valid JSON (or nests too deep); fix or delete that line.") from None
        check_text(record, line, f"{path}:{n}")
        if not isinstance(record, dict):
            raise ArtifactError(f"{path}:{n} should be a JSON object; fix or delete that line.")
        records.append(record)
    return records


class JsonlWriter:
    """Append records to a JSONL file, one flushed line each, so results survive a crash.

    Opening repairs a crashed run's tail without ever rewriting the file: a complete last record
    that lost only its newline gets the newline (readers already count it as done), a torn one is
    cut off by one `truncate` to the last newline, so every earlier byte stays where it was whatever
    happens meanwhile. The file is locked (`flock`) while open: a second writer to the same file,
    from any process, fails at once instead of interleaving duplicate records.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with output_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _step("open", self.path)
            self._file = os.fdopen(open_for_write(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND), "a+b")
            try:
                self._lock()
                self._repair_tail()
            except BaseException:
                self._file.close()
                raise

    def _lock(self) -> None:
        if not try_flock(self._file.fileno()):
            raise OutputLockedError(f"{self.path} is being written by another run; wait for it to finish or "
                                    "write to another file.")

    def _repair_tail(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            return
        self._file.seek(max(0, size - (1 << 20)))
        tail = self._file.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        if cut < 0 and size > len(tail):  # a last line over 1 MiB: find its start the slow way
            self._file.seek(0)
            tail = self._file.read()
            cut = tail.rfind(b"\n")
        last = tail[cut + 1 :]
        try:
            complete = isinstance(json.loads(last.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            complete = False
        if complete:
            _step("newline", self.path)
            self._file.write(b"\n")
            self._file.flush()
        else:
            _step("truncate", self.path)
            self._file.truncate(size - len(last))

    def write(self, record: dict) -> None:
        try:
            line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        except ValueError:
            raise ArtifactError(f"A record for {self.path} holds NaN or infinity ({record!r:.200}); "
                                "pass finite numbers.") from None
        with output_errors(self.path):
            _step("append", self.path)
            self._file.write(line.encode("utf-8"))
            self._file.flush()

    def close(self) -> None:
        with output_errors(self.path):  # the last buffered bytes may not fit either
            self._file.close()  # releases the lock (closed even if that flush fails)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
