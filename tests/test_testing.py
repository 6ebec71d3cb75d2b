"""The conformance suite itself: it needs no pytest, and it fails backends that break the contract
(each broken backend below differs from hf in one way and must fail the check that says so)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from selfinterp_plugins.backends import HFBackend
from selfinterp_plugins.sites import Site
from selfinterp_plugins.testing import BackendConformance


def test_the_suite_imports_without_pytest_and_the_library_without_the_suite():
    code = ("import sys; sys.modules['pytest'] = None; import selfinterp_plugins; "
            "assert 'selfinterp_plugins.testing' not in sys.modules; import selfinterp_plugins.testing")
    subprocess.run([sys.executable, "-c", code], check=True)


class InjectsWhileDecoding(HFBackend):
    """Writes the soft token into every decoding step too."""

    def generate(self, input_ids, soft, inject_mask, site, sampling, is_finished, prefix_len=0):
        run = self.run

        def always(ids, injection=None, past=None, keep_past=False):
            if injection is None:
                from selfinterp_plugins.backends import Injection

                injection = Injection(site, soft, torch.ones(ids.shape, dtype=torch.bool))
            return run(ids, injection, past, keep_past)

        self.run = always
        try:
            return super().generate(input_ids, soft, inject_mask, site, sampling, is_finished, prefix_len)
        finally:
            del self.run


class AlwaysReplaces(HFBackend):
    """Ignores the site's mode."""

    def logits(self, input_ids, soft, inject_mask, site, positions, prefix_len=0):
        return super().logits(input_ids, soft, inject_mask, Site(site.kind, site.layer), positions, prefix_len)


class ReadsOneLayerLate(HFBackend):
    def read(self, input_ids, sites, positions=None):
        shifted = [Site("resid_post", 0) if s.kind == "embed" else s for s in sites]
        return super().read(input_ids, shifted, positions)


class OwnFingerprint(HFBackend):
    def fingerprint(self):
        return "0" * 16


class NeverReusesPrefix(HFBackend):
    def reuses_prefix(self):
        return False


class NoPastCheck(HFBackend):
    def check_site(self, site):
        return site


@pytest.mark.parametrize("broken, check", [
    (InjectsWhileDecoding, "test_injection_happens_in_the_prefill_only"),
    (AlwaysReplaces, "test_logits_equal_hf_at_every_site_and_mode"),
    (ReadsOneLayerLate, "test_capture_and_capture_all_equal_hf"),
    (OwnFingerprint, "test_facts_equal_hf"),
    (NoPastCheck, "test_a_site_past_the_last_layer_is_refused"),
    (NeverReusesPrefix, "test_the_shared_prefix_is_run_once_and_the_rest_per_call"),
])
def test_a_broken_backend_fails_the_check_that_covers_it(broken, check):
    class Suite(BackendConformance):
        archs = ("llama",)

        def make_backend(self, model, tokenizer):
            return broken(model, tokenizer)

    with pytest.raises(AssertionError):
        getattr(Suite(), check)()


def test_a_correct_backend_passes_those_checks():
    class Suite(BackendConformance):
        archs = ("llama",)

        def make_backend(self, model, tokenizer):
            return HFBackend(model, tokenizer)

    for check in ("test_injection_happens_in_the_prefill_only", "test_logits_equal_hf_at_every_site_and_mode",
                  "test_capture_and_capture_all_equal_hf", "test_facts_equal_hf", "test_a_site_past_the_last_layer_is_refused",
                  "test_the_shared_prefix_is_run_once_and_the_rest_per_call"):
        getattr(Suite(), check)()
