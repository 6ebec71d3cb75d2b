"""The remote path, offline: what a request carries, a model whose weights are only "remote",
retries on injected server faults, the API key check, and a long explain run that survives a
failure and resumes. Faults are injected where NDIF's would surface: in the nnsight backend that
ships the request (wrapping nnsight's own offline rehearsal, `remote="local"`)."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("nnsight")

from nnsight import TransformersModel  # noqa: E402
from nnsight.intervention.backends.local import LocalSimulationBackend  # noqa: E402
from nnsight.intervention.backends.remote import RemoteError  # noqa: E402
from nnsight.modeling.mixins.remotable import Remotable  # noqa: E402

from selfinterp_nnsight.remote import RemoteRequestError, RetryPolicy, is_transient  # noqa: E402
from selfinterp_nnsight.requests import modules_needed, recording_requests  # noqa: E402
from selfinterp_plugins import Explainer, Sampling  # noqa: E402
from selfinterp_plugins.adapters import BUILTIN_ADAPTERS  # noqa: E402
from selfinterp_plugins.errors import BackendError  # noqa: E402
from selfinterp_plugins.models import tiny_model  # noqa: E402
from selfinterp_plugins.storage._files import read_jsonl  # noqa: E402

NO_WAIT = RetryPolicy(attempts=3, backoff=0.0)
SAMPLING = Sampling(max_new_tokens=4)


@pytest.fixture(scope="module")
def lm():
    model, tok = tiny_model("llama", seed=5)
    return TransformersModel(model, tokenizer=tok)


class _HTTPStatusError(Exception):
    """Shaped like httpx's: the status is on .response."""

    def __init__(self, status):
        super().__init__(f"server answered {status}")
        self.response = type("Response", (), {"status_code": status})()


class FaultyServer:
    """Stands in for NDIF: raises the queued faults, one per request, then serves (offline)."""

    def __init__(self, faults):
        self.faults = list(faults)
        self.requests = 0

    def install(self, monkeypatch):
        def remote_backend(model, remote, blocking, job_id, verbose):
            return self._backend(LocalSimulationBackend(model))

        monkeypatch.setattr(Remotable, "_remote_backend", remote_backend)
        return self

    def _backend(self, inner):
        def run(tracer):
            self.requests += 1
            if self.faults:
                fault = self.faults.pop(0)
                if fault is not None:
                    raise fault
            return inner(tracer)

        return run


def test_a_request_carries_the_adapter_and_vectors_not_the_model(lm):
    sizes = {}
    for kind in ("scalar_affine", "full_rank"):
        explainer = Explainer.create(lm, adapter=kind, template="echo")
        with torch.no_grad():
            explainer.adapter.bias.copy_(torch.linspace(-3, 3, explainer.backend.d_model) + 0.123)
        vectors = torch.randn(4, explainer.backend.d_model)
        with recording_requests() as blobs:
            explainer.explain(vectors, sampling=SAMPLING, progress=False, remote="local")
            with explainer.backend.remote_mode("local"):
                explainer.loss(vectors, ["a", "b", "c", "d"]).backward()
        assert len(blobs) == 2
        model = lm._module
        for blob in blobs:
            assert explainer.adapter.bias.detach().numpy().tobytes() in blob
            assert vectors.numpy().tobytes() in blob
            for weight in (model.get_input_embeddings().weight[:8], model.model.layers[0].mlp.down_proj.weight[0]):
                assert weight.detach().numpy().tobytes() not in blob
            assert len(blob) < 200_000  # the model's weights are 12.7 MB
        sizes[kind] = len(blobs[1])
    d = lm._module.config.hidden_size
    assert sizes["full_rank"] - sizes["scalar_affine"] >= 4 * d * d  # the matrix travels, as floats


def _requests_of(explainer, vectors, train=True):
    with recording_requests() as blobs:
        explainer.explain(vectors, sampling=SAMPLING, progress=False, remote="local")
        if train:
            with explainer.backend.remote_mode("local"):
                explainer.loss(vectors, ["a", "b"][: len(vectors)]).backward()
    return blobs


def _ours(modules):
    return {m for m in modules if m.split(".")[0].startswith("selfinterp")}


