"""The backend conformance suite: hold any backend to the `hf` backend on tiny models.

An adapter trained through one backend must run on every other with the same outputs, so a
backend is tested against `hf` on the same weights rather than against itself. Subclass
`BackendConformance` in a test module (its name starting with `Test`, so pytest collects it) and
say how to turn a tiny transformers model into your backend:

    from selfinterp_plugins.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        archs = ("llama", "gpt2")          # tiny architectures your backend can run
        def make_backend(self, model, tokenizer):
            return MyBackend(convert(model), tokenizer)

Each `test_*` method checks one property on every arch in `archs` (`selfinterp_plugins.models.
TINY_ARCHS`; built with `tiny_model(arch, seed)`, a fresh model for the backend under test and
another for the hf reference), naming the arch, site and mode of a failure. The checks use only
public names and plain asserts (`torch.testing.assert_close`): this module imports no pytest, and
the library never imports it.
"""

from __future__ import annotations

import tempfile

import torch

from . import Explainer, PromptTemplate, Sampling, Site
from .backends import Backend, HFBackend, pad_token_id
from .errors import BackendError
from .models import tiny_model

_BUILT: dict[tuple[type, str], tuple[Backend, Backend]] = {}


class BackendConformance:
    """Mixin of tests holding `make_backend(model, tokenizer)`'s backend to `hf`."""

    #: tiny architectures to run on (see `selfinterp_plugins.models.TINY_ARCHS`)
    archs: tuple[str, ...] = ("llama", "gpt2")
    seed: int = 0
    #: absolute tolerance on logits, losses and captured values (another implementation of the same
    #: model sums in another order: 1e-4 is still far below any real difference)
    atol: float = 1e-5
    #: relative and absolute tolerance on the adapter's gradients
    grad_rtol: float = 1e-4
    grad_atol: float = 1e-6
    #: False for a backend whose `logits` cannot be differentiated (nnsight remote: train with `loss`)
    differentiable_logits: bool = True
    #: False for a backend whose `logits` does not go through `run` (nnsight remote: one request)
    runs_through_primitives: bool = True

    def make_backend(self, model, tokenizer) -> Backend:
        """The backend under test, running the weights of the transformers `model`."""
        raise NotImplementedError("Define make_backend(model, tokenizer) in your test class.")

    # ---- setup ----------------------------------------------------------------------------

    def pair(self, arch: str) -> tuple[Backend, Backend]:
        """(hf reference, backend under test) on two copies of the same tiny model; built once."""
        key = (type(self), arch)
        if key not in _BUILT:
            reference = HFBackend(*tiny_model(arch, seed=self.seed))
            backend = self.make_backend(*tiny_model(arch, seed=self.seed))
            assert isinstance(backend, Backend), f"make_backend returned {type(backend).__name__}, not a Backend"
            _BUILT[key] = (reference, backend)
        return _BUILT[key]

    def sites(self, backend: Backend) -> list[Site]:
        last = backend.n_layers - 1
        return [Site.parse(name) for name in ("embed", "resid_pre.0", f"resid_pre.{last}", "resid_post.0",
                                              f"resid_post.{last}")]

    def close(self, got, want, what: str, atol: float | None = None):
        torch.testing.assert_close(torch.as_tensor(got).float().cpu(), torch.as_tensor(want).float().cpu(), rtol=0,
                                   atol=self.atol if atol is None else atol, msg=lambda m: f"{what}: {m}")

    # ---- facts ----------------------------------------------------------------------------

    def test_facts_equal_hf(self):
        for arch in self.archs:
            reference, backend = self.pair(arch)
            assert backend.d_model == reference.d_model, arch
            assert backend.n_layers == reference.n_layers, arch
            assert backend.fingerprint() == reference.fingerprint(), f"{arch}: the same weights, another fingerprint"
            ids = torch.tensor([[1, 5, 9], [200, 7, 3]])
            self.close(backend.embed_tokens(ids), reference.embed_tokens(ids), f"{arch} embed_tokens")
            assert abs(backend.typical_embed_norm - reference.typical_embed_norm) < 1e-3 * reference.typical_embed_norm

    def test_a_site_past_the_last_layer_is_refused(self):
        for arch in self.archs:
            _, backend = self.pair(arch)
            ids, mask, positions, _ = training_batch(backend)
            soft = soft_tokens(backend, ids.shape[0])
            for site in (Site("resid_pre", backend.n_layers), Site("resid_post", backend.n_layers + 3)):
                for call in (lambda: backend.logits(ids, soft, mask, site, positions),
                             lambda: backend.generate(ids, soft, mask, site, Sampling(max_new_tokens=2), lambda out: False),
                             lambda: backend.capture([[1, 2, 3]], [site]),
                             lambda: backend.capture_all(ids, site)):
                    try:
                        call()
                    except BackendError as error:
                        assert "past the last layer" in str(error), str(error)
                    except Exception as error:  # noqa: BLE001 - any other failure is the finding
                        raise AssertionError(f"{arch}: {site.name} raised {type(error).__name__}, not BackendError") from error
                    else:
                        raise AssertionError(f"{arch}: {site.name} was not refused")

    # ---- logits ---------------------------------------------------------------------------

    def test_logits_equal_hf_at_every_site_and_mode(self):
        """Every site kind, both modes, the shared prefix reused or not, positions shared by the
        rows (the head at those positions only) or different per row."""
        for arch in self.archs:
            reference, backend = self.pair(arch)
            ids, mask, positions, first = training_batch(backend)
            soft = soft_tokens(backend, ids.shape[0])
            per_row = torch.stack([positions[0], positions[0].flip(0), positions[0] - 1])
            for base in self.sites(backend):
                for site in (base, Site(base.kind, base.layer, "add_normmatched", 2.0)):
                    for pos in (positions, per_row):
                        with torch.no_grad():
                            want = reference.logits(ids, soft, mask, site, pos, 0)
                            for prefix_len in (0, first):
                                got = backend.logits(ids, soft, mask, site, pos, prefix_len)
                                self.close(got, want, f"{arch} {site.name} {site.mode} prefix_len={prefix_len}")

    def test_the_shared_prefix_is_run_once_and_the_rest_per_call(self):
        """With `prefix_len`, `run` sees the template's shared prefix once (one row), then only the
        tokens after it: the cost of the prefix is paid once, not per row and per call."""
        if not self.runs_through_primitives:
            return
        for arch in self.archs:
            _, backend = self.pair(arch)
            ids, mask, positions, first = training_batch(backend)
            soft = soft_tokens(backend, ids.shape[0])
            seen, run = [], backend.run

            def recording(input_ids, *args, **kwargs):
                seen.append(tuple(input_ids.shape))
                return run(input_ids, *args, **kwargs)

            backend.run = recording
            try:
                with torch.no_grad():
                    backend.logits(ids, soft, mask, Site(), positions, first - 1)  # another prefix is stored
                    seen.clear()
                    for _ in range(2):
                        backend.logits(ids, soft, mask, Site(), positions, first)
            finally:
                del backend.run
            rest = (ids.shape[0], ids.shape[1] - first)
            assert seen == [(1, first), rest, rest], f"{arch}: run saw {seen}, expected the prefix once then {rest} per call"

    def test_batched_logits_equal_one_by_one(self):
        for arch in self.archs:
            _, backend = self.pair(arch)
            ids, mask, positions, first = training_batch(backend)
            soft = soft_tokens(backend, ids.shape[0])
            site = Site("resid_pre", backend.n_layers - 1)
            with torch.no_grad():
                batched = backend.logits(ids, soft, mask, site, positions, first)
                for i in range(ids.shape[0]):
                    alone = backend.logits(ids[i:i + 1], soft[i:i + 1], mask[i:i + 1], site, positions[i:i + 1], first)
                    self.close(alone[0], batched[i], f"{arch} row {i}")

    def test_logits_are_differentiable_in_the_soft_tokens(self):
        if not self.differentiable_logits:
            return
        for arch in self.archs:
            reference, backend = self.pair(arch)
            ids, mask, positions, first = training_batch(backend)
            grads = []
            for each in (reference, backend):
                soft = soft_tokens(backend, ids.shape[0]).requires_grad_(True)
                each.logits(ids, soft, mask, Site("resid_post", 0), positions, first).logsumexp(-1).sum().backward()
                grads.append(soft.grad)
            assert grads[1] is not None, f"{arch}: no gradient reached the soft tokens"
            torch.testing.assert_close(grads[1], grads[0], rtol=self.grad_rtol, atol=self.atol, msg=arch)

    # ---- generation -----------------------------------------------------------------------

    def test_greedy_generation_equals_hf_with_rows_stopping_early(self):
        for arch in self.archs:
            reference, backend = self.pair(arch)
            template, prompt, pmask, first = chat_prompt(backend)
            n = 4
            soft = soft_tokens(backend, n, seed=3)
            sampling = Sampling(max_new_tokens=8)
            ids, mask = prompt.expand(n, -1), pmask.expand(n, -1)
            for site in (Site(), Site("resid_post", 0)):
                free = reference.generate(ids, soft, mask, site, sampling, lambda out: False)
                stop = free[0][min(2, len(free[0]) - 1)]

                def is_finished(out, stop=stop):
                    return out[-1] == stop

                want = reference.generate(ids, soft, mask, site, sampling, is_finished, first)
                got = backend.generate(ids, soft, mask, site, sampling, is_finished, first)
                assert got == want, f"{arch} {site.name}: {got} != hf's {want}"
                one_by_one = [backend.generate(ids[:1], soft[i:i + 1], mask[:1], site, sampling, is_finished)[0]
                              for i in range(n)]
                assert got == one_by_one, f"{arch} {site.name}: batched {got} != one by one {one_by_one}"

    def test_injection_happens_in_the_prefill_only(self):
        """Generation equals recomputing the whole sequence each step with the soft token at the
        prompt's placeholders only (the generated tokens are never injected)."""
        for arch in self.archs:
            _, backend = self.pair(arch)
            _, prompt, pmask, first = chat_prompt(backend)
            soft = soft_tokens(backend, 1, seed=5)
            for site in (Site(), Site("resid_pre", backend.n_layers - 1)):
                got = backend.generate(prompt[None], soft, pmask[None], site, Sampling(max_new_tokens=5),
                                       lambda out: False, first)[0]
                seq, want = prompt.clone(), []
                for _ in range(5):
                    mask = torch.zeros(1, len(seq), dtype=torch.bool)
                    mask[0, : len(prompt)] = pmask
                    with torch.no_grad():
                        logits = backend.logits(seq[None], soft, mask, site, torch.tensor([[len(seq) - 1]]))
                    want.append(int(logits[0, -1].argmax()))
                    seq = torch.cat([seq, torch.tensor(want[-1:])])
                assert got == want, f"{arch} {site.name}: generated {got}, recomputed {want}"

    # ---- capture --------------------------------------------------------------------------

    def test_capture_and_capture_all_equal_hf(self):
        for arch in self.archs:
            reference, backend = self.pair(arch)
            rows = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12]]
            sites = self.sites(backend)[::-1]  # any order
            for positions in (None, [-1, 0, 2], [-2, 1, -4]):
                self.close(backend.capture(rows, sites, positions), reference.capture(rows, sites, positions),
                           f"{arch} capture at {positions}")
            padded = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]])
            for site in sites:
                got = backend.capture_all(padded, site)
                assert got.shape == (2, 5, backend.d_model) and got.dtype == torch.float32, f"{arch} {tuple(got.shape)}"
                self.close(got, reference.capture_all(padded, site), f"{arch} capture_all {site.name}")
            for positions in ([0, 3, 0], [-6, 0, 0]):
                try:
                    backend.capture(rows, sites[:1], positions)
                except BackendError:
                    continue
                raise AssertionError(f"{arch}: capture position {positions} outside a prompt was not refused")

    # ---- through an explainer -------------------------------------------------------------

    def twins(self, arch: str, site: str = "resid_pre.1", adapter: str = "scalar_affine"):
        """An explainer on the backend under test and one on hf, with the same random adapter."""
        reference, backend = self.pair(arch)
        ours = Explainer.create(backend, adapter=adapter, template="echo", site=site)
        theirs = Explainer.create(reference, adapter=adapter, template="echo", site=site)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for p in ours.adapter.parameters():
                p.add_(torch.randn(p.shape, generator=generator).to(p) * 0.5)
        theirs.adapter.load_state_dict(ours.adapter.state_dict())
        return ours, theirs

    def test_adapter_gradients_equal_hf(self):
        labels = ["cat", "a dog", "the big red house", "x"]
        for arch in self.archs:
            for site in ("embed", "resid_post.0"):
                for adapter in ("scalar_affine", "full_rank"):
                    ours, theirs = self.twins(arch, site, adapter)
                    vectors = torch.randn(4, ours.backend.d_model, generator=torch.Generator().manual_seed(1)) * 3
                    losses = []
                    for explainer in (ours, theirs):
                        explainer.adapter.zero_grad()
                        loss = explainer.loss(vectors, labels)
                        loss.backward()
                        losses.append(loss.detach())
                    what = f"{arch} {site} {adapter}"
                    self.close(losses[0], losses[1], f"{what} loss")
                    for (name, p), q in zip(ours.adapter.named_parameters(), theirs.adapter.parameters()):
                        assert (p.grad is None) == (q.grad is None), f"{what} {name}: gradient present on one side only"
                        if q.grad is not None:
                            torch.testing.assert_close(p.grad, q.grad, rtol=self.grad_rtol, atol=self.grad_atol,
                                                       msg=lambda m, n=name: f"{what} grad {n}: {m}")

    def test_save_and_reload_give_the_same_outputs(self):
        sampling = Sampling(max_new_tokens=6)
        labels = ["cat", "a dog", "the big red house"]
        for arch in self.archs:
            reference, backend = self.pair(arch)
            ours, _ = self.twins(arch)
            vectors = torch.randn(3, backend.d_model, generator=torch.Generator().manual_seed(2)) * 5
            texts = [r["text"] for r in ours.explain(vectors, sampling=sampling, progress=False)]
            with torch.no_grad():
                loss = ours.loss(vectors, labels)
            with tempfile.TemporaryDirectory() as directory:
                ours.save_pretrained(directory)
                again = Explainer.from_pretrained(directory, model=backend)
                on_hf = Explainer.from_pretrained(directory, model=reference)  # the same fingerprint
            assert [r["text"] for r in again.explain(vectors, sampling=sampling, progress=False)] == texts, arch
            assert [r["text"] for r in on_hf.explain(vectors, sampling=sampling, progress=False)] == texts, arch
            with torch.no_grad():
                self.close(again.loss(vectors, labels), loss, f"{arch} reloaded loss")


