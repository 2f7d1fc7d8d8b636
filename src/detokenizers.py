"""The invertible detokenizers of the GPT-2 paper (section 3.1): they undo a benchmark's own
tokenization ("do n't", "1 @,@ 000", "( born 1972 )") so that GPT-2 reads text as it saw it on
the web, and each can be undone, so that the text scored is the benchmark's, reformatted.

Written from the paper's description and the rules lm-evaluation-harness and Megatron-LM use
(`wikitext_detokenizer`, `ptb_detokenizer`, `lm1b_detokenizer`), as pairs of rules: each rule
has its inverse beside it, and `retokenize` applies the inverses in reverse order.

    >>> detokenize("wikitext", " = = Plot = = \\n The 1 @,@ 000 @-@ year reign ( and more ) . \\n")
    '== Plot ==\\nThe 1,000-year reign (and more).\\n'
    >>> retokenize("wikitext", '== Plot ==\\nThe 1,000-year reign (and more).\\n')
    ' = = Plot = = \\n The 1 @,@ 000 @-@ year reign ( and more ) . \\n'

Invertible means on text in the benchmark's own style, where what a rule writes occurs only
where a rule wrote it: in WikiText every hyphen inside a word is ` @-@ ` and every comma stands
apart, in PTB every number is `N`. An abbreviation that keeps its period (WikiText's "U.S.
Army") or a "?" in PTB would come back otherwise; tests/test_detokenizers.py holds each rule set
to text in its benchmark's style.
"""
import re

CONTRACTIONS = r"n't|'s|'re|'ve|'m|'ll|'d"


def pair(pattern, replacement, inverse_pattern, inverse_replacement, flags=0):
    """One rule: (forward, inverse), each a function of the text."""
    forward, inverse = re.compile(pattern, flags), re.compile(inverse_pattern, flags)
    return (lambda text: forward.sub(replacement, text)), (lambda text: inverse.sub(inverse_replacement, text))


def line_edges():
    """Lines written " like this \\n" -> "like this\\n" (an empty line " " -> ""), and back. The
    text after the last newline is left as it is."""
    def forward(text):
        *lines, rest = text.split("\n")
        return "\n".join([line[1:-1] if len(line) >= 2 and line[0] == line[-1] == " " else
                          "" if line == " " else line for line in lines] + [rest])

    def inverse(text):
        *lines, rest = text.split("\n")
        return "\n".join([f" {line} " if line else " " for line in lines] + [rest])
    return forward, inverse


WIKITEXT = [
    line_edges(),
    pair(r" @-@ ", "-", r"(?<=\w)-(?=\w)", " @-@ "),                      # 1000 @-@ year
    pair(r"(?<=\d) @([,.])@ (?=\d)", r"\1", r"(?<=\d)([,.])(?=\d)", r" @\1@ "),  # 1 @,@ 000, 3 @.@ 5
    pair(r" ([,;:.!?])(?= |$)", r"\1", r"(?<=\S)([,;:.!?])(?= |$)", r" \1", re.M),  # reign .
    pair(rf" ({CONTRACTIONS})\b", r"\1", rf"(?<=\w)({CONTRACTIONS})\b", r" \1"),  # Boulter 's
    pair(r"\( ([^()\n]*?) \)", r"(\1)", r"\(([^()\n]*?)\)", r"( \1 )"),  # ( born 1972 )
    pair(r'" ([^"\n]*?) "', r'"\1"', r'"([^"\n]*?)"', r'" \1 "'),        # " Sweet Child "
    pair(r"= (?==)", "=", r"=(?==)", "= "),                                # = = Plot = =
]

PTB = [
    line_edges(),
    pair(rf" ({CONTRACTIONS})\b", r"\1", rf"(?<=\w)({CONTRACTIONS})\b", r" \1"),  # was n't
    pair(r"\bN\b", "1", r"\b1\b", "N"),                                   # every number is N
    pair(r"\$ (?=1\b)", "$", r"\$(?=1\b)", "$ "),                          # $ N
]

ONE_BILLION_WORDS = [
    pair(r" ([,;:.!?])(?= |$)", r"\1", r"(?<=\S)([,;:.!?])(?= |$)", r" \1", re.M),
    pair(rf" ({CONTRACTIONS})\b", r"\1", rf"(?<=\w)({CONTRACTIONS})\b", r" \1"),
    pair(r'" ([^"\n]*?) "', r'"\1"', r'"([^"\n]*?)"', r'" \1 "'),
    pair(r"\( ([^()\n]*?) \)", r"(\1)", r"\(([^()\n]*?)\)", r"( \1 )"),
    pair(r"\$ (?=\d)", "$", r"\$(?=\d)", "$ "),
]

CBT = [  # the Children's Book Test: PTB-style quotes `` and ''
    pair(r"(^|(?<= ))`` ", '"', r'(^|(?<= ))"(?=\S)', "`` ", re.M),       # `` Hello
    pair(r" ''", '"', r'(?<=\S)"', " ''"),                                 # , '' said
    pair(r' ([,;:.!?])(?=[ "]|$)', r"\1", r'(?<=\S)([,;:.!?])(?=[ "]|$)', r" \1", re.M),
    pair(rf" ({CONTRACTIONS})\b", r"\1", rf"(?<=\w)({CONTRACTIONS})\b", r" \1"),
]

RULES = {"wikitext": WIKITEXT, "ptb": PTB, "1bw": ONE_BILLION_WORDS, "cbt": CBT, "none": []}


def rules_of(name):
    """The rule list of a detokenizer, or a ValueError naming the known ones."""
    if name not in RULES:
        raise ValueError(f"unknown detokenizer {name!r}: the detokenizers are {', '.join(RULES)}")
    return RULES[name]


def detokenize(name, text):
    """`text` in a benchmark's tokenization -> the text GPT-2 reads."""
    for forward, _ in rules_of(name):
        text = forward(text)
    return text


def retokenize(name, text):
    """The inverse of `detokenize` on text in the benchmark's style (see the module's docstring)."""
    for _, inverse in reversed(rules_of(name)):
        text = inverse(text)
    return text