@pytest.mark.parametrize("kind", sorted(BUILTIN_ADAPTERS) + ["raw"])
def test_a_request_needs_nothing_of_this_package_on_the_server(lm, kind):
    """Each kind's math runs inside the request and travels by value (its source): NDIF, without
    selfinterp installed, can load every request. The registrations that make it so are undone."""
    import cloudpickle
    from nnsight.ndif import pull_env

    # nnsight registers every imported module that is not pip-installed (say, a plugin imported from
    # its source directory, as tests/test_toy_backend_example.py does): those are nnsight's, not ours
    pull_env()
    before = set(cloudpickle.list_registry_pickle_by_value())
    explainer = Explainer.create(lm, adapter=kind, template="echo")
    blobs = _requests_of(explainer, torch.randn(2, explainer.backend.d_model), train=kind != "raw")
    assert len(blobs) == (1 if kind == "raw" else 2)
    for blob in blobs:
        needed = modules_needed(blob, lm)
        assert "torch" in needed and not _ours(needed), needed
    assert not _ours(set(cloudpickle.list_registry_pickle_by_value()) - before)


def test_without_shipping_the_math_a_request_would_name_this_package(lm, monkeypatch):
    """Why `code_by_value` exists: cloudpickle writes a function of an installed module as a
    reference, which NDIF cannot import (the `remote="local"` rehearsal, whose hiding an editable
    install's import finder gets round, would not notice)."""
    import contextlib

    import selfinterp_nnsight.backend

    monkeypatch.setattr(selfinterp_nnsight.backend, "code_by_value", lambda *fns: contextlib.nullcontext())
    explainer = Explainer.create(lm, adapter="scalar_affine", template="echo")
    # the rehearsal itself passes or fails by where that finder points (another checkout's copy
    # of the package may lack `math`); the request's bytes are what NDIF would get either way
    with recording_requests() as blobs, contextlib.suppress(RemoteRequestError):
        explainer.explain(torch.randn(1, explainer.backend.d_model), sampling=SAMPLING, progress=False, remote="local")
    assert "selfinterp_plugins.adapters" in modules_needed(blobs[0], lm)


def test_a_model_whose_weights_are_remote(lm, tmp_path):
    """nnsight loads a model it will run on NDIF without its weights (meta tensors); facts come
    from the config, the fingerprint and embeddings from the server."""
    lm._module.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    remote_only = TransformersModel(str(tmp_path / "m"), tokenizer=lm.tokenizer, task="text-generation")
    local = Explainer.create(lm, template="echo")
    explainer = Explainer.create(remote_only, template="echo", backend_options={"remote": "local"})
    assert not explainer.backend.is_local
    assert explainer.backend.fingerprint() == local.backend.fingerprint()
    ids = torch.tensor([[5, 6], [7, 8]])
    torch.testing.assert_close(explainer.backend.embed_tokens(ids), local.backend.embed_tokens(ids))
    vectors = torch.randn(3, local.backend.d_model) * 5
    assert ([r["text"] for r in explainer.explain(vectors, sampling=SAMPLING, progress=False)]
            == [r["text"] for r in local.explain(vectors, sampling=SAMPLING, progress=False)])


@pytest.mark.parametrize("fault", [ConnectionError("connection dropped"), TimeoutError("read timed out"),
                                   RemoteError("503 Service Unavailable"), _HTTPStatusError(502)])
def test_transient_faults_are_retried(lm, monkeypatch, fault):
    explainer = Explainer.create(lm, template="echo", backend_options={"retry": NO_WAIT})
    vectors = torch.randn(2, explainer.backend.d_model)
    expected = explainer.explain(vectors, sampling=SAMPLING, progress=False)
    server = FaultyServer([fault, fault]).install(monkeypatch)
    got = explainer.explain(vectors, sampling=SAMPLING, progress=False, remote="local")
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    assert server.requests == 3


def test_a_training_step_survives_a_dropped_connection(lm, monkeypatch):
    explainer = Explainer.create(lm, template="echo", backend_options={"retry": NO_WAIT})
    vectors = torch.randn(2, explainer.backend.d_model)
    explainer.loss(vectors, ["a", "b"]).backward()
    expected = explainer.adapter.bias.grad.clone()
    explainer.adapter.zero_grad()
    FaultyServer([ConnectionError("dropped")]).install(monkeypatch)
    with explainer.backend.remote_mode("local"):
        explainer.loss(vectors, ["a", "b"]).backward()
    torch.testing.assert_close(explainer.adapter.bias.grad, expected)


