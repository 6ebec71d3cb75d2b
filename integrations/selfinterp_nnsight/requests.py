"""What a remote request carries: record the serialised requests nnsight builds.

`recording_requests()` wraps nnsight's own request serialiser, so with `remote="local"` (or a real
NDIF run) every request made inside the block is kept as the exact bytes that would be sent
(uncompressed). Tests use it to prove a request carries the adapter's tensors and not the model;
`modules_needed` lists the modules a server must have to load one (none of this package's);
`request_sizes` reports the sizes the docs quote.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def recording_requests():
    """Yield a list that fills with the serialised (uncompressed) bytes of each request."""
    from nnsight.schema.request import RequestModel

    blobs: list[bytes] = []
    original = RequestModel.serialize

    def serialize(tracer, *args, **kwargs):
        blob = original(tracer, *args, **kwargs)
        blobs.append(blob if not kwargs.get("compress", True) else original(tracer, compress=False))
        return blob

    RequestModel.serialize = staticmethod(serialize)
    try:
        yield blobs
    finally:
        RequestModel.serialize = original


def modules_needed(blob: bytes, model) -> set[str]:
    """The modules a server must import to load `blob` (a request from `recording_requests`, for
    the nnsight `model`): those its classes and functions are referenced from, and those imported
    by name. NDIF has neither this package nor a plugin's, so a request naming one fails there.

    Needed because the `remote="local"` rehearsal cannot tell: it hides sys.path entries and
    modules, but an editable install's finder (in sys.meta_path) imports the package again."""
    import linecache

    from nnsight.intervention.serialization import CustomCloudUnpickler
    from nnsight.schema.request import RequestModel

    needed: set[str] = set()

    class Recording(CustomCloudUnpickler):
        def find_class(self, module, name):
            needed.add(module)
            found = super().find_class(module, name)
            if (module, name) != ("cloudpickle.cloudpickle", "subimport"):
                return found

            def subimport(module_name):  # cloudpickle's import of a module object by its name
                needed.add(module_name)
                return found(module_name)

            return subimport

    lines = dict(linecache.cache)  # deserialising puts the block's source in place of its file's
    try:
        RequestModel.deserialize(blob, model._remoteable_persistent_objects(), unpickler=Recording)
    finally:
        linecache.cache.clear()
        linecache.cache.update(lines)
    return needed


def request_sizes(model, tokenizer, vectors, labels) -> dict:
    """Bytes of one explain request and one training-step request for `len(vectors)` vectors, for a
    scalar-affine and a full-rank adapter on `model` (a transformers model, wrapped here)."""
    from nnsight import TransformersModel

    from selfinterp_plugins import Explainer, Sampling

    lm = TransformersModel(model, tokenizer=tokenizer)
    sizes = {}
    for kind in ("scalar_affine", "full_rank"):
        explainer = Explainer.create(lm, adapter=kind, template="echo")
        found = {}
        with recording_requests() as blobs:
            explainer.explain(vectors, sampling=Sampling(max_new_tokens=4), batch_size=len(vectors), progress=False,
                              remote="local")
        found["explain"] = len(blobs[-1])
        with recording_requests() as blobs, explainer._remote("local"):
            explainer.loss(vectors, labels).backward()
        found["training step"] = len(blobs[-1])
        sizes[kind] = {"adapter_floats": explainer.adapter.num_trainable(), "bytes": found}
    # nnsight's own share: a request on the same prompts that injects nothing and reads one argmax
    ids = explainer.prompt_ids.expand(len(vectors), -1)
    with recording_requests() as blobs:
        with lm.trace(ids, remote="local"):
            lm.output.logits[:, -1].argmax(-1).save()
    sizes["no adapter"] = {"adapter_floats": 0, "bytes": {"bare trace": len(blobs[-1])}}
    return sizes
