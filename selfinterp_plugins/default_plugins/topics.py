"""Vector source `topics`: WordNet topic vectors (Pepper et al. 2026's topic experiment)."""

from ..hookspecs import hookimpl


def build_topic_dataset(backend, layer: int, topics=None, batch_size: int = 32, progress: bool = True):
    """Topic vectors of the shipped topic set at resid_post of `layer`."""
    from ..topics import load_topics, topic_vectors

    return topic_vectors(backend, topics or load_topics(), [layer], batch_size, progress)[layer]


@hookimpl
def register_vector_sources(register):
    register("topics", build_topic_dataset)


@hookimpl
def register_explainers(register):
    """The topic explainers shipped in the core's package data (`smollm2-topics`)."""
    from ..defaults import SHIPPED_EXPLAINER, _core_explainer_dir

    root = _core_explainer_dir(SHIPPED_EXPLAINER).parent
    for directory in sorted(root.iterdir()):
        if (directory / "explainer_config.json").is_file():
            register(directory.name, directory)
