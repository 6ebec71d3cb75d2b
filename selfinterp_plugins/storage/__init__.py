"""The storage layer: every read and write of an artifact, by the core and by every plugin.

An artifact is a directory the library wrote, or a stranger did (a download). Whatever its files
say, reading it never writes, and nothing it names reaches outside it:

- a file name that a record gives (`weights_file` in a config, a diff id in an index) is a bare
  name inside the artifact's directory, resolved by `member` (no separator, no `..`, not
  absolute, not a symlink leading out), or an `ArtifactError`;
- readers are bounded and never unpickle (`read_json`, `read_jsonl`, `read_bytes`,
  `load_safetensors`, `load_safetensors_with_metadata` for a header's `__metadata__`; another
  paper's `torch.save` file only through torch's restricted unpickler, `load_torch_weights_only`,
  which refuses by name a file that needs more than tensors;
  `check_artifact_dir` refuses pickle files and symlinks out by name); what
  another library's loader raises on a file is one ArtifactError (`foreign_read_errors`);
- writers are atomic and never follow a link planted where they write (`write_json`,
  `write_text_atomic`, `write_bytes_atomic`, `save_safetensors`, `JsonlWriter`); a directory's
  lock file is created without following links (`DirectoryLock`);
- an artifact of several files commits them together (`save_serialised_committed`, read back
  with `committed_files` / `usual_names`), so a kill leaves the old artifact or the new one;
- a resumable run refuses another run's output (`check_same_run` for checkpoints, `check_output_run`
  for an output file's `<file>.run.json`; digests by `sha256_hex`, the weights' dtype by `model_dtype`).

Field checks of the files' contents (ranges, types) are `selfinterp_plugins.storage.validation`.
The modules with a leading underscore are this layer's machinery; plugins use the names below.
"""

from ._commits import committed_files, record_free, save_serialised_committed, usual_names
from ._files import (
    JsonlWriter,
    check_artifact_dir,
    foreign_read_errors,
    load_safetensors,
    load_safetensors_with_metadata,
    load_torch_weights_only,
    output_errors,
    parse_json,
    read_bytes,
    read_json,
    read_jsonl,
    save_safetensors,
    write_bytes_atomic,
    write_json,
    write_text_atomic,
)
from ._locks import DirectoryLock
from ._manifests import check_output_run, check_same_run, model_dtype, sha256_hex
from ._paths import member

__all__ = [
    "DirectoryLock", "JsonlWriter", "check_artifact_dir", "check_output_run", "check_same_run", "committed_files",
    "foreign_read_errors", "load_safetensors", "load_safetensors_with_metadata", "load_torch_weights_only", "member",
    "model_dtype", "output_errors", "parse_json", "read_bytes", "read_json", "read_jsonl", "record_free",
    "save_safetensors", "save_serialised_committed", "sha256_hex", "usual_names", "write_bytes_atomic", "write_json",
    "write_text_atomic",
]
