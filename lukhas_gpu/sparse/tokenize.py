"""The BM25 tokenizer: what a text's terms are.

1. the text is lowercased (``str.lower``, Unicode-aware);
2. its terms are the runs of Unicode word characters (letters, digits, underscore) of two or
   more characters: the regular expression ``(?u)\\b\\w\\w+\\b``, the default of scikit-learn's
   vectorizers and of bm25s -- except that each CJK character (Han ideographs, hiragana,
   katakana, hangul: :data:`CJK_CHARS`) is a term of its own, one character long, as Lucene's
   StandardTokenizer does: these scripts write words without spaces, so a run of them is a
   phrase, not a word (``"東京都に住んでいます"`` holds the terms ``"東"`` and ``"京"``, and the query
   ``"東京"`` finds it). A run mixing CJK and other word characters (``"東京tower"``) is split
   there (``"東"``, ``"京"``, ``"tower"``); a text without CJK characters gets the terms it always had;
3. optionally, English stopwords are removed (``stopwords="en"``, the list below: NLTK's);
4. optionally, each term is stemmed (``stemmer="english"`` or any language of the Snowball
   stemmers, through PyStemmer: ``pip install PyStemmer``).

The same tokenizer runs on contents at add time and on query texts at search time.

Stores written before CJK characters were split: a checkpoint keeps its term counts (the
``text`` files of a generation are loaded, not re-derived), so memories checkpointed then keep
their CJK runs as whole terms, which a query -- now split per character -- no longer matches;
memories added or updated since (and those replayed from the write-ahead log, re-tokenized from
their contents) have the new terms. Latin-script texts are unaffected. To make old CJK contents
searchable, update them with their own content (``update(ids, contents=...)``), which
re-tokenizes them.
"""
from __future__ import annotations

import re

__all__ = ["Tokenizer", "STOPWORDS_EN", "TOKEN_PATTERN", "CJK_CHARS"]

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_TOKEN = re.compile(TOKEN_PATTERN)
#: The characters that are terms of their own (a regular expression class): Hangul Jamo,
#: CJK radicals and symbols, hiragana, katakana, Hangul compatibility Jamo, CJK extension A,
#: the unified ideographs, Hangul syllables, compatibility ideographs, halfwidth katakana and
#: hangul, and the supplementary ideograph planes (extensions B to I). Only word characters
#: (``\w``) among them count: ``"。"`` and ``"・"`` separate terms as before.
CJK_CHARS = ("[\u1100-\u11ff\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3031-\u3035\u3038-\u303c"
             "\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f"
             "\uac00-\ud7ff\uf900-\ufaff\uff66-\uffdc\U00020000-\U0003ffff]")
_CJK = re.compile(CJK_CHARS)
#: A CJK word character alone, or a run of two or more other word characters.
_MIXED = re.compile(rf"(?u)(?=\w){CJK_CHARS}|(?:(?!{CJK_CHARS})\w){{2,}}")

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
        text = text.lower()
        terms = _MIXED.findall(text) if _CJK.search(text) else _TOKEN.findall(text)
        if self.stopwords:
            terms = [t for t in terms if t not in self.stopwords]
        if self._stem is not None:
            terms = self._stem(terms)
        return terms
