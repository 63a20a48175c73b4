"""lm-eval 0.4.13 tasks/hellaswag/utils.py (MIT licence), for files with only {ctx, label, endings}.

The upstream doc has activity_label, ctx_a and ctx_b and builds the query as
`preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`; here `ctx` already holds
`activity_label: ctx_a ctx_b`, so ctx_b keeps its lower-case first letter.
"""

import re


def preprocess(text):
    text = text.strip()
    # NOTE: Brackets are artifacts of the WikiHow dataset portion of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def process_docs(dataset):
    def _process_doc(doc):
        return {
            "query": preprocess(doc["ctx"]),
            "choices": [preprocess(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(_process_doc)
