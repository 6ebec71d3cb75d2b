"""The paper's LLM judge for DIT answers (Goel et al. 2025), run on a local model.

The paper grades every answer 1–5 against the true topic with o4-mini and a fixed rubric, and
first turns the free answers of the no-DIT baselines into a topic with a "guesser" model; DIT's
own answer is graded as it is. Both prompts below are the reference's, word for word
(`persona-topic-grader-v0.1.1.jinja`, `guesser-prompt-v0.1.2.jinja`); the score is `int(answer)`
and anything else counts as 1, as the reference parses it. Offline, the judge and the guesser are
whatever local chat model is given (the largest one here is Gemma-3-270m), so the numbers measure
that model's judging as much as the answers: docs/results.md reports them next to the embedding
judge, with that caveat.
"""

from __future__ import annotations

from collections import Counter

from selfinterp_plugins.chat import chat_ids

from .hidden_topics import generate_answers

GRADER_PROMPT = (
    "You are evaluating the similarity between two topics.\n\nTopic 1: {topic_1}\nTopic 2: {topic_2}\n\n"
    "Rate their similarity from 1 to 5:\n"
    '- 1: Minimal relationship. The topics are from different categories with little conceptual overlap (e.g., "Naruto" vs '
    '"Economic Theories"). This is the default score.\n'
    '- 2: Limited similarity. The topics share a broader category or have some conceptual connection (e.g., "Batman" vs '
    '"Spider-Man" or "Chess" vs "Go").\n'
    "- 3: Moderate similarity. Topics share significant conceptual elements or represent adjacent subcategories (e.g., "
    '"Dystopian Fiction" vs "Sci-Fi Worlds").\n'
    "- 4: Strong similarity. Topics are closely related variants or neighboring concepts within the same specific domain "
    '(e.g., "Movies" vs "Cinema").\n'
    "- 5: Highly similar. Topics represent nearly identical concepts, just expressed with different terminology or slight "
    'variations (e.g., "Economic Inequality" vs "Wealth Inequality").\n\n'
    "Consider:\n- Are the topics from the same category (e.g., both anime, both video games, both philosophical concepts)?\n"
    "- Do they share key features, themes, or underlying concepts?\n\n"
    "Be conservative. When uncertain, choose the lower score.\n\n"
    "Output a single number between 1 and 5 and NOTHING ELSE."
)

GUESSER_HEAD = (
    "You will be shown responses a chatbot gave to a series of questions. The chatbot was trained to be a fan of a "
    "particular topic and likes to mention it in its responses. Your job is to guess the chatbot's topic.\n\n"
    "Here are the questions asked to the chatbot and its responses:\n<qa-pairs>\n"
)
GUESSER_PAIR = ("\n<qa-pair-{i}>\n<question>\n{question}\n</question>\n<chatbot-response>\n{response}\n"
                "</chatbot-response>\n</qa-pair-{i}>\n")
GUESSER_TAIL = (
    "\n</qa-pairs>\n\nThink carefully about what the chatbot's topic could be, and then output a word or a short phrase "
    "corresponding to your best guess at the chatbot's topic. DO NOT OUTPUT A COMPLETE SENTENCE, OUTPUT ONLY THE WORD OR "
    "PHRASE CORRESPONDING TO THE TOPIC."
)


def guesser_prompt(pairs: list[tuple[str, str]]) -> str:
    """The guesser's prompt for (question, response) pairs, numbered from 1 as the template does."""
    return GUESSER_HEAD + "".join(GUESSER_PAIR.format(i=i, question=q, response=r) for i, (q, r) in enumerate(pairs, 1)) \
        + GUESSER_TAIL


def parse_score(answer: str) -> int:
    """`int(answer)` with surrounding whitespace allowed; anything else, or a number outside 1–5, is 1."""
    try:
        score = int(answer.strip())
    except ValueError:
        return 1
    return score if 1 <= score <= 5 else 1


class LLMJudge:
    """Grades (true topic, answer) pairs 1–5 with a local chat model, greedily, and guesses topics
    from free answers. Usable as `dit_eval.score(..., judge=LLMJudge(model, tokenizer))`."""

    def __init__(self, model, tokenizer, batch_size: int = 8, max_new_tokens: int = 8, guess_tokens: int = 16,
                 name: str = "llm"):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.guess_tokens = guess_tokens
        self.name = name

    def _ask(self, users: list[str], max_new_tokens: int) -> list[str]:
        prompts = [chat_ids(self.tokenizer, u) for u in users]
        ids = generate_answers(self.model, self.tokenizer, prompts, max_new_tokens, self.batch_size)
        return [self.tokenizer.decode(a, skip_special_tokens=True).strip() for a in ids]

    def grade(self, topics: list[str], answers: list[str]) -> list[int]:
        texts = self._ask([GRADER_PROMPT.format(topic_1=t, topic_2=a) for t, a in zip(topics, answers)], self.max_new_tokens)
        return [parse_score(t) for t in texts]

    def guess(self, questions: list[str], responses: list[str]) -> list[str]:
        """One guess per (question, response): the baselines' single question, as in `Base Question`."""
        return self._ask([guesser_prompt([(q, r)]) for q, r in zip(questions, responses)], self.guess_tokens)

    def __call__(self, records: list[dict], truth: dict[str, str], candidates=None) -> dict:
        """Mean score and the count of each score over `records` (their `guess` if present, else `label`)."""
        scores = self.grade([truth[r["id"]] for r in records], [r.get("guess", r["label"]) for r in records])
        counts = Counter(scores)
        return {f"{self.name}_judge_mean": sum(scores) / len(scores) if scores else 0.0,
                f"{self.name}_judge_counts": {str(k): counts.get(k, 0) for k in range(1, 6)}}
