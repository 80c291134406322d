"""The BM25 tokenizer: what a text's terms are.

1. the text is lowercased (``str.lower``, Unicode-aware);
2. its terms are the runs of Unicode word characters (letters, digits, underscore) of two or
   more characters: the regular expression ``(?u)\\b\\w\\w+\\b``, the default of scikit-learn's
   vectorizers and of bm25s;
3. optionally, English stopwords are removed (``stopwords="en"``, the list below: NLTK's);
4. optionally, each term is stemmed (``stemmer="english"`` or any language of the Snowball
   stemmers, through PyStemmer: ``pip install PyStemmer``).

The same tokenizer runs on contents at add time and on query texts at search time.
"""
from __future__ import annotations

import re

__all__ = ["Tokenizer", "STOPWORDS_EN", "TOKEN_PATTERN"]

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_TOKEN = re.compile(TOKEN_PATTERN)

#: NLTK's English stopwords.
STOPWORDS_EN = frozenset("""
a about above after again against ain all am an and any are aren aren't as at be because been before being
below between both but by can couldn couldn't d did didn didn't do does doesn doesn't doing don don't down
during each few for from further had hadn hadn't has hasn hasn't have haven haven't having he her here hers
herself him himself his how i if in into is isn isn't it it's its itself just ll m ma me mightn mightn't more
most mustn mustn't my myself needn needn't no nor not now o of off on once only or other our ours ourselves
out over own re s same shan shan't she she's should should've shouldn shouldn't so some such t than that
that'll the their theirs them themselves then there these they this those through to too under until up ve
very was wasn wasn't we were weren weren't what when where which while who whom why will with won won't
wouldn wouldn't y you you'd you'll you're you've your yours yourself yourselves
""".split())


class Tokenizer:
    """Text to terms (see the module docstring).

    Parameters
    ----------
    stopwords : {"en", None}
    stemmer : str or None
        A Snowball language name (PyStemmer), or None.
    """

    def __init__(self, stopwords: str | None = None, stemmer: str | None = None):
        if stopwords not in (None, "en"):
            raise ValueError(f"stopwords must be 'en' or None, got {stopwords!r}")
        self.stopwords = STOPWORDS_EN if stopwords == "en" else frozenset()
        self._stem = None
        if stemmer is not None:
            try:
                import Stemmer  # PyStemmer
            except ImportError as e:
                raise ImportError("stemming needs PyStemmer: pip install PyStemmer") from e
            try:
                self._stem = Stemmer.Stemmer(stemmer).stemWords
            except KeyError:
                raise ValueError(f"unknown stemmer language {stemmer!r}; "
                                 f"available: {', '.join(Stemmer.algorithms())}") from None

    def __call__(self, text: str) -> list[str]:
        terms = _TOKEN.findall(text.lower())
        if self.stopwords:
            terms = [t for t in terms if t not in self.stopwords]
        if self._stem is not None:
            terms = self._stem(terms)
        return terms