def test_errors_that_retrying_cannot_cure_fail_at_once(lm, monkeypatch):
    explainer = Explainer.create(lm, template="echo", backend_options={"retry": NO_WAIT})
    server = FaultyServer([RemoteError("RuntimeError: shape mismatch in intervention")]).install(monkeypatch)
    with pytest.raises(RemoteRequestError, match="remote='local'"):
        explainer.explain(torch.randn(1, explainer.backend.d_model), progress=False, remote="local")
    assert server.requests == 1
    assert not is_transient(_HTTPStatusError(401)) and is_transient(_HTTPStatusError(429))


def test_retries_give_up_with_a_clear_message(lm, monkeypatch):
    explainer = Explainer.create(lm, template="echo", backend_options={"retry": NO_WAIT})
    server = FaultyServer([ConnectionError("down")] * 5).install(monkeypatch)
    with pytest.raises(RemoteRequestError, match="failed 3 times"):
        explainer.explain(torch.randn(1, explainer.backend.d_model), progress=False, remote="local")
    assert server.requests == 3


@pytest.fixture
def served(lm, monkeypatch):
    """`lm` as NDIF would know it: built from a hub id (here only named so; requests are served by
    `FaultyServer`, never sent)."""
    monkeypatch.setattr(lm, "repo_id", "test-org/tiny-llama")
    return lm


def test_no_api_key_no_request_and_the_key_is_never_shown(served, monkeypatch, caplog):
    from nnsight import CONFIG

    lm = served
    explainer = Explainer.create(lm, template="echo", backend_options={"retry": NO_WAIT})
    vectors = torch.randn(1, explainer.backend.d_model)
    server = FaultyServer([]).install(monkeypatch)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(BackendError, match="NDIF_API_KEY"):
        explainer.explain(vectors, progress=False, remote=True)
    assert server.requests == 0

    secret = "sk-ndif-0123456789abcdef"
    monkeypatch.setattr(CONFIG.API, "APIKEY", secret)
    FaultyServer([ConnectionError("dropped"), _HTTPStatusError(401)]).install(monkeypatch)
    with caplog.at_level(logging.DEBUG), pytest.raises(RemoteRequestError, match="API key") as error:
        explainer.explain(vectors, progress=False, remote=True)
    assert secret not in str(error.value) and secret not in caplog.text
    assert "retry 1/2" in caplog.text


def test_a_long_remote_run_keeps_finished_batches_and_resumes(lm, monkeypatch, tmp_path):
    explainer = Explainer.create(lm, template="echo", backend_options={"retry": NO_WAIT})
    vectors = torch.randn(10, explainer.backend.d_model) * 5
    expected = explainer.explain(vectors, sampling=SAMPLING, batch_size=3, progress=False)
    out = tmp_path / "labels.jsonl"
    # batches 1 and 2 land, then the server fails for good
    FaultyServer([None, None] + [ConnectionError("down")] * 3).install(monkeypatch)
    with pytest.raises(RemoteRequestError):
        explainer.explain(vectors, sampling=SAMPLING, batch_size=3, progress=False, remote="local", output=out)
    assert len(list(read_jsonl(out))) == 6
    server = FaultyServer([]).install(monkeypatch)
    got = explainer.explain(vectors, sampling=SAMPLING, batch_size=3, progress=False, remote="local", output=out)
    assert server.requests == 2  # only the two missing batches
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    records = list(read_jsonl(out))
    assert sorted(r["id"] for r in records) == sorted(str(i) for i in range(10))


