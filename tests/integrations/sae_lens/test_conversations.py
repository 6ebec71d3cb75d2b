"""The writer side of generation scoring: batched writing across labels equals one at a time, a
stopped run's samples are on disk and a rerun writes only the missing ones, and samples that echo
the writer's instruction are flagged and scored as the reference scores them."""

from __future__ import annotations

import json

import pytest

from selfinterp_sae_lens.conversations import ConversationWriter, echoes_instruction, writer_prompt
from selfinterp_sae_lens.generation_scoring import generation_score

from sae_fixtures import planted_sae

# labels whose prompts tokenise to different lengths, so a mixed batch is left-padded
LABELS = ["cats", "a river in the mountains at night", "dogs and cats"]


def test_batched_writing_across_labels_equals_one_at_a_time_greedy(tiny_backend):
    """Six conversations of three labels in one left-padded `generate` call write what six calls of
    one prompt write (greedy, so nothing depends on the draw)."""
    batched = ConversationWriter(tiny_backend, temperature=0, max_new_tokens=5, batch_size=6)
    alone = ConversationWriter(tiny_backend, temperature=0, max_new_tokens=5, batch_size=1)
    lengths = {len(batched.prompt_ids(label)) for label in LABELS}
    assert len(lengths) == 3  # the batch really mixes prompt lengths
    assert batched(LABELS, 2) == alone(LABELS, 2)
    sae = planted_sae(tiny_backend)
    records = [{"id": str(i), "label": label} for i, label in enumerate(LABELS)]
    one = generation_score(records, sae, tiny_backend, batched, n_samples=2, batch_size=16, progress=False)
    two = generation_score(records, sae, tiny_backend, alone, n_samples=2, batch_size=1, progress=False)
    assert one == two


def test_written_in_parts_at_their_offsets_equals_written_whole(tiny_backend):
    """A resumed run writes its remaining batches at their offsets; sampled, they must draw what the
    uninterrupted run drew there."""
    writer = ConversationWriter(tiny_backend, max_new_tokens=4, batch_size=2)
    labels = ["cats", "cats", "rivers", "rivers", "taxes", "taxes"]
    whole = writer.write(labels)
    assert writer.write(labels[2:4], offset=2) + writer.write(labels[4:], offset=4) == whole[2:]


class Stop(Exception):
    pass


def test_each_sample_lands_on_disk_and_a_stopped_run_resumes(tiny_backend, tmp_path, monkeypatch):
    """`sae score --scorer generation` wrote nothing until a whole chunk of labels was scored, and
    then one row per label; each sample's record is now written as its batch lands."""
    sae = planted_sae(tiny_backend)
    records = [{"id": str(i), "label": label} for i, label in enumerate(LABELS)]
    out = tmp_path / "gen.jsonl"
    writer = ConversationWriter(tiny_backend, max_new_tokens=4, batch_size=2)
    whole = generation_score(records, sae, tiny_backend, writer, n_samples=2, progress=False)

    calls, stop_at = [], [2]
    original = ConversationWriter.write

    def stopping_write(self, labels, offset=0, progress=False):
        calls.append((list(labels), offset))
        if len(calls) in stop_at:
            raise Stop  # killed while writing the second batch
        return original(self, labels, offset, progress)

    monkeypatch.setattr(ConversationWriter, "write", stopping_write)
    with pytest.raises(Stop):
        generation_score(records, sae, tiny_backend, writer, n_samples=2, output=out, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in rows] == [("0", 0), ("0", 1)]  # the first batch: label 0's two samples
    first = rows[0]
    assert first["label"] == "cats" and first["feature"] == 0 and first["scale"] == 1.0
    assert first["prompt"] == ("Produce a VERY SHORT conversation which exhibits 'cats'\n"
                               "Do not include any other text in your response. Start immediately with the conversation.")
    assert isinstance(first["text"], str) and isinstance(first["conversation"], list)
    assert first["hit"] == (first["activation"] > 0) and first["echo"] is False

    calls.clear()
    stop_at.clear()
    resumed = generation_score(records, sae, tiny_backend, writer, n_samples=2, output=out, progress=False)
    assert [offset for _, offset in calls] == [2, 4]  # only the unfinished batches, at their seeds
    keys = [(r["id"], r["sample"]) for r in map(json.loads, out.read_text().splitlines())]
    assert keys == [(str(i), k) for i in range(3) for k in range(2)]  # each sample once
    assert resumed == whole


ECHO = "Produce a VERY SHORT conversation which exhibits 'the cat'\n[USER] Hi. [ASSISTANT] Hello."


def test_echoes_of_the_instruction():
    assert echoes_instruction(ECHO)
    assert echoes_instruction("[USER] do not include ANY other   text in your\nresponse.")
    assert echoes_instruction("You generates extremely short example conversations")
    assert not echoes_instruction("[USER] Is the cat short? [ASSISTANT] A very short cat, yes.")
    assert writer_prompt("x").startswith("Produce a VERY SHORT conversation which exhibits 'x'")


def test_an_echoed_sample_counts_as_the_reference_counts_it_or_is_dropped(tiny_backend):
    """A writer that repeats "Produce a VERY SHORT conversation which exhibits 'the cat'" carries the
    label into the text, and the cat latent fires on the instruction, not on a conversation. The
    reference scores every parsed sample (reward_system.py), so by default it counts (flagged);
    drop_echoes leaves it out of the label's hit rate."""
    sae = planted_sae(tiny_backend)

    def writer(labels, n_samples):
        return [[ECHO, "[USER] Hi. [ASSISTANT] Hello.", "[USER] A cat! [ASSISTANT] Yes."] for _ in labels]

    records = [{"id": "0", "label": "the cat"}]
    kept = generation_score(records, sae, tiny_backend, writer, n_samples=3, progress=False)
    assert kept["per_label"][0]["hit_rate"] == pytest.approx(2 / 3)  # the echo and the real cat
    assert kept["echoed_samples"] == 1
    dropped = generation_score(records, sae, tiny_backend, writer, n_samples=3, progress=False, drop_echoes=True)
    assert dropped["per_label"][0]["hit_rate"] == pytest.approx(1 / 2)  # 1 hit of the 2 samples left
    assert dropped["mean_max_hit_rate"] == pytest.approx(1 / 2)


def test_a_sample_with_nothing_written_is_a_miss(tiny_backend):
    """An empty text parses to no message, and the chat template raised `ValueError: Cannot apply
    chat template to an empty conversation` (the reference raises too and loses its batch); it is a
    miss now."""
    sae = planted_sae(tiny_backend)
    result = generation_score([{"id": "0", "label": "the cat"}], sae, tiny_backend,
                              lambda labels, n: [["", "[USER] A cat!"] for _ in labels], n_samples=2, progress=False)
    assert result["per_label"][0]["hit_rate"] == 0.5