# ---- inputs ----------------------------------------------------------------------------------


def chat_prompt(backend: Backend):
    """(template, prompt ids, placeholder mask, shared prefix length) of the chat template."""
    template = PromptTemplate.chat(backend.tokenizer)
    prompt = template.prompt_ids(backend.tokenizer)
    mask = prompt == template.placeholder_id(backend.tokenizer)
    return template, prompt, mask, int(mask.nonzero()[0])


def soft_tokens(backend: Backend, n: int, seed: int = 0) -> torch.Tensor:
    """`n` soft tokens of random direction, three times the typical embedding norm."""
    v = torch.randn(n, backend.d_model, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=-1, keepdim=True) * backend.typical_embed_norm * 3


def training_batch(backend: Backend, labels=("dog", "golden retriever", "a")):
    """Right-padded prompt + target rows as `Explainer.loss` builds them: (ids, mask, positions,
    shared prefix length)."""
    template, prompt, pmask, first = chat_prompt(backend)
    tok = backend.tokenizer
    targets = [template.target_ids(tok, label) for label in labels]
    width = max(map(len, targets))
    ids = torch.full((len(labels), len(prompt) + width), pad_token_id(tok), dtype=torch.long)
    ids[:, : len(prompt)] = prompt
    for i, target in enumerate(targets):
        ids[i, len(prompt) : len(prompt) + len(target)] = torch.tensor(target)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, : len(prompt)] = pmask
    positions = (len(prompt) - 1 + torch.arange(width)).expand(len(labels), width)
    return ids, mask, positions, first


__all__ = ["BackendConformance", "chat_prompt", "soft_tokens", "training_batch"]