def test_remote_training_through_faults_and_a_failure_equals_an_uninterrupted_run(lm, monkeypatch, tmp_path):
    """Issue 10's remote fault injection: transient faults during a remote training run are retried,
    a run that fails for good resumes from its checkpoint, and the adapter ends equal to an
    uninterrupted run from the same seed with every step logged once."""
    from selfinterp_plugins import TrainConfig, VectorLabelDataset
    from selfinterp_plugins.storage._files import read_jsonl

    def fresh():
        return Explainer.create(lm, template="echo", backend_options={"retry": NO_WAIT})

    d = lm._module.config.hidden_size
    data = VectorLabelDataset(torch.randn(24, d, generator=torch.Generator().manual_seed(0)),
                              [{"id": str(i), "label": ["cat", "a dog", "red house"][i % 3]} for i in range(24)])
    config = TrainConfig(epochs=1, batch_size=4, seed=7, checkpoint_every=2)  # 6 steps
    reference = fresh()
    reference.train(data, config=config, progress=False)

    # requests: step 1 ok, step 2 dropped then ok, step 3 timeout then ok, step 4 ok, then down for good
    faults = [None, ConnectionError("dropped"), None, TimeoutError("timed out"), None, None] + [RemoteError("503")] * 3
    server = FaultyServer(faults).install(monkeypatch)
    with pytest.raises(RemoteRequestError, match="failed 3 times"):
        fresh().train(data, config=config, output_dir=tmp_path / "run", progress=False, remote="local")
    assert server.requests == 9
    FaultyServer([]).install(monkeypatch)
    resumed = fresh()
    resumed.train(data, config=config, output_dir=tmp_path / "run", progress=False, remote="local")
    for (name, got), expected in zip(resumed.adapter.state_dict().items(), reference.adapter.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)
    steps = [r["step"] for r in read_jsonl(tmp_path / "run" / "train_log.jsonl") if "step" in r]
    assert steps == list(range(1, 7))


@pytest.mark.parametrize("value", ["False", "off", "yes", "ndif", "ndif.example.org", 3])
def test_remote_takes_only_its_documented_values(lm, value):
    explainer = Explainer.create(lm, template="echo")
    with pytest.raises(BackendError, match="remote takes False") as error:
        explainer.explain(torch.randn(1, explainer.backend.d_model), progress=False, remote=value)
    if value in ("False", "off"):
        assert "pass remote=False" in str(error.value)
    if value in ("yes", "ndif"):
        assert "pass remote=True" in str(error.value)


def test_a_host_url_needs_the_api_key_too(served, monkeypatch):
    from nnsight import CONFIG

    explainer = Explainer.create(served, template="echo", backend_options={"retry": NO_WAIT})
    server = FaultyServer([]).install(monkeypatch)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(BackendError, match="NDIF_API_KEY"):
        explainer.explain(torch.randn(1, explainer.backend.d_model), progress=False, remote="https://ndif.example.org")
    assert server.requests == 0


@pytest.mark.parametrize("remote", [True, "https://ndif.example.org"])
def test_a_model_ndif_cannot_name_is_refused_before_any_request(lm, monkeypatch, tmp_path, remote):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", "sk-test")
    server = FaultyServer([]).install(monkeypatch)
    explainer = Explainer.create(lm, template="echo", backend_options={"retry": NO_WAIT})
    with pytest.raises(BackendError, match="model object in memory.*TransformersModel.*remote='local'"):
        explainer.explain(torch.randn(1, explainer.backend.d_model), progress=False, remote=remote)
    monkeypatch.setattr(lm, "repo_id", str(tmp_path))  # built from a local directory
    with pytest.raises(BackendError, match="local path"):
        explainer.explain(torch.randn(1, explainer.backend.d_model), progress=False, remote=remote)
    assert server.requests == 0


def test_no_network_is_not_blamed_on_ndif(served, monkeypatch):
    import socket

    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", "sk-test")
    explainer = Explainer.create(served, template="echo", backend_options={"retry": NO_WAIT})
    unreachable = [socket.gaierror(-3, "Temporary failure in name resolution"),
                   ConnectionRefusedError(111, "Connection refused")]
    for fault in unreachable:
        FaultyServer([fault] * 3).install(monkeypatch)
        with pytest.raises(RemoteRequestError, match="network, DNS or proxy") as error:
            explainer.explain(torch.randn(1, explainer.backend.d_model), progress=False,
                              remote="https://ndif.example.org")
        assert "busy" not in str(error.value) and "ndif.example.org" in str(error.value)
    FaultyServer([RemoteError("503 Service Unavailable")] * 3).install(monkeypatch)
    with pytest.raises(RemoteRequestError, match="busy or down"):
        explainer.explain(torch.randn(1, explainer.backend.d_model), progress=False, remote=True)
